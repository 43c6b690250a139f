# peer.sh - shared driver for the shell peers (sourced, not run):
#   . "$(dirname "$0")/lib/peer.sh"      # in benches/peers/NAME.sh
# A peer script defines create I and teardown I (I = 0..N-1, run with set -e),
# then calls: bench_main "$@"   (args: N [C]).  The protocol: docs/performance.md.

: "${BENCH_BRIDGE:=podnetbench0}" "${BENCH_SUBNET:=10.88.0.0/16}" "${BENCH_GW:=10.88.0.1}"
: "${BENCH_TMP:=$PWD}" "${BENCH_PEER:=$(basename "$0" .sh)}"
BENCH_PREFIX=${BENCH_SUBNET#*/}

# ip_of I: set $IP to the I-th address of the pool, in host-local's order (.2, .3, ...).
IFS=. read -r _a _b _c _d <<<"${BENCH_SUBNET%/*}"
BENCH_BASE=$((_a << 24 | _b << 16 | _c << 8 | _d))
ip_of() {
	local n=$((BENCH_BASE + 2 + $1))
	IP=$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))
}

# ms START_US END_US: print the difference in milliseconds (no fork).
ms() { printf '%d.%03d\n' $((($2 - $1) / 1000)) $((($2 - $1) % 1000)); }

# run_phase FN N C OUT: FN 0..N-1, C at a time (worker k takes I = k, k+C, ...);
# each call's milliseconds go to OUT, the phase's wall milliseconds to $PHASE_MS.
run_phase() {
	local fn=$1 n=$2 c=$3 out=$4 k t0 t1 pids=() rc=0
	t0=${EPOCHREALTIME/[.,]/}
	for ((k = 0; k < c; k++)); do
		(
			set -e
			for ((i = k; i < n; i += c)); do
				s=${EPOCHREALTIME/[.,]/}
				"$fn" "$i"
				e=${EPOCHREALTIME/[.,]/}
				ms "$s" "$e" >>"$out.$k"
			done
		) >&2 &
		pids+=($!)
	done
	for k in "${pids[@]}"; do wait "$k" || rc=1; done
	t1=${EPOCHREALTIME/[.,]/}
	cat "$out".* >"$out"
	rm -f "$out".*
	[ "$rc" = 0 ] || { echo "$BENCH_PEER: $fn failed" >&2; return 1; }
	PHASE_MS=$(ms "$t0" "$t1")
}

bench_main() {
	local n=${1:?usage: $0 N [C]} c=${2:-1} cw tw
	[ "$c" -gt "$n" ] && c=$n
	run_phase create "$n" "$c" "$BENCH_TMP/create.ms" || return 1
	cw=$PHASE_MS
	if [ -n "${BENCH_CHECK:-}" ]; then "$BENCH_CHECK" "$n" >&2 || return 1; fi
	run_phase teardown "$n" "$c" "$BENCH_TMP/teardown.ms" || return 1
	tw=$PHASE_MS
	printf '{"peer":"%s","n":%d,"c":%d,"create_ms":[%s],"teardown_ms":[%s],"create_wall_ms":%s,"teardown_wall_ms":%s}\n' \
		"$BENCH_PEER" "$n" "$c" "$(paste -sd, "$BENCH_TMP/create.ms")" \
		"$(paste -sd, "$BENCH_TMP/teardown.ms")" "$cw" "$tw"
}
