#!/usr/bin/env bash
# ip.sh N [C] - peer: plain iproute2, one `ip` command per step, as a shell-script user writes
# it. Run by run.sh inside a round's namespaces:  benches/peers/run.sh floor-fork ip
# Netns pinned under /run/netns (the runner's private tmpfs). IPAM: the I-th pool address.
set -euo pipefail
. "$(dirname "$0")/lib/peer.sh"

create() {
	local ns=sb$1 v=pnb$1
	ip_of "$1"
	ip netns add "$ns"
	ip link add "$v" type veth peer name eth0 netns "$ns"
	ip link set "$v" master "$BENCH_BRIDGE" up
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "$IP/$BENCH_PREFIX" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add default via "$BENCH_GW"
}

teardown() {
	ip link del "pnb$1"
	ip netns del "sb$1"
}

bench_main "$@"
