#!/usr/bin/env bash
# What the test suite needs besides Python packages: OpenSSH's tools (ssh-keygen,
# ssh-agent, sftp, scp, sshd, sftp-server), dnsmasq, rsync, git, curl, and (as root)
# a second local account for the privilege-drop tests. Installs only what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v useradd >/dev/null || need+=(passwd)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq)
command -v ssh-agent >/dev/null || need+=(openssh-client)
command -v curl >/dev/null || need+=(curl)
# OpenSSH's tools driving ssh3 (tests/test_e2e_openssh_tools.py, test_e2e_subsystem.py)
command -v sftp >/dev/null || need+=(openssh-client)
[ -x /usr/lib/openssh/sftp-server ] || need+=(openssh-sftp-server)
command -v rsync >/dev/null || need+=(rsync)
command -v git >/dev/null || need+=(git)
# a real sshd behind `ssh -o ProxyCommand='ssh3 -W %h:%p ...'` (test_e2e_stdio_forward.py)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# a second local account, for the privilege-drop and interop tests (root only)
if [ "$(id -u)" = 0 ] && ! id ssh3test >/dev/null 2>&1; then
  useradd -m -s /bin/bash ssh3test
fi

