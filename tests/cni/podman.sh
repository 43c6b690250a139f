#!/usr/bin/env bash
# tests/cni/podman.sh: podman 4.3's CNI backend runs containers on the plugin
# under test (by default the reference bridge + host-local + portmap).
#
# Claims, one TAP line each:
#   - podman uses the CNI backend and lists the network from the conflist
#     (cniVersion 0.4.0, the plugins followed by firewall and tuning, as
#     podman writes its own);
#   - two containers from a busybox-static --rootfs get distinct leased
#     addresses on 10.88.11.0/24 and reach each other by address (busybox
#     nc against busybox httpd in the other);
#   - podman passes a --network-alias to the chain (runtimeConfig.aliases),
#     which a plugin with DNS must resolve;
#   - --ip and --mac-address give a container that address and MAC, leased
#     and released with it;
#   - with CNI_CHECK_DNS=1, each reaches the other by name and alias (skipped
#     otherwise; with the default plugins, Debian's dnsname is chained);
#   - `-p 18080:80` reaches the first container from the script's host
#     namespace, at 127.0.0.1 and at the gateway address (v4 and v6);
#   - with an fd00:88::/64 range in the conflist (the default has one),
#     they get v6 addresses, leased and released, and reach each other
#     over v6 (skipped, saying so, when the conflist has no v6 range);
#   - `podman network reload` restores the port mapping after the
#     namespace's nf_tables ruleset is flushed, keeps the container's
#     addresses and leaks none;
#   - `podman rm -f` releases the container's address (CNI_LEASES_CMD).
# Lines starting with # show what podman sent the chain (seen by a recording
# plugin at its end): aliases, CNI_ARGS, runtimeConfig, the reload's verbs.
#
# Run as root: bash tests/cni/podman.sh   (about 10 s). Needs podman, runc,
# containernetworking-plugins, busybox-static, iptables, nftables, jq, curl
# (and dnsmasq-base, golang-github-containernetworking-plugin-dnsname for
# CNI_CHECK_DNS=1 with the default plugins). Everything runs in namespaces the
# script makes (see lib.sh); podman's storage is a tmpfs.
# To test another plugin: CNI_PLUGIN_JSON='[{"type":"podnet",...}]'
# CNI_PLUGIN_DIRS=/path/to/dir CNI_LEASES_CMD='...' bash tests/cni/podman.sh
set -eo pipefail
# shellcheck source=tests/cni/lib.sh
. "$(dirname "$0")/lib.sh"
cni_need podman podman
cni_need runc runc
cni_need curl curl
cni_need iptables iptables
cni_need nft nftables
cni_enter "$@"

NET=pn-podman
N=11
HOSTPORT=18080
GW=$(cni_gateway $N)

cni_busybox_rootfs "$CNI_WORK/rootfs"
# The recorder declares every capability podman may fill, to show them all.
extra=$(cni_recorder_plugin '{"aliases": true, "portMappings": true, "ips": true, "mac": true, "dns": true}')
if [ "${CNI_CHECK_DNS:-}" = 1 ] && [ -z "${CNI_PLUGIN_JSON:-}" ]; then
	# The reference bridge has no DNS; Debian's dnsname gives it one.
	CNI_PLUGIN_JSON=$(jq -c '. + [{type: "dnsname", domainName: "dns.podnet",
		capabilities: {aliases: true}}]' <<<"$CNI_DEFAULT_PLUGIN_JSON")
fi
# podman ends the chains it writes with firewall and tuning; so do these.
CNI_PLUGIN_JSON=$(jq -c '(if type == "array" then . else [.] end)
	+ [{type: "firewall", backend: "iptables"}, {type: "tuning"}]' \
	<<<"${CNI_PLUGIN_JSON:-$CNI_DEFAULT_PLUGIN_JSON}")
cni_write_conflist $NET 0.4.0 $N "$extra" >/dev/null
V6=0
cni_has_v6 $NET && V6=1
NO_V6="the conflist has no fd00:88::/64 range"

dirs=$(jq -Rc 'split(":")' <<<"$CNI_PATH_LIST")
cat >"$CNI_WORK/containers.conf" <<EOF
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$CNI_WORK/events.log"
runtime = "runc"
[network]
network_backend = "cni"
cni_plugin_dirs = $dirs
# podman's own default network (never used here) kept off the test's /24s.
default_subnet = "10.88.255.0/24"
EOF
export CONTAINERS_CONF=$CNI_WORK/containers.conf
pm() {
	podman --root "$CNI_WORK/storage" --runroot /run/podnet-cni-podman \
		--storage-driver vfs "$@"
}
# shellcheck disable=SC2317 # called by lib.sh on exit
cni_teardown() { pm rm -f -t 0 --all; }

# run_server NAME [ARGS...]: a detached container serving its own name over
# HTTP on port 80.
run_server() {
	local name=$1
	shift
	pm run -d --name "$name" --network $NET --cgroup-parent "/$CNI_CGROUP" "$@" \
		--rootfs "$CNI_WORK/rootfs" sh -c \
		"mkdir -p /www/$name && echo $name >/www/$name/index.html && exec httpd -f -p 80 -h /www/$name"
}
addr_of() { pm inspect "$1" --format "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}"; }
addr6_of() { pm inspect "$1" --format "{{(index .NetworkSettings.Networks \"$NET\").GlobalIPv6Address}}"; }
# fetch FROM HOST: the body container FROM gets from http://HOST/ (busybox
# nc: Debian's static busybox wget crashes in glibc's static NSS lookups).
fetch() {
	pm exec "$1" sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $2 80 | tail -n 1" 2>&1 | tr -d '\r'
}
host_fetch() { curl -sS -m 3 "$1" 2>&1; }

check "podman runs the CNI backend" "cni" "$(pm info --format '{{.Host.NetworkBackend}}')"
check_contains "podman lists the network of the conflist" "$NET" "$(pm network ls --format '{{.Name}}')"

out=$(run_server a -p $HOSTPORT:80 2>&1) || cni_bail "podman run a starts on $NET" "a container ID" "$out"
out=$(run_server b --network-alias bee 2>&1) || cni_bail "podman run b starts on $NET" "a container ID" "$out"
cni_check_pair_addresses

cni_check_pair_reach

# What podman hands the chain as runtimeConfig.aliases for b, whose
# --network-alias is "bee".
aliases=$(cni_recorded | jq -c --arg id "$(pm inspect b --format '{{.Id}}')" \
	'select(.command == "ADD" and .containerID == $id) | .config.runtimeConfig.aliases // empty' | tail -n 1) || true
echo "# podman's aliases for b: ${aliases:-none}"
echo "# podman's CNI_ARGS for b: $(cni_recorded | jq -r --arg id "$(pm inspect b --format '{{.Id}}')" \
	'select(.command == "ADD" and .containerID == $id) | .args' | tail -n 1)"
echo "# podman's runtimeConfig for a: $(cni_recorded | jq -c --arg id "$(pm inspect a --format '{{.Id}}')" \
	'select(.command == "ADD" and .containerID == $id) | .config.runtimeConfig // {}' | tail -n 1)"
check "podman passes b's --network-alias to the chain as runtimeConfig.aliases" "true" \
	"$(jq -c --arg n $NET '.[$n] | index("bee") != null' <<<"${aliases:-null}" 2>&1 || true)"

# A static address and MAC (--ip, --mac-address): podman hands them to the
# chain (how is printed: CNI_ARGS or runtimeConfig), the plugin must honour
# them.
STATIC=10.88.$N.50
MAC=02:88:11:00:00:50
if out=$(run_server s --ip $STATIC --mac-address $MAC 2>&1); then
	add_s=$(cni_recorded | jq -c --arg id "$(pm inspect s --format '{{.Id}}')" 'select(.command == "ADD" and .containerID == $id)' | tail -n 1) || true
	echo "# podman's ADD for s (--ip, --mac-address): CNI_ARGS='$(jq -r .args <<<"$add_s")' runtimeConfig=$(jq -c '.config.runtimeConfig // {}' <<<"$add_s")"
	check "--ip gives s that address on eth0" "$STATIC/24" \
		"$(pm exec s ip -o -4 addr show dev eth0 | awk '{print $4}')"
	check "--mac-address gives s that MAC on eth0" "$MAC" "$(pm exec s cat /sys/class/net/eth0/address)"
	check_contains "the static address is leased" "$STATIC" "$(cni_leases $NET)"
	check "b reaches s at its static address" "s" "$(fetch b $STATIC)"
	check_run "podman rm -f s succeeds" pm rm -f -t 0 s
	check_lacks "podman rm -f releases the static address" "$STATIC" "$(cni_leases $NET)"
else
	cni_not_ok "podman run s --ip $STATIC --mac-address $MAC starts" "a container ID" "$out"
fi

if [ "${CNI_CHECK_DNS:-}" = 1 ]; then
	check "b reaches a by name" "a" "$(fetch b a)"
	check "a reaches b by name" "b" "$(fetch a b)"
	check "a reaches b by its alias" "b" "$(fetch a bee)"
else
	skip "b reaches a by name" "CNI_CHECK_DNS=1 not set"
	skip "a reaches b by name" "CNI_CHECK_DNS=1 not set"
	skip "a reaches b by its alias" "CNI_CHECK_DNS=1 not set"
fi

retry 15 host_fetch "http://127.0.0.1:$HOSTPORT/" >/dev/null || true
check "-p $HOSTPORT:80 reaches a at 127.0.0.1:$HOSTPORT" "a" "$(host_fetch "http://127.0.0.1:$HOSTPORT/")"
check "-p $HOSTPORT:80 reaches a at $GW:$HOSTPORT" "a" "$(host_fetch "http://$GW:$HOSTPORT/")"
if [ $V6 = 1 ]; then
	retry 15 host_fetch "http://[$CNI_GATEWAY6]:$HOSTPORT/" >/dev/null || true
	check "-p $HOSTPORT:80 reaches a at [$CNI_GATEWAY6]:$HOSTPORT" "a" "$(host_fetch "http://[$CNI_GATEWAY6]:$HOSTPORT/")"
else
	skip "-p $HOSTPORT:80 reaches a at [$CNI_GATEWAY6]:$HOSTPORT" "$NO_V6"
fi

# Reload: flush every rule in the namespace (as a firewall reload would),
# show that it broke the mapping, then have podman put it back.
nft flush ruleset
check_fails "a flushed ruleset breaks the port mapping" curl -sS -m 2 "http://$GW:$HOSTPORT/"
calls() { cni_recorded | jq -r --arg id "$(pm inspect a --format '{{.Id}}')" 'select(.containerID == $id) | .command' | paste -sd' '; }
before=$(calls) || true
check_run "podman network reload a succeeds" pm network reload a
echo "# what the reload sent the chain for a: $(calls | cut -c$((${#before} + 2))-)"
A_BEFORE=$A A6_BEFORE=$A6
A=$(addr_of a) || true
A6=$(addr6_of a) || true
# podman hands the old addresses back on the reload's ADD (IP= in CNI_ARGS,
# or runtimeConfig.ips to plugins with the ips capability).
check "the reload keeps a's address" "$A_BEFORE" "$A"
if [ $V6 = 1 ]; then
	check "the reload keeps a's IPv6 address" "$A6_BEFORE" "$A6"
else
	skip "the reload keeps a's IPv6 address" "$NO_V6"
fi
echo "# a's address before the reload: $A_BEFORE, after: $A; the reload's ADD had CNI_ARGS='$(cni_recorded | jq -r --arg id "$(pm inspect a --format '{{.Id}}')" 'select(.containerID == $id and .command == "ADD") | .args' | tail -n 1)' runtimeConfig=$(cni_recorded | jq -c --arg id "$(pm inspect a --format '{{.Id}}')" 'select(.containerID == $id and .command == "ADD") | .config.runtimeConfig' | tail -n 1)"
retry 15 host_fetch "http://$GW:$HOSTPORT/" >/dev/null || true
check "after reload, -p reaches a at $GW:$HOSTPORT" "a" "$(host_fetch "http://$GW:$HOSTPORT/")"
check "after reload, b reaches a by address" "a" "$(fetch b "$A")"
check "after reload, exactly a and b are leased" "$(cni_lines "$A" "$B" "$A6" "$B6")" "$(cni_leases $NET)"

check_run "podman rm -f a succeeds" pm rm -f -t 0 a
check_lacks "podman rm -f releases a's address" "$A" "$(cni_leases $NET)"
if [ $V6 = 1 ]; then
	check_lacks "podman rm -f releases a's IPv6 address" "$A6" "$(cni_leases $NET)"
else
	skip "podman rm -f releases a's IPv6 address" "$NO_V6"
fi
check_contains "b keeps its address" "$B" "$(cni_leases $NET)"
check_fails "the port mapping is gone with a" curl -sS -m 2 "http://$GW:$HOSTPORT/"
check_run "podman rm -f b succeeds" pm rm -f -t 0 b
check "no address is leased after both are removed" "" "$(cni_leases $NET)"

cni_finish
