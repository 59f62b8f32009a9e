#!/usr/bin/env bash
# make demo: the key-value guest served by understudy, driven by Debian's redis-cli and
# redis-benchmark. (Failover joins this demo with the protection modes.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
port=${PORT:-6379}
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi

echo "== understudy run guests/build/kv.wasm --listen 127.0.0.1:$port"
"$bin" run guests/build/kv.wasm --listen "127.0.0.1:$port" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
done

echo "== redis-cli -p $port set greeting hello && redis-cli -p $port get greeting"
redis-cli -p "$port" set greeting hello
redis-cli -p "$port" get greeting
echo "== redis-benchmark -p $port -t ping,set,get,incr,lpush,lpop,mset -n 20000 -q"
redis-benchmark -p "$port" -t ping,set,get,incr,lpush,lpop,mset -n 20000 -q 2>&1 | tr '\r' '\n' | grep "requests per second"
echo "== every INCR landed: redis-cli get counter:__rand_int__ → $(redis-cli -p "$port" get counter:__rand_int__) (expected 20000)"
