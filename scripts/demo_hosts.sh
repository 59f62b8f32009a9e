#!/usr/bin/env bash
# make demo, across hosts (network namespaces, scripts/hosts.sh): a protected kv serving through
# its service IP 10.77.0.100 from host a, its standby on b, etcd on its own host, clients in the
# clients namespace using only the service IP. Host a dies (cut, then SIGKILL: no FIN, no RST):
# b notices by heartbeat silence, wins the generation, takes the IP and serves. A standby started
# again on a makes the machine protected again, with no restart of the service. Then a planned
# migration back to a (`understudy migrate`). Every INCR a client saw acknowledged is still there;
# the figures are measured here. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "$1")
hosts=scripts/hosts.sh
ip=10.77.0.100
port=6379
work=$(mktemp -d /tmp/understudy-demo-hosts-XXXXXX)
scripts/certs.sh "$work/certs" >/dev/null
cleanup() {
    pkill -9 -f "understudy-demo-hosts" 2>/dev/null || true
    bash $hosts down
    rm -rf "$work"
}
trap cleanup EXIT
bash $hosts up
on() { bash $hosts exec "$@"; }
echo
echo "=== two hosts: a protected kv on its service IP $ip"
on etcd etcd --name demo --data-dir "$work/etcd" --listen-client-urls http://10.77.0.30:2379 --advertise-client-urls http://10.77.0.30:2379 \
    --listen-peer-urls http://10.77.0.30:2380 --initial-advertise-peer-urls http://10.77.0.30:2380 --initial-cluster demo=http://10.77.0.30:2380 \
    --logger zap --log-level error --log-outputs "$work/etcd.log" >/dev/null 2>&1 &
for _ in $(seq 1 100); do curl -s http://10.77.0.30:2379/health | grep -q true && break; sleep 0.1; done
common=(--name kv --etcd http://10.77.0.30:2379 --tls-cert "$work/certs/node.pem" --tls-key "$work/certs/node.key" --tls-ca "$work/certs/ca.pem"
    --service-ip "$ip/24" --service-interface eth0 --listen "$ip:$port")
standby() {  # HOST LOG: a standby on HOST, registering in etcd
    echo "== on $1: understudy backup --replication $(bash $hosts ip "$1"):7000 --name kv --etcd … --service-ip $ip/24 …"
    on "$1" "$bin" backup --replication "$(bash $hosts ip "$1"):7000" "${common[@]}" >"$work/$2.log" 2>&1 &
}
wait_for() {  # LOG TEXT [COUNT]
    for _ in $(seq 1 300); do [ "$(grep -c "$2" "$work/$1.log" || true)" -ge "${3:-1}" ] && return 0; sleep 0.05; done
    echo "never said '$2':" >&2; tail -20 "$work/$1.log" >&2; return 1
}
standby b b
wait_for b "registered as a standby"
echo "== on a: understudy primary guests/build/kv.wasm --mode llm --replication 10.77.0.11:7000 --name kv --etcd … --service-ip $ip/24 …"
on a "$bin" primary guests/build/kv.wasm --mode llm --replication 10.77.0.11:7000 "${common[@]}" >"$work/a.log" 2>&1 &
wait_for a "the machine is protected"
client() { on clients redis-cli -h "$ip" -p "$port" "$@"; }
client set greeting "hello from a" >/dev/null
echo "== in clients: redis-benchmark -h $ip -t set,incr -n 20000 -q"
on clients redis-benchmark -h "$ip" -p "$port" -t set,incr -n 20000 -q 2>&1 | tr '\r' '\n' | grep "requests per second"
echo "== in clients: while true; do redis-cli -h $ip INCR demo:counter; done &   (a client that reconnects)"
on clients bash -c "while true; do timeout 2 redis-cli -h $ip -p $port INCR demo:counter || sleep 0.01; done" >"$work/acknowledged" 2>&1 &
incr=$!
sleep 1
# Host death to the first good answer through the service IP, probed from the clients host.
downtime=$(python3 - "$ip" "$port" "$hosts" <<'PY'
import ctypes, os, socket, subprocess, sys, time
ip, port, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
subprocess.run(["bash", hosts, "kill", "a"], check=True)
# Probe from the clients host: this process moves into its network namespace.
fd = os.open("/var/run/netns/us-clients", os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
    sys.exit("cannot enter the clients namespace")
while True:
    try:
        with socket.create_connection((ip, port), timeout=0.05) as s:
            s.settimeout(0.5)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                break
    except OSError:
        pass
print(f"{(time.perf_counter() - started) * 1000:.0f}")
PY
)
echo "== host a killed (cut, then SIGKILL): b serves $ip ${downtime} ms later (heartbeat silence 100 ms, the etcd transaction, restore, replay, the IP)"
wait_for b "took the service IP"
sleep 0.5
echo "== get greeting → $(client get greeting); the INCR client saw up to $(grep -E '^[0-9]+$' "$work/acknowledged" | tail -1); get demo:counter → $(client get demo:counter)"
bash $hosts heal a
started=$(date +%s%N)
standby a a2
wait_for b "the machine is protected"
echo "== a rebooted; its standby registered and was seeded: protected again $(( ($(date +%s%N) - started) / 1000000 )) ms after it started (the service never restarted)"
echo "== understudy migrate kv --etcd http://10.77.0.30:2379   (planned: back to a)"
"$bin" migrate kv --etcd http://10.77.0.30:2379 2>&1 | sed 's/^/   /'
wait_for a2 "took the service IP"
sleep 0.5
pkill -f "INCR demo:counter" 2>/dev/null || true
wait "$incr" 2>/dev/null || true
echo "== a serves again; b is its standby: $(grep -c 'becoming the new primary' "$work/b.log") re-execution as a standby"
echo "== the INCR client saw up to $(grep -E '^[0-9]+$' "$work/acknowledged" | tail -1) acknowledged; get demo:counter → $(client get demo:counter) (never less)"
