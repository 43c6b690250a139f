#!/usr/bin/env bash
# cni.sh N [C] - peer, run by run.sh inside a round's namespaces: benches/peers/run.sh floor-fork cni
# The CNI reference plugins (Debian: containernetworking-plugins), exec'd as a runtime does:
# loopback + bridge (host-local IPAM, dataDir in $BENCH_TMP). Netns pinned with `ip netns add`.
set -euo pipefail
. "$(dirname "$0")/lib/peer.sh"
export CNI_PATH=${CNI_PATH:-/usr/lib/cni}
CNI_VERSION=${CNI_VERSION:-1.0.0}

lo_conf=$BENCH_TMP/lo.json bridge_conf=$BENCH_TMP/bridge.json
cat >"$lo_conf" <<JSON
{"cniVersion":"$CNI_VERSION","name":"lo","type":"loopback"}
JSON
cat >"$bridge_conf" <<JSON
{"cniVersion":"$CNI_VERSION","name":"podnetbench","type":"bridge","bridge":"$BENCH_BRIDGE",
 "isGateway":true,"ipMasq":false,
 "ipam":{"type":"host-local","dataDir":"$BENCH_TMP/cni-ipam",
         "ranges":[[{"subnet":"$BENCH_SUBNET","gateway":"$BENCH_GW"}]],
         "routes":[{"dst":"0.0.0.0/0"}]}}
JSON

# plugin CMD I IFNAME NAME CONF
plugin() {
	CNI_COMMAND=$1 CNI_CONTAINERID=bench$2 CNI_NETNS=/run/netns/sb$2 CNI_IFNAME=$3 \
		"$CNI_PATH/$4" <"$5" >"$BENCH_TMP/cni.out.$2" || { cat "$BENCH_TMP/cni.out.$2" >&2; return 1; }
}

create() {
	ip netns add "sb$1"
	plugin ADD "$1" lo loopback "$lo_conf"
	plugin ADD "$1" eth0 bridge "$bridge_conf"
}

teardown() {
	plugin DEL "$1" eth0 bridge "$bridge_conf"
	plugin DEL "$1" lo loopback "$lo_conf"
	ip netns del "sb$1"
}

bench_main "$@"
