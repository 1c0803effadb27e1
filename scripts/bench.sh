#!/usr/bin/env bash
# One command for the benchmarks: installs what they drive (OpenSSH's sshd for the
# comparison, iptables + NFQUEUE for packet-level TCP delay, dnsmasq for UDP
# forwarding) when missing, then runs bench/run.py with the given arguments
# (e.g. --quick). Root is needed for NFQUEUE; without it the TCP RTT rows say so.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v iptables >/dev/null || need+=(iptables)
[ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need+=(libnetfilter-queue-dev)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
python -c "import ssh3, qh3, dns" 2>/dev/null || pip install -q -e '.[test]'
python -c "import netfilterqueue" 2>/dev/null || pip install -q netfilterqueue || \
  echo "bench.sh: netfilterqueue did not install: TCP rows without packet delay" >&2
exec python bench/run.py "$@"
