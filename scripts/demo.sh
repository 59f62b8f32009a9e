#!/usr/bin/env bash
# make demo: the key-value guest served by understudy and recorded, driven by Debian's redis-cli
# and redis-benchmark; then the server is killed (SIGKILL), its recording replayed and verified
# in another process, and its last checkpoint restored and serving again. (Failover joins this
# demo with the protection modes.)
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
servers=()
stop_servers() {
    for pid in "${servers[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_servers EXIT

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
