# shellcheck shell=bash
# tests/cni/lib.sh: what the real-client CNI scripts (podman.sh,
# containerd.sh, libcni.sh) share. Source it; do not run it.
#
# Claims it lets a script make: a real CNI client (podman, containerd's ctr,
# libcni) driven against a plugin, inside namespaces the script made itself,
# so that the machine's real network, /run, /var/lib and /tmp are never
# touched and nothing outlives the run.
#
# How a script uses it:
#   . "$(dirname "$0")/lib.sh"
#   cni_enter "$@"          # re-runs the script inside private namespaces
#   cni_write_conflist NAME 0.4.0 11
#   check "claim" "expected" "seen"; ...; cni_finish
#
# The plugin under test is chosen by the environment only:
#   CNI_PLUGIN_JSON   the conflist's "plugins" array (a single object is
#                     wrapped into one). Tokens @BRIDGE@, @SUBNET@, @GATEWAY@,
#                     @SUBNET6@, @GATEWAY6@ and @DATADIR@ are replaced by the
#                     script's values. Default: the reference bridge +
#                     host-local on 10.88.N.0/24 and fd00:88::/64, then
#                     portmap. The IPv6 checks run when the conflist has an
#                     fd00:88:: range (cni_has_v6), and are skipped otherwise.
#   CNI_PLUGIN_DIRS   colon-separated absolute directories searched before
#                     /usr/lib/cni (the reference plugins stay reachable for
#                     chaining; e.g. target/debug); their executables are
#                     copied into the private /run before /tmp, /var/lib,
#                     /var/tmp and /opt become fresh tmpfs inside.
#   CNI_LEASES_CMD    a shell command printing the addresses the plugin has
#                     leased on network $CNI_NETWORK, one per line. Default:
#                     host-local's files under @DATADIR@/$CNI_NETWORK.
#   CNI_CHECK_DNS=1   run the by-name checks (skipped otherwise).
#   PODNET_REQUIRE_PRIV=1  a script that would skip (not root, a tool
#                     missing) fails instead, as the Rust tests do.

# --- namespaces ---------------------------------------------------------

# Where everything a run writes lives: a tmpfs inside the private mount
# namespace (see cni_enter), so it vanishes with the namespace.
CNI_WORK=/tmp/podnet-cni
CNI_CONF_DIR=$CNI_WORK/net.d
CNI_DATADIR=$CNI_WORK/ipam
# The plugin search path: CNI_PLUGIN_DIRS, the reference plugins, then the
# script's own helper plugins (cni_recorder_plugin).
CNI_PATH_LIST=${CNI_PLUGIN_DIRS:+$CNI_PLUGIN_DIRS:}/usr/lib/cni:$CNI_WORK/bin
# The scripts' own directory (staged into /run inside: see cni_stage).
CNI_SRC_DIR=$(cd "$(dirname "$0")" && pwd)

# Skip the whole script (exit 0) for a reason, or fail when
# PODNET_REQUIRE_PRIV=1.
cni_skip_all() {
	if [ "${PODNET_REQUIRE_PRIV:-}" = 1 ]; then
		echo "not ok - prerequisites: $* (PODNET_REQUIRE_PRIV=1)"
		echo "0 passed, 1 failed"
		exit 1
	fi
	echo "1..0 # SKIP $*"
	exit 0
}

# Skip the script (fail it under PODNET_REQUIRE_PRIV=1) if a command is
# missing, naming its Debian package.
cni_need() {
	local cmd=$1 pkg=$2
	command -v "$cmd" >/dev/null 2>&1 || cni_skip_all "$cmd not found (apt-get install $pkg)"
}

# The name, at the root of every cgroup hierarchy, under which the clients
# are told to put their containers' cgroups; removed on the host side after
# the namespaces are gone (cgroups are the one thing a mount namespace does
# not keep private).
cni_cgroup_name() { echo "podnet-cni-$(basename "$0" .sh)-$CNI_OUTER_PID"; }

# Remove the cgroups made under $1 in every hierarchy, deepest first. The
# processes in them died with the pid namespace; the kernel frees a cgroup
# once its last task is reaped, so retry briefly.
cni_remove_cgroups() {
	local name=$1 left
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		left=0
		for d in /sys/fs/cgroup/*/"$name" /sys/fs/cgroup/"$name"; do
			[ -d "$d" ] || continue
			find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
			[ -d "$d" ] && left=1
		done
		[ $left = 0 ] && return 0
		sleep 0.3
	done
	echo "# cgroups left under /sys/fs/cgroup/*/$name" >&2
	return 1
}

# CNI_PLUGIN_DIRS must name absolute directories that exist.
cni_check_plugin_dirs() {
	local dir
	local IFS=:
	for dir in ${CNI_PLUGIN_DIRS:-}; do
		case $dir in
		/*) ;;
		*) echo "CNI_PLUGIN_DIRS: $dir is not an absolute path" >&2 && exit 2 ;;
		esac
		[ -d "$dir" ] || { echo "CNI_PLUGIN_DIRS: $dir is not a directory" >&2 && exit 2; }
	done
}

# Inside, before the tmpfs mounts hide them (a checkout under /tmp, say):
# copy the scripts' directory and each of CNI_PLUGIN_DIRS into the fresh
# /run, and point CNI_SRC_DIR and CNI_PATH_LIST at the copies.
cni_stage() {
	local dir i=0 staged=
	local IFS=:
	mkdir -p /run/podnet-cni-src
	cp -a "$CNI_SRC_DIR"/. /run/podnet-cni-src/
	for dir in ${CNI_PLUGIN_DIRS:-}; do
		i=$((i + 1))
		mkdir -p "/run/podnet-cni-plugins/$i"
		find "$dir" -maxdepth 1 -type f -perm -u+x -exec cp {} "/run/podnet-cni-plugins/$i/" \;
		staged=${staged:+$staged:}/run/podnet-cni-plugins/$i
	done
	CNI_SRC_DIR=/run/podnet-cni-src
	CNI_PATH_LIST=${staged:+$staged:}/usr/lib/cni:$CNI_WORK/bin
}

# What the host shows that a leaking run would change: its links, its
# nf_tables tables and its named network namespaces (read only).
cni_host_state() {
	ip -o link show | awk -F': ' '{print $2}' | sort
	{ nft list tables 2>/dev/null || true; } | sort
	{ ls /run/netns 2>/dev/null || true; } | sort
}

# Enter the private namespaces. The first call (on the host) re-runs the
# script under `unshare --net --mount --pid --fork --mount-proc
# --propagation private` (SIGKILLed after CNI_TIMEOUT seconds, default
# 300, which ends every process of the namespace), waits, removes the
# cgroups the clients made, checks the host's links, nf_tables tables and
# netns files are as before, and exits with the script's status.
# The second call (inside) mounts tmpfs on /run, /var/lib, /tmp, /var/tmp
# and /opt (where the clients keep state: CNI's cache in /var/lib/cni,
# podman's in /var/lib/containers, netns files in /run/netns, containerd's
# /opt/containerd; and /opt/cni/bin, the plugin directory ctr searches
# first whatever it is told), bind-mounts the conflist directory on
# /etc/cni/net.d and brings `lo` up. Every process the script starts is in
# the pid namespace, so all of them (containerd, conmon, shims, containers)
# end with it.
cni_enter() {
	if [ "${PODNET_CNI_INSIDE:-}" != 1 ]; then
		[ "$(id -u)" = 0 ] || cni_skip_all "needs root (the clients make bridges and namespaces)"
		cni_need unshare util-linux
		cni_need ip iproute2
		cni_need jq jq
		cni_need timeout coreutils
		cni_check_plugin_dirs
		# Mounted over inside; made here it would be left on the host.
		[ -d /etc/cni/net.d ] || cni_skip_all "no /etc/cni/net.d to mount over (apt-get install podman makes it)"
		export CNI_OUTER_PID=$$
		local cg rc=0 before after limit=${CNI_TIMEOUT:-300}
		cg=$(cni_cgroup_name)
		before=$(cni_host_state)
		# On overrun, SIGKILL (to timeout's own process group: unshare and
		# the namespace's init) ends the pid namespace and all in it.
		PODNET_CNI_INSIDE=1 timeout --signal=KILL "$limit" \
			unshare --net --mount --pid --fork --mount-proc \
			--propagation private bash "$0" "$@" || rc=$?
		if [ $rc = 137 ]; then
			echo "not ok - $(basename "$0") finished within CNI_TIMEOUT=${limit}s (killed)"
		fi
		cni_remove_cgroups "$cg" || rc=1
		after=$(cni_host_state)
		if [ "$before" = "$after" ]; then
			echo "# the host's links, nf_tables tables and netns files are as before"
		else
			echo "not ok - the host is left as it was"
			diff <(echo "$before") <(echo "$after") | sed 's/^/#   /'
			rc=1
		fi
		exit $rc
	fi
	set -u
	mount -t tmpfs -o mode=0755 podnet-cni-run /run
	cni_stage
	mount -t tmpfs -o mode=0755 podnet-cni-varlib /var/lib
	mount -t tmpfs -o mode=1777 podnet-cni-tmp /tmp
	mount -t tmpfs -o mode=1777 podnet-cni-vartmp /var/tmp
	mount -t tmpfs -o mode=0755 podnet-cni-opt /opt
	mkdir -p /run/netns /var/lib/cni /opt/cni/bin "$CNI_CONF_DIR" "$CNI_DATADIR"
	mount --bind "$CNI_CONF_DIR" /etc/cni/net.d
	ip link set lo up
	export CNI_CGROUP
	CNI_CGROUP=$(cni_cgroup_name)
	trap cni_on_exit EXIT
}

# Scripts add their own teardown (stopping their containers, so that their
# cgroups empty) by defining cni_teardown.
cni_teardown() { :; }
cni_on_exit() {
	local rc=$?
	cni_teardown >/dev/null 2>&1 || true
	exit $rc
}

# --- conflists ----------------------------------------------------------

# The default plugin section: the reference bridge with host-local IPAM,
# dual-stack, as `podman network create --subnet 10.88.N.0/24 --subnet
# fd00:88::/64` writes it (the ips capability included; ipMasq off: there
# is no uplink), then portmap for the portMappings capability.
CNI_DEFAULT_PLUGIN_JSON='[
  {"type": "bridge", "bridge": "@BRIDGE@", "isGateway": true, "ipMasq": false,
   "hairpinMode": true, "capabilities": {"ips": true},
   "ipam": {"type": "host-local", "dataDir": "@DATADIR@",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            "ranges": [[{"subnet": "@SUBNET@", "gateway": "@GATEWAY@"}],
                       [{"subnet": "@SUBNET6@", "gateway": "@GATEWAY6@"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]'

# cni_write_conflist NAME CNIVERSION N [EXTRA_PLUGIN_JSON]: write
# $CNI_CONF_DIR/NAME.conflist for network NAME on 10.88.N.0/24 (gateway
# .1) and fd00:88::/64 (gateway ::1; every script's namespaces are its
# own, so all may share it), bridge cni-pn-N, with CNI_PLUGIN_JSON (or the default) as its plugins,
# EXTRA_PLUGIN_JSON (an object) appended. Prints the file's path.
cni_write_conflist() {
	local name=$1 version=$2 n=$3 extra=${4:-}
	local plugins=${CNI_PLUGIN_JSON:-$CNI_DEFAULT_PLUGIN_JSON}
	plugins=${plugins//@BRIDGE@/cni-pn-$n}
	plugins=${plugins//@SUBNET@/10.88.$n.0/24}
	plugins=${plugins//@GATEWAY@/10.88.$n.1}
	plugins=${plugins//@SUBNET6@/fd00:88::/64}
	plugins=${plugins//@GATEWAY6@/fd00:88::1}
	plugins=${plugins//@DATADIR@/$CNI_DATADIR}
	local file=$CNI_CONF_DIR/$name.conflist
	cni_fill_opt_cni_bin
	jq -n --arg name "$name" --arg v "$version" --argjson p "$plugins" \
		--argjson extra "${extra:-null}" '
		{cniVersion: $v, name: $name,
		 plugins: ((if ($p | type) == "array" then $p else [$p] end)
		           + (if $extra == null then [] else [$extra] end))}' >"$file"
	echo "$file"
}

# Link every plugin of CNI_PATH_LIST into /opt/cni/bin (a tmpfs), the first
# directory holding a name winning, for clients that search /opt/cni/bin
# before (or instead of) the directories they are given.
cni_fill_opt_cni_bin() {
	local dir f
	local IFS=:
	for dir in $CNI_PATH_LIST; do
		[ -d "$dir" ] || continue
		for f in "$dir"/*; do
			[ -x "$f" ] && [ ! -e "/opt/cni/bin/${f##*/}" ] && ln -s "$f" "/opt/cni/bin/${f##*/}"
		done
	done
	return 0
}

# The gateway (the bridge's address, the "host" side) of network N.
cni_gateway() { echo "10.88.$1.1"; }
# shellcheck disable=SC2034 # used by the scripts
CNI_GATEWAY6=fd00:88::1

# Whether the conflist NAME configures an IPv6 range (fd00:88::/64).
cni_has_v6() { grep -q 'fd00:88::' "$CNI_CONF_DIR/$1.conflist"; }

# The addresses leased on network $1, one per line, sorted.
cni_leases() {
	if [ -n "${CNI_LEASES_CMD:-}" ]; then
		CNI_NETWORK=$1 CNI_DATADIR=$CNI_DATADIR bash -c "$CNI_LEASES_CMD" | sort
		return
	fi
	local dir=$CNI_DATADIR/$1
	[ -d "$dir" ] || return 0
	find "$dir" -maxdepth 1 -type f ! -name lock ! -name 'last_reserved_ip.*' \
		-printf '%f\n' | sort
}

# The arguments, one a line, empty ones dropped, sorted: a lease list to
# compare with cni_leases.
cni_lines() { printf '%s\n' "$@" | grep -v '^$' | sort; }

# --- two containers, a and b -------------------------------------------

# For the scripts that run two servers, a and b, on network $NET (10.88.$N.0/24):
# the script defines addr_of NAME and addr6_of NAME (a container's IPv4 and
# global IPv6 address on the network) and fetch FROM HOST (what FROM is
# served from HOST:80), and sets V6 (1: the IPv6 checks run) and NO_V6
# (why they are skipped otherwise).

# cni_wait_fetch FROM HOST WANT: wait until FROM gets WANT from HOST (a
# server just started may not listen yet); the check after it says what was
# seen.
cni_wait_fetch() {
	for _ in $(seq 15); do
		[ "$(fetch "$1" "$2")" = "$3" ] && return 0
		sleep 0.2
	done
	return 1
}

# cni_check_pair_addresses: A, B, A6 and B6 set to a's and b's addresses,
# checked to be in the network's ranges and to be all it has leased.
cni_check_pair_addresses() {
	A=$(addr_of a) || true
	B=$(addr_of b) || true
	A6=$(addr6_of a) || true
	B6=$(addr6_of b) || true
	case $A in 10.88.$N.*) cni_ok "a has an address in 10.88.$N.0/24 ($A)" ;;
	*) cni_not_ok "a has an address in 10.88.$N.0/24" "10.88.$N.x" "$A" ;; esac
	case $B in 10.88.$N.*) cni_ok "b has an address in 10.88.$N.0/24 ($B)" ;;
	*) cni_not_ok "b has an address in 10.88.$N.0/24" "10.88.$N.x" "$B" ;; esac
	if [ "$V6" = 1 ]; then
		case $A6 in fd00:88::*) cni_ok "a has an address in fd00:88::/64 ($A6)" ;;
		*) cni_not_ok "a has an address in fd00:88::/64" "fd00:88::x" "$A6" ;; esac
	else
		skip "a has an address in fd00:88::/64" "$NO_V6"
	fi
	check "a and b are leased, nothing else" "$(cni_lines "$A" "$B" "$A6" "$B6")" "$(cni_leases "$NET")"
}

# cni_check_pair_reach: a and b reach each other's server by address, and
# b reaches a over IPv6 (after cni_check_pair_addresses).
cni_check_pair_reach() {
	cni_wait_fetch b "$A" a || true
	check "b reaches a by address" "a" "$(fetch b "$A")"
	check "a reaches b by address" "b" "$(fetch a "$B")"
	if [ "$V6" = 1 ]; then
		# A fresh IPv6 address is tentative until duplicate detection ends.
		cni_wait_fetch b "$A6" a || true
		check "b reaches a over IPv6" "a" "$(fetch b "$A6")"
	else
		skip "b reaches a over IPv6" "$NO_V6"
	fi
}

# --- root filesystems ---------------------------------------------------

# cni_busybox_rootfs DIR: a root filesystem of Debian's busybox-static:
# /bin/busybox with a symlink per applet, the directories a runtime mounts
# on, /etc/passwd and /etc/group, and /www for httpd.
cni_busybox_rootfs() {
	local dir=$1 applet
	local bb=/bin/busybox
	[ -x "$bb" ] || cni_skip_all "/bin/busybox not found (apt-get install busybox-static)"
	ldd "$bb" >/dev/null 2>&1 &&
		cni_skip_all "/bin/busybox is not static (apt-get install busybox-static)"
	mkdir -p "$dir"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,www,var/run}
	chmod 1777 "$dir/tmp"
	install -m 0755 "$bb" "$dir/bin/busybox"
	for applet in $("$bb" --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$dir/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
	: >"$dir/etc/hosts"
	: >"$dir/etc/resolv.conf"
	echo busybox >"$dir/etc/hostname"
}

# --- checks -------------------------------------------------------------

CNI_PASSED=0
CNI_FAILED=0
CNI_SKIPPED=0
CNI_N=0

cni_ok() {
	CNI_N=$((CNI_N + 1)) CNI_PASSED=$((CNI_PASSED + 1))
	echo "ok $CNI_N - $1"
}

# cni_not_ok CLAIM EXPECTED SEEN
cni_not_ok() {
	CNI_N=$((CNI_N + 1)) CNI_FAILED=$((CNI_FAILED + 1))
	echo "not ok $CNI_N - $1"
	printf '%s\n' "$2" | sed '1s/^/#   expected: /; 2,$s/^/#             /'
	printf '%s\n' "$3" | sed 's/^/#   seen:     /'
}

# check CLAIM EXPECTED SEEN: equal strings.
check() {
	if [ "$2" = "$3" ]; then cni_ok "$1"; else cni_not_ok "$1" "$2" "$3"; fi
}

# check_contains CLAIM NEEDLE HAYSTACK: the needle is a whole line of the
# haystack.
check_contains() {
	if printf '%s\n' "$3" | grep -qxF -- "$2"; then cni_ok "$1"; else
		cni_not_ok "$1" "a line \"$2\"" "$3"
	fi
}

# check_lacks CLAIM NEEDLE HAYSTACK: the needle is no line of the haystack.
check_lacks() {
	if printf '%s\n' "$3" | grep -qxF -- "$2"; then
		cni_not_ok "$1" "no line \"$2\"" "$3"
	else cni_ok "$1"; fi
}

# check_run CLAIM CMD...: the command exits 0 (its output is shown if not).
check_run() {
	local claim=$1 out rc=0
	shift
	out=$("$@" 2>&1) || rc=$?
	if [ $rc = 0 ]; then cni_ok "$claim"; else
		cni_not_ok "$claim" "exit 0 from: $*" "exit $rc: $out"
	fi
}

# check_fails CLAIM CMD...: the command exits nonzero.
check_fails() {
	local claim=$1 out rc=0
	shift
	out=$("$@" 2>&1) || rc=$?
	if [ $rc != 0 ]; then cni_ok "$claim"; else
		cni_not_ok "$claim" "a failure from: $*" "exit 0: $out"
	fi
}

# skip CLAIM REASON
skip() {
	CNI_N=$((CNI_N + 1)) CNI_SKIPPED=$((CNI_SKIPPED + 1))
	echo "ok $CNI_N - $1 # SKIP $2"
}

# Stop the script at a failed prerequisite step (nothing after it can run):
# report it as a failed check and finish.
cni_bail() {
	cni_not_ok "$1" "${2:-success}" "${3:-}"
	cni_finish
}

# retry N CMD...: run CMD up to N times, 0.2 s apart, until it succeeds
# (for waiting on a server to listen; never a timing claim).
retry() {
	local n=$1 i
	shift
	for ((i = 0; i < n; i++)); do
		"$@" && return 0
		sleep 0.2
	done
	"$@"
}

# Print the plan and the closing tally; exit 0 only if nothing failed.
cni_finish() {
	echo "1..$CNI_N"
	echo "$CNI_PASSED passed, $CNI_FAILED failed, $CNI_SKIPPED skipped"
	[ "$CNI_FAILED" = 0 ]
	exit $?
}

# --- recording what a client sends --------------------------------------

# cni_recorder_plugin: install $CNI_WORK/bin/podnet-cni-record, a plugin for
# the end of a chain that appends every call (verb, container, interface,
# CNI_ARGS and the config on stdin, runtimeConfig included) as one JSON line
# to the file named by its config's "log", and passes prevResult through.
# Prints the conflist object to append (with the capabilities given as a
# JSON object, e.g. '{"aliases": true}'). It shows which fields a client
# really sends, which a plugin under test must then accept.
cni_recorder_plugin() {
	local caps=${1:-'{}'}
	mkdir -p "$CNI_WORK/bin"
	cat >"$CNI_WORK/bin/podnet-cni-record" <<'PLUGIN'
#!/bin/sh
# Records one CNI call; passes the previous result through.
in=$(cat)
case "$CNI_COMMAND" in
VERSION)
	echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}'
	exit 0 ;;
esac
log=$(printf '%s' "$in" | jq -r '.log')
printf '%s' "$in" | jq -c --arg cmd "$CNI_COMMAND" --arg id "$CNI_CONTAINERID" \
	--arg ifname "$CNI_IFNAME" --arg args "${CNI_ARGS:-}" \
	'{command: $cmd, containerID: $id, ifname: $ifname, args: $args, config: .}' >>"$log"
if [ "$CNI_COMMAND" = ADD ]; then
	printf '%s' "$in" | jq '.prevResult + {cniVersion: .cniVersion}'
fi
PLUGIN
	chmod 0755 "$CNI_WORK/bin/podnet-cni-record"
	jq -nc --argjson caps "$caps" --arg log "$CNI_WORK/record.jsonl" \
		'{type: "podnet-cni-record", log: $log, capabilities: $caps}'
}

# The recorded calls (JSON lines) so far.
cni_recorded() { cat "$CNI_WORK/record.jsonl" 2>/dev/null; }
