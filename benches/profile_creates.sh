#!/bin/sh
# Profile the create phase of a bench peer (the protocol of
# benches/peers/run.sh, see docs/performance.md) system-wide, in network,
# mount and PID namespaces of its own, as root:
#
#   benches/profile_creates.sh OUT.data CMD N C        # perf record -a -g
#   PERF_EVENTS=sched:sched_switch benches/profile_creates.sh OUT.data CMD N C
#
# e.g. `benches/profile_creates.sh /tmp/podnet.data target/release/examples/bench 300 2`
# or `... /tmp/floor.data /tmp/floor --holder fork 300 2` (the C floor, built
# with `gcc -O2 -pthread -o /tmp/floor benches/peers/floor.c`). perf runs from before the
# peer starts until its $BENCH_CHECK, i.e. the end of its creates; then
# `perf report -i OUT.data --no-children --sort comm -g none` shows how
# much of the time each CPU was idle (swapper) and where the rest went.
# Needs perf (Debian: linux-perf) and iproute2. The bridge and everything
# else live in the namespaces, which end with the script.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OUT.data CMD [ARGS...]" >&2; exit 2; }
out=$(realpath -m "$1"); shift
cmd=$(command -v "$1" || true); [ -n "$cmd" ] || cmd=$1
case $cmd in /*) ;; *) cmd=$(realpath "$cmd") ;; esac
shift
exec unshare --net --mount --pid --fork --mount-proc --propagation private \
    sh -eu -c '
    out=$1; shift
    mount -t tmpfs -o mode=0755 profile-run /run
    mkdir -p /run/netns /run/profile/tmp
    ip link set lo up
    ip link add podnetbench0 type bridge
    ip addr add 10.88.0.1/16 dev podnetbench0
    ip link set podnetbench0 up
    export BENCH_BRIDGE=podnetbench0 BENCH_SUBNET=10.88.0.0/16 BENCH_GW=10.88.0.1 \
        BENCH_TMP=/run/profile/tmp BENCH_STATE_DIR=/run/podnet-profile
    if [ -n "${PERF_EVENTS:-}" ]; then events="-e $PERF_EVENTS"; else events=""; fi
    perf record -a -g $events -o "$out" -- sleep 600 2>/run/profile/perf.log &
    perf=$!
    sleep 1
    printf "#!/bin/sh\nkill -INT %s\n" "$perf" > /run/profile/stop
    chmod +x /run/profile/stop
    cd /run/profile/tmp
    BENCH_CHECK=/run/profile/stop "$@" > /run/profile/out.json
    wait "$perf" || true
    tail -n 1 /run/profile/out.json
' sh "$out" "$cmd" "$@"
