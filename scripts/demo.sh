#!/usr/bin/env bash
# Demo: a server on 127.0.0.1 with a generated self-signed certificate, and the
# client run against it. Everything lives in a temporary directory that is
# removed on exit; the server is stopped by its PID.
set -euo pipefail
port=${SSH3_DEMO_PORT:-4433}
dir=$(mktemp -d /tmp/ssh3-demo.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

ssh-keygen -q -t ed25519 -N '' -C ssh3-demo -f "$dir/id_ed25519"
cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
ssh3-server -bind "127.0.0.1:$port" -url-path /secret -generate-selfsigned-cert \
  -cert "$dir/cert.pem" -key "$dir/key.pem" \
  -authorized-keys-file "$dir/authorized_keys" 2>"$dir/server.log" &
server_pid=$!
for _ in $(seq 50); do grep -q listening "$dir/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$dir/server.log" || { cat "$dir/server.log"; exit 1; }

client=(ssh3 -i "$dir/id_ed25519" -o "UserKnownHostsFile=$dir/known_hosts"
        -o StrictHostKeyChecking=accept-new "$(id -un)@127.0.0.1:$port/secret")
echo "server: ssh3-server -bind 127.0.0.1:$port -url-path /secret (pid $server_pid)"
echo "client: ${client[*]} 'echo hello from \$(hostname) over SSH3; uname -sr'"
"${client[@]}" 'echo hello from $(hostname) over SSH3; uname -sr'
if [ -t 0 ] && [ -z "${SSH3_DEMO_ONCE:-}" ]; then
  echo
  echo "The server keeps running. For a shell: ${client[*]}"
  echo "Press Ctrl-C to stop it."
  wait "$server_pid"
fi
