#!/usr/bin/env bash
# make demo: a protected key-value guest failing over. A backup and a primary (llm mode, then the
# remus baseline) serve kv on one port, driven by Debian's redis-cli and redis-benchmark, fenced
# by the machine's generation on a real etcd started here; the primary is killed with SIGKILL
# under load, the backup wins the next generation and takes the port over, and every INCR a
# client saw acknowledged is still there; the downtime is measured. Then a primary only paused
# (SIGSTOP for a second): the backup wins the generation, the resumed primary stands down, and
# nothing acknowledged is lost. Then the unprotected machine: recorded, killed, its recording
# replayed and verified, its last checkpoint restored.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_listening() {
    for _ in $(seq 1 600); do
        (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}
port=${PORT:-6379}
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then port=$(free_port); fi
recording=$(mktemp -d /tmp/understudy-demo-XXXXXX)
rmdir "$recording"
# The replication channel is mutual TLS: a throwaway authority and certificate, made here.
certificates=$(mktemp -d /tmp/understudy-demo-certs-XXXXXX)
scripts/certs.sh "$certificates"
tls=(--tls-cert "$certificates/node.pem" --tls-key "$certificates/node.key" --tls-ca "$certificates/ca.pem")
servers=()
# The machines' generations live in an etcd of the demo's own, on loopback.
etcd_data=$(mktemp -d /tmp/understudy-demo-etcd-XXXXXX)
etcd_port=$(free_port)
etcd_peer=$(free_port)
stop_servers() {
    for pid in "${servers[@]}"; do
        kill -CONT "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$certificates" "$etcd_data"
}
trap stop_servers EXIT
echo "== etcd on 127.0.0.1:$etcd_port (the machines' generations)"
etcd --data-dir "$etcd_data/data" --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer" --logger zap --log-level error --log-outputs "$etcd_data/etcd.log" &
servers+=($!)
wait_listening "$etcd_port"
etcd=(--etcd "http://127.0.0.1:$etcd_port")

# SIGKILL a process and time until the service on a port answers PING again.
kill_and_time() {
    python3 - "$1" "$2" <<'PY'
import os, signal, socket, sys, time
pid, port = int(sys.argv[1]), int(sys.argv[2])
started = time.perf_counter()
os.kill(pid, signal.SIGKILL)
while True:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                break
    except OSError:
        time.sleep(0.0005)
print(f"{(time.perf_counter() - started) * 1000:.1f}")
PY
}

# Starts a backup and a primary of machine $1 in mode $2 (more primary flags after); sets
# $backup and $primary to their pids.
start_pair() {
    local name=$1 mode=$2; shift 2
    local replication
    replication=$(free_port)
    echo "== understudy backup --replication 127.0.0.1:$replication --listen 127.0.0.1:$port --name $name --etcd … \$tls"
    "$bin" backup --replication "127.0.0.1:$replication" --listen "127.0.0.1:$port" --name "$name" "${etcd[@]}" "${tls[@]}" &
    backup=$!
    servers+=($backup)
    sleep 0.3
    echo "== understudy primary guests/build/kv.wasm --listen 127.0.0.1:$port --backup 127.0.0.1:$replication --mode $mode --name $name --etcd … \$tls $*"
    "$bin" primary guests/build/kv.wasm --listen "127.0.0.1:$port" --backup "127.0.0.1:$replication" --mode "$mode" --name "$name" \
        "${etcd[@]}" "${tls[@]}" "$@" &
    primary=$!
    servers+=($primary)
    wait_listening "$port"
    sleep 1  # the backup is seeded, and recorded as protecting
}

failover() {
    local mode=$1; shift
    echo
    echo "=== failover, mode $mode"
    start_pair "demo-$mode" "$mode" "$@"
    redis-cli -p "$port" set greeting "hello from $mode" >/dev/null
    echo "== redis-benchmark -p $port -t set,incr -n 20000 -q"
    redis-benchmark -p "$port" -t set,incr -n 20000 -q 2>&1 | tr '\r' '\n' | grep "requests per second"
    echo "== redis-benchmark -p $port -t set,incr -n 100000000 -q &   and   redis-cli -r 1000000 -i 0 INCR demo:counter &"
    redis-benchmark -p "$port" -t set,incr -n 100000000 -q >/dev/null 2>&1 &
    local load=$!
    local acknowledged
    acknowledged=$(mktemp)
    redis-cli -p "$port" -r 1000000 -i 0 INCR demo:counter >"$acknowledged" 2>&1 &
    local incr=$!
    sleep 1
    echo "== kill -9 $primary (the primary)"
    local downtime
    downtime=$(kill_and_time "$primary" "$port")
    kill "$load" "$incr" 2>/dev/null || true
    wait "$primary" "$load" "$incr" 2>/dev/null || true
    local last
    last=$(grep -E '^[0-9]+$' "$acknowledged" | tail -1)
    rm -f "$acknowledged"
    echo "== the backup serves 127.0.0.1:$port ${downtime} ms after the SIGKILL (detection, restore$( [ "$mode" = llm ] && echo ', log replay'), listen)"
    echo "== redis-cli get greeting → $(redis-cli -p "$port" get greeting)"
    echo "== last INCR a client saw acknowledged: $last; redis-cli get demo:counter → $(redis-cli -p "$port" get demo:counter) (never less)"
    kill "$backup" 2>/dev/null || true
    wait "$backup" 2>/dev/null || true
}

# A pause is not a death: SIGSTOP the primary past the heartbeat timeout, then SIGCONT. The
# backup claims and wins the next generation; the resumed primary finds it lost and stands down
# (exit status 75) instead of serving beside it.
pause() {
    echo
    echo "=== a primary paused for a second, mode llm"
    start_pair demo-pause llm
    local acknowledged
    acknowledged=$(mktemp)
    redis-cli -p "$port" -r 1000000 -i 0 INCR demo:counter >"$acknowledged" 2>&1 &
    local incr=$!
    sleep 1
    echo "== kill -STOP $primary; sleep 1; kill -CONT $primary"
    kill -STOP "$primary"
    sleep 1
    kill -CONT "$primary"
    local status=0
    wait "$primary" || status=$?
    echo "== the resumed primary exited with status $status (75: it lost the generation and stood down)"
    wait_listening "$port"
    sleep 0.5
    kill "$incr" 2>/dev/null || true
    wait "$incr" 2>/dev/null || true
    local last
    last=$(grep -E '^[0-9]+$' "$acknowledged" | tail -1)
    rm -f "$acknowledged"
    echo "== last INCR a client saw acknowledged: $last; redis-cli get demo:counter → $(redis-cli -p "$port" get demo:counter) (never less)"
    echo "== etcdctl get /understudy/machines/demo-pause → $(ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$etcd_port" get /understudy/machines/demo-pause --print-value-only)"
    kill "$backup" 2>/dev/null || true
    wait "$backup" 2>/dev/null || true
}

failover llm
failover remus --epoch 25ms
pause
echo
echo "=== unprotected: record, kill, replay, restore"

echo "== understudy run guests/build/kv.wasm --listen 127.0.0.1:$port --record $recording --checkpoint-every 200ms"
"$bin" run guests/build/kv.wasm --listen "127.0.0.1:$port" --record "$recording" --checkpoint-every 200ms &
server=$!
servers+=($server)
wait_listening "$port"

echo "== redis-cli -p $port set greeting hello && redis-cli -p $port get greeting"
redis-cli -p "$port" set greeting hello
redis-cli -p "$port" get greeting
echo "== redis-benchmark -p $port -t ping,set,get,incr,lpush,lpop,mset -n 20000 -q"
redis-benchmark -p "$port" -t ping,set,get,incr,lpush,lpop,mset -n 20000 -q 2>&1 | tr '\r' '\n' | grep "requests per second"
echo "== every INCR landed: redis-cli get counter:__rand_int__ → $(redis-cli -p "$port" get counter:__rand_int__) (expected 20000)"

sleep 0.5  # a checkpoint after the last request
echo "== kill -9 $server (the recording has $(ls "$recording" | grep -c ckpt) checkpoints)"
kill -9 "$server"
wait "$server" 2>/dev/null || true

echo "== understudy replay $recording --verify"
"$bin" replay "$recording" --verify

restored_port=$(free_port)
echo "== understudy restore guests/build/kv.wasm --from $recording --listen 127.0.0.1:$restored_port"
"$bin" restore guests/build/kv.wasm --from "$recording" --listen "127.0.0.1:$restored_port" &
servers+=($!)
wait_listening "$restored_port"
echo "== redis-cli -p $restored_port get greeting → $(redis-cli -p "$restored_port" get greeting); get counter:__rand_int__ → $(redis-cli -p "$restored_port" get counter:__rand_int__)"
rm -rf "$recording"
stop_servers
trap - EXIT
if [ "$(id -u)" = 0 ]; then
    scripts/demo_hosts.sh "$bin"
else
    echo "(the two-hosts part needs root, for network namespaces: skipped)"
fi
