#!/usr/bin/env bash
# Hosts as network namespaces (DESIGN.md, "Hosts"): us-a, us-b, us-c, us-clients and us-etcd, each
# with one veth into the bridge us-br0 and an address of its own on 10.77.0.0/24:
#   a 10.77.0.11   b 10.77.0.12   c 10.77.0.13   clients 10.77.0.20   etcd 10.77.0.30
# and the bridge itself 10.77.0.1, so the machine running the tests reaches every host.
#
#   scripts/hosts.sh up                 make them, every host healed (idempotent)
#   scripts/hosts.sh down               remove them, killing what runs in them
#   scripts/hosts.sh cut HOST           drop all of HOST's traffic (tc blackhole both ways: no netem here)
#   scripts/hosts.sh heal HOST          undo cut
#   scripts/hosts.sh cut-link A B       drop only what A and B send each other, silently: each
#                                       resolves the other's address to a MAC nobody has (this
#                                       kernel's tc has no classifiers to drop by address)
#   scripts/hosts.sh heal-link A B      undo cut-link
#   scripts/hosts.sh kill HOST          host death: cut first, then SIGKILL every process in it,
#                                       so no FIN or RST ever reaches the others; the addresses
#                                       added at run time (a service IP) go, as with a reboot
#   scripts/hosts.sh exec HOST CMD…     run CMD in HOST's namespace
#   scripts/hosts.sh ip HOST            print HOST's address
set -euo pipefail

bridge=us-br0
declare -A address=([a]=10.77.0.11 [b]=10.77.0.12 [c]=10.77.0.13 [clients]=10.77.0.20 [etcd]=10.77.0.30)
hosts=(a b c clients etcd)

die() { echo "hosts.sh: $*" >&2; exit 2; }
namespace() { [ -n "${address[$1]:-}" ] || die "no host '$1' (hosts: ${hosts[*]})"; echo "us-$1"; }
inside() { ip netns exec "$(namespace "$1")" "${@:2}"; }

up() {
    ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
    ip addr show dev "$bridge" | grep -q "10.77.0.1/24" || ip addr add 10.77.0.1/24 dev "$bridge"
    ip link set "$bridge" up
    for host in "${hosts[@]}"; do
        local ns="us-$host" outside="us-$host-br"
        ip netns list | grep -qw "$ns" || ip netns add "$ns"
        if ! ip link show "$outside" >/dev/null 2>&1; then
            ip link add "$outside" type veth peer name eth0 netns "$ns"
            ip link set "$outside" master "$bridge" up
            ip netns exec "$ns" ip addr add "${address[$host]}/24" dev eth0
        fi
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip link set eth0 up
        # Whole again, whatever a run that died mid-test left cut or added.
        heal "$host"
        ip netns exec "$ns" ip addr flush dev eth0 secondary
        ip netns exec "$ns" ip neigh flush nud permanent dev eth0 2>/dev/null || true
    done
}

down() {
    for host in "${hosts[@]}"; do
        local ns="us-$host"
        if ip netns list | grep -qw "$ns"; then
            ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
            ip netns delete "$ns"
        fi
        ip link delete "us-$host-br" 2>/dev/null || true
    done
    ip link delete "$bridge" 2>/dev/null || true
}

# Both directions: the host's own egress, and the bridge port's egress towards the host.
cut() {
    inside "$1" tc qdisc replace dev eth0 root blackhole
    tc qdisc replace dev "us-$1-br" root blackhole
}

heal() {
    inside "$1" tc qdisc del dev eth0 root 2>/dev/null || true
    tc qdisc del dev "us-$1-br" root 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    cut) cut "$(namespace "${2:?host}" >/dev/null; echo "$2")" ;;
    heal) heal "$(namespace "${2:?host}" >/dev/null; echo "$2")" ;;
    cut-link)
        namespace "${2:?host A}" >/dev/null; namespace "${3:?host B}" >/dev/null
        inside "$2" ip neigh replace "${address[$3]}" lladdr 02:00:00:00:00:01 dev eth0 nud permanent
        inside "$3" ip neigh replace "${address[$2]}" lladdr 02:00:00:00:00:01 dev eth0 nud permanent ;;
    heal-link)
        namespace "${2:?host A}" >/dev/null; namespace "${3:?host B}" >/dev/null
        inside "$2" ip neigh del "${address[$3]}" dev eth0 2>/dev/null || true
        inside "$3" ip neigh del "${address[$2]}" dev eth0 2>/dev/null || true ;;
    kill)
        namespace "${2:?host}" >/dev/null
        cut "$2"
        ip netns pids "us-$2" | xargs -r kill -9
        inside "$2" ip addr flush dev eth0 secondary ;;
    exec) namespace "${2:?host}" >/dev/null; inside "$2" "${@:3}" ;;
    ip) namespace "${2:?host}" >/dev/null; echo "${address[$2]}" ;;
    *) die "usage: hosts.sh up|down|cut HOST|heal HOST|cut-link A B|heal-link A B|kill HOST|exec HOST CMD…|ip HOST" ;;
esac
