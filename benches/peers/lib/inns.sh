#!/usr/bin/env bash
# inns.sh CMD N C - run by run.sh as PID 1 of fresh net+mount+pid namespaces (never the host's):
#   unshare --net --mount --pid --fork --mount-proc --propagation private -- lib/inns.sh CMD N C
# It mounts a private tmpfs on /run (so /run/netns, locks and state stay here), brings lo up,
# makes the bench bridge with the gateway address, then runs the peer command. Everything dies
# with this process. Needs the BENCH_* variables run.sh exports.
set -euo pipefail
cmd=$1 n=$2 c=$3
stat -L -c %i /proc/self/ns/pid >"$BENCH_TMP/pidns" # run.sh checks nothing is left in it
mount -t tmpfs -o mode=0755 podnetbench-run /run
mkdir -p /run/netns
ip link set lo up
ip link add "$BENCH_BRIDGE" type bridge
ip addr add "$BENCH_GW/${BENCH_SUBNET#*/}" dev "$BENCH_BRIDGE"
ip link set "$BENCH_BRIDGE" up
cd "$BENCH_TMP"
# stdout: the peer's one JSON line; the peer's chatter goes to stderr.
timeout --kill-after=5 "${BENCH_TIMEOUT:-900}" bash -c "$cmd \"\$@\"" peer "$n" "$c"
