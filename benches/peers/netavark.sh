#!/usr/bin/env bash
# netavark.sh N [C] - peer, run by run.sh inside a round's namespaces:
#   benches/peers/run.sh floor-fork netavark
# netavark setup/teardown (podman's network backend; Debian: netavark) on a bridge network.
# netavark does no IPAM (podman hands it static_ips), so the address is the I-th pool address,
# as for ip.sh. Netns pinned with `ip netns add`. Firewall driver: $NETAVARK_FW if the
# installed netavark knows it (1.4.0 has only iptables|firewalld; no no-op driver), else
# its default; its rules land in the runner's private netns and vanish with it.
# NETAVARK_INTERNAL=true makes the network internal (no NAT rules).
set -euo pipefail
. "$(dirname "$0")/lib/peer.sh"
NETAVARK=${NETAVARK:-/usr/lib/podman/netavark}
internal=${NETAVARK_INTERNAL:-false}
rootless=false
[ "$(id -u)" = 0 ] && grep -q '^ *0 *0 ' /proc/self/uid_map || rootless=true
mkdir -p "$BENCH_TMP/netavark"

create() {
	ip_of "$1"
	ip netns add "sb$1"
	nv "$1" setup
}

teardown() {
	ip_of "$1"
	nv "$1" teardown
	ip netns del "sb$1"
}

# nv I setup|teardown: run netavark on sandbox I, config on stdin (no temp file, no fork).
nv() {
	local conf
	printf -v conf '{"container_id":"bench%s","container_name":"bench%s",
 "networks":{"podnetbench":{"interface_name":"eth0","static_ips":["%s"]}},
 "network_info":{"podnetbench":{"name":"podnetbench","driver":"bridge",
   "id":"0000000000000000000000000000000000000000000000000000000000000001",
   "network_interface":"%s","subnets":[{"subnet":"%s","gateway":"%s"}],
   "ipv6_enabled":false,"internal":%s,"dns_enabled":false}}}' \
		"$1" "$1" "$IP" "$BENCH_BRIDGE" "$BENCH_SUBNET" "$BENCH_GW" "$internal"
	"$NETAVARK" --rootless "$rootless" --config "$BENCH_TMP/netavark" "$2" "/run/netns/sb$1" \
		<<<"$conf" >"$BENCH_TMP/nv.out.$1" || { cat "$BENCH_TMP/nv.out.$1" >&2; return 1; }
}

bench_main "$@"
