#!/usr/bin/env bash
# tests/cni/libcni.sh: libcni (Debian's golang-github-appc-cni-dev) drives the
# plugin under test through ADD, CHECK, the result cache and DEL (twice) at
# every cniVersion among 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0 that both
# libcni and the plugins support; the others are skipped, naming who lacks
# them. The claims, one TAP line each, are listed in libcni/main.go.
#
# It builds tests/cni/libcni/main.go offline in GOPATH mode
# (GO111MODULE=off, GOPATH=/usr/share/gocode), attaches a namespace made with
# `ip netns add` inside its own private mount + net namespace (/run/netns on
# a tmpfs), with a conflist per version on 10.88.13.0/24 (and fd00:88::/64 if
# the plugin section has it, as the default does): the plugins of
# CNI_PLUGIN_JSON (default the reference bridge + host-local + portmap) and a
# recording plugin last, which shows the cniVersion libcni sends.
#
# Run as root: bash tests/cni/libcni.sh   (about 3 s with the build).
# Needs golang-go, golang-github-appc-cni-dev, containernetworking-plugins,
# iptables, jq. GC and STATUS are not driven: Debian's libcni (1.1.2) has
# neither (they came with libcni 1.2.0 and spec 1.1.0).
set -eo pipefail
# shellcheck source=tests/cni/lib.sh
. "$(dirname "$0")/lib.sh"
cni_need go golang-go
[ -d /usr/share/gocode/src/github.com/containernetworking/cni/libcni ] ||
	cni_skip_all "libcni not found (apt-get install golang-github-appc-cni-dev)"
cni_need nsenter util-linux
# Asked on the host side: inside, /var/lib (and dpkg's database) is a tmpfs.
export CNI_LIBCNI_PKG=${CNI_LIBCNI_PKG:-$(dpkg-query -W -f '${Version}' golang-github-appc-cni-dev 2>/dev/null || echo unknown)}
export CNI_PLUGINS_PKG=${CNI_PLUGINS_PKG:-$(dpkg-query -W -f '${Version}' containernetworking-plugins 2>/dev/null || echo unknown)}
cni_enter "$@"

here=$(cd "$(dirname "$0")" && pwd)
N=13
NET=pn-libcni
echo "# golang-github-appc-cni-dev $CNI_LIBCNI_PKG, containernetworking-plugins $CNI_PLUGINS_PKG"

mkdir -p "$CNI_WORK/gopath" "$CNI_WORK/gocache"
if ! out=$(cd "$here/libcni" && GO111MODULE=off GOFLAGS='' GOPATH="$CNI_WORK/gopath:/usr/share/gocode" \
	GOCACHE="$CNI_WORK/gocache" nice -n 19 go build -o "$CNI_WORK/libcni-driver" . 2>&1); then
	cni_bail "the libcni driver builds offline in GOPATH mode" "a binary" "$out"
fi

extra=$(cni_recorder_plugin '{"portMappings": true}')
files=()
for v in 0.3.0 0.3.1 0.4.0 1.0.0 1.1.0; do
	# One network per version: the lease and the result cache are per
	# network, so a version's leftovers cannot pass another's checks.
	files+=("$(cni_write_conflist "$NET-${v//./}" "$v" $N "$extra")")
done

v6=()
cni_has_v6 "$NET-030" && v6=(-subnet6-prefix fd00:88::)

ip netns add libcni
# shellcheck disable=SC2317 # called by lib.sh on exit
cni_teardown() { ip netns del libcni; }

rc=0
"$CNI_WORK/libcni-driver" -netns /run/netns/libcni -path "$CNI_PATH_LIST" \
	-cache "$CNI_WORK/cache" -record "$CNI_WORK/record.jsonl" \
	-leases ". '$here/lib.sh'; cni_leases \"\$CNI_NETWORK\"" \
	-subnet-prefix "10.88.$N." "${v6[@]}" "${files[@]}" || rc=$?
exit $rc
