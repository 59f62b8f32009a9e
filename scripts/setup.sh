#!/usr/bin/env bash
# Installs what building, testing and benchmarking need, once: Debian packages for the guest
# toolchain (wasi-libc, the wasm32 compiler runtime), Asyncify (binaryen), wabt, and the real
# clients the tests drive (redis-tools, wrk, curl), openssl (throwaway certificates for the
# replication channel), util-linux (setpriv, for the tests' parent-death signal), etcd-server and
# etcd-client (the tests start their own etcd on free ports; etcdctl to look at one by hand),
# iproute2 (hosts as network namespaces, scripts/hosts.sh; the partition tests need root), and
# redis-server, which `make bench` compares against. Idempotent: does nothing when all are present.
set -euo pipefail

packages=(wasi-libc libclang-rt-19-dev-wasm32 binaryen wabt libzstd-dev liblz4-dev redis-tools redis-server wrk curl openssl util-linux etcd-server etcd-client iproute2 iputils-arping)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.3 expected at /opt/swift)"; exit 1; }

# redis-py, a client the tests drive as users do (RESP3 by default since 8), into a directory of
# the project's own: PYTHONPATH=.build-python.
python_dir="$(cd "$(dirname "$0")/.." && pwd)/.build-python"
if ! PYTHONPATH="$python_dir" python3 -c 'import redis, sys; sys.exit(redis.__version__ != "8.1.0")' 2>/dev/null; then
    echo "setup: installing redis-py 8.1.0 into $python_dir"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$python_dir" redis==8.1.0
fi

# wasmtime's C API library (the compiling engine, `--engine wasmtime`), from PyPI's wheel into the
# same directory; the build bakes its path in (Package.swift), and opens it at run time.
if [ ! -f "$python_dir/wasmtime/linux-x86_64/_libwasmtime.so" ] || ! grep -qx "Version: 50.0.1" "$python_dir"/wasmtime-50.0.1.dist-info/METADATA 2>/dev/null; then
    echo "setup: installing wasmtime 50.0.1 into $python_dir"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$python_dir" --upgrade --no-deps wasmtime==50.0.1
fi
