#!/usr/bin/env bash
# tests/cni/containerd.sh: containerd 1.6's `ctr run --cni` runs containers on
# the plugin under test (by default the reference bridge + host-local +
# portmap), from an image built here from busybox-static.
#
# Claims, one TAP line each:
#   - containerd starts inside the script's namespaces on its own config
#     (root and state on tmpfs, CRI disabled: ctr --cni is its own client);
#   - an OCI image tarball made with tar, sha256sum and jq imports with
#     `ctr image import`;
#   - two detached `ctr run --cni` containers get distinct leased addresses
#     on 10.88.12.0/24 (and fd00:88::/64 when the conflist has it, as the
#     default does) and reach each other by address (busybox nc against
#     busybox httpd), over v4 and v6;
#   - ctr sends the conflist's cniVersion;
#   - a foreground `ctr run --rm --cni` container reaches them, and its
#     address is released (DEL) when it exits;
#   - after `ctr task kill`, `ctr task rm` and `ctr container rm` of a
#     detached container, its address is released if ctr sent DEL; ctr 1.6
#     sends none, and then the check is skipped saying so, with the lease
#     still held as the evidence;
#   - port mappings and names are skipped when ctr sends no runtimeConfig
#     or names (ctr 1.6 has no -p and passes neither; the recorded ADD shows
#     what it did send).
#
# Run as root: bash tests/cni/containerd.sh   (about 10 s). Needs containerd,
# runc, containernetworking-plugins, busybox-static, iptables, jq.
# Everything runs in namespaces the script makes (see lib.sh). ctr searches
# /opt/cni/bin (a tmpfs here, filled from CNI_PLUGIN_DIRS first) then
# /usr/lib/cni, and loads the first conflist of /etc/cni/net.d.
set -eo pipefail
# shellcheck source=tests/cni/lib.sh
. "$(dirname "$0")/lib.sh"
cni_need containerd containerd
cni_need ctr containerd
cni_need runc runc
cni_need iptables iptables
cni_need sha256sum coreutils
cni_enter "$@"

NET=pn-containerd
N=12
IMAGE=podnet.test/busybox:1
SOCK=/run/podnet-cni-containerd/containerd.sock

# oci_image ROOTFS OUT: an OCI image layout tarball of one uncompressed
# layer holding ROOTFS, named $IMAGE.
oci_image() {
	local rootfs=$1 out=$2 dir=$CNI_WORK/oci
	mkdir -p "$dir/blobs/sha256"
	# blob FILE: move FILE into the blobs, print "digest size".
	blob() {
		local d s
		d=$(sha256sum "$1" | cut -d' ' -f1)
		s=$(stat -c %s "$1")
		mv "$1" "$dir/blobs/sha256/$d"
		echo "sha256:$d $s"
	}
	tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf "$CNI_WORK/layer.tar" .
	local layer config manifest
	read -r -a layer <<<"$(blob "$CNI_WORK/layer.tar")"
	jq -cn --arg diff "${layer[0]}" '{architecture: "amd64", os: "linux",
		config: {Env: ["PATH=/bin"], Cmd: ["/bin/sh"]},
		rootfs: {type: "layers", diff_ids: [$diff]}}' >"$CNI_WORK/config.json"
	read -r -a config <<<"$(blob "$CNI_WORK/config.json")"
	jq -cn --arg cd "${config[0]}" --argjson cs "${config[1]}" \
		--arg ld "${layer[0]}" --argjson ls "${layer[1]}" '{schemaVersion: 2,
		mediaType: "application/vnd.oci.image.manifest.v1+json",
		config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
		layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $ld, size: $ls}]}' \
		>"$CNI_WORK/manifest.json"
	read -r -a manifest <<<"$(blob "$CNI_WORK/manifest.json")"
	jq -cn --arg d "${manifest[0]}" --argjson s "${manifest[1]}" --arg name "$IMAGE" '{schemaVersion: 2,
		manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
		annotations: {"io.containerd.image.name": $name,
		              "org.opencontainers.image.ref.name": ($name | split(":")[1])}}]}' >"$dir/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
	tar -C "$dir" -cf "$out" oci-layout index.json blobs
}

cni_busybox_rootfs "$CNI_WORK/rootfs"
extra=$(cni_recorder_plugin '{"portMappings": true, "aliases": true}')
cni_write_conflist $NET 1.0.0 $N "$extra" >/dev/null
V6=0
cni_has_v6 $NET && V6=1
NO_V6="the conflist has no fd00:88::/64 range"

mkdir -p "$CNI_WORK/containerd"
cat >"$CNI_WORK/containerd.toml" <<EOF
version = 2
root = "$CNI_WORK/containerd"
state = "/run/podnet-cni-containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CNI_WORK/containerd-opt"
EOF
containerd --config "$CNI_WORK/containerd.toml" >"$CNI_WORK/containerd.log" 2>&1 &
CONTAINERD=$!
# The containerd namespace doubles as the cgroup parent ctr gives runc
# (/<namespace>/<id>), which lib.sh removes after the run.
c() { ctr --address "$SOCK" -n "$CNI_CGROUP" "$@"; }
# shellcheck disable=SC2317 # called by lib.sh on exit
cni_teardown() {
	local t
	for t in $(c task ls -q 2>/dev/null); do c task kill -s KILL "$t"; done
	kill "$CONTAINERD"
}
retry 50 c version >/dev/null 2>&1 ||
	cni_bail "containerd starts on its own config" "ctr version answers" "$(tail -n 5 "$CNI_WORK/containerd.log")"
cni_ok "containerd starts on its own config"

oci_image "$CNI_WORK/rootfs" "$CNI_WORK/image.tar"
check_run "ctr image import takes the OCI tarball" c image import --snapshotter native "$CNI_WORK/image.tar"
check_contains "the image is listed" "$IMAGE" "$(c image ls -q)"

# run_server NAME: a detached container on the network serving its name.
run_server() {
	c run -d --cni --snapshotter native "$IMAGE" "$1" sh -c \
		"mkdir -p /tmp/www && echo $1 >/tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"
}
EXECS=0
cexec() {
	EXECS=$((EXECS + 1))
	c task exec --exec-id "x$EXECS" "$@"
}
addr_of() { cexec "$1" ip -o -4 addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; }
addr6_of() { cexec "$1" ip -o -6 addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1; }
fetch() {
	cexec "$1" sh -c "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $2 80 | tail -n 1" 2>&1 | tr -d '\r'
}
# recorded_add NAME: the recorded ADD of container NAME (ctr names it
# <namespace>-<id> to CNI).
recorded() { cni_recorded | jq -c --arg cmd "$1" --arg id "$CNI_CGROUP-$2" 'select(.command == $cmd and .containerID == $id)'; }

out=$(run_server a 2>&1) || cni_bail "ctr run -d --cni a starts" "no error" "$out"
out=$(run_server b 2>&1) || cni_bail "ctr run -d --cni b starts" "no error" "$out"
cni_check_pair_addresses
cni_check_pair_reach

add_a=$(recorded ADD a | tail -n 1) || true
echo "# ctr's ADD for a: containerID=$(jq -r .containerID <<<"$add_a") netns=$(jq -r '.config.prevResult.interfaces[] | select(.sandbox) | .sandbox' <<<"$add_a") CNI_ARGS='$(jq -r .args <<<"$add_a")' runtimeConfig=$(jq -c '.config.runtimeConfig // "none"' <<<"$add_a")"
check "ctr sends the conflist's cniVersion" "1.0.0" "$(jq -r .config.cniVersion <<<"$add_a")"

if jq -e '.config.runtimeConfig.portMappings' <<<"$add_a" >/dev/null 2>&1; then
	skip "a port mapping reaches a" "ctr sent portMappings, but this script has no check for them yet"
else
	skip "a port mapping reaches a" "ctr run has no -p and sent no runtimeConfig.portMappings (portMappings capability declared)"
fi
if [ "${CNI_CHECK_DNS:-}" = 1 ] && { jq -e '.config.runtimeConfig.aliases' <<<"$add_a" >/dev/null 2>&1 || [ -n "$(jq -r .args <<<"$add_a")" ]; }; then
	check "b reaches a by name" "a" "$(fetch b a)"
elif [ "${CNI_CHECK_DNS:-}" = 1 ]; then
	skip "b reaches a by name" "ctr sent no name to resolve (CNI_ARGS empty, no runtimeConfig.aliases)"
else
	skip "b reaches a by name" "CNI_CHECK_DNS=1 not set"
fi

# A foreground --rm container: ctr itself sends DEL once it exits.
out=$(c run --rm --cni --snapshotter native "$IMAGE" c sh -c \
	"ip -o addr show dev eth0 scope global; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $A 80 | tail -n 1" 2>&1 | tr -d '\r') || true
C=$(awk '$2 == "eth0" && $3 == "inet" {print $4}' <<<"$out" | cut -d/ -f1) || true
C6=$(awk '$2 == "eth0" && $3 == "inet6" {print $4}' <<<"$out" | cut -d/ -f1) || true
check "a foreground ctr run --rm --cni container reaches a" "a" "$(tail -n 1 <<<"$out")"
case $C in 10.88.$N.*) cni_ok "it had an address in 10.88.$N.0/24 ($C)" ;;
*) cni_not_ok "it had an address in 10.88.$N.0/24" "10.88.$N.x" "$out" ;; esac
check "ctr sent DEL for it when it exited" "1" "$(recorded DEL c | wc -l)"
check_lacks "its address is released" "$C" "$(cni_leases $NET)"
if [ $V6 = 1 ]; then
	case $C6 in fd00:88::*) check_lacks "its IPv6 address ($C6) is released" "$C6" "$(cni_leases $NET)" ;;
	*) cni_not_ok "it had an IPv6 address" "fd00:88::x" "$out" ;; esac
else
	skip "its IPv6 address is released" "$NO_V6"
fi

check_run "ctr task kill a succeeds" c task kill -s KILL a
retry 25 sh -c "ctr --address $SOCK -n $CNI_CGROUP task ls | grep -q '^a .*STOPPED'" || true
check_run "ctr task rm a succeeds" c task rm a
check_run "ctr container rm a succeeds" c container rm a
if [ "$(recorded DEL a | wc -l)" -gt 0 ]; then
	check_lacks "ctr task kill / task rm / container rm release a's address" "$A" "$(cni_leases $NET)"
else
	skip "ctr task kill / task rm / container rm release a's address" \
		"ctr 1.6 sent no DEL for the detached a; its lease is $(cni_leases $NET | grep -qxF "$A" && echo still || echo not) held"
fi
check_contains "b keeps its address" "$B" "$(cni_leases $NET)"
check "b's address is still on its eth0" "$B" "$(addr_of b)"

cni_finish
