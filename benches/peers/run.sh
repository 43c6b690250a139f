#!/usr/bin/env bash
# run.sh - time pod sandbox create/teardown of podnet and its peers, each round in fresh
# net+mount+pid namespaces (never the host's network). As root, from the repository:
#
#   benches/peers/run.sh [-n N[,N...]] [-r ROUNDS] [-c C] [-b BASELINE] [-o FILE] [-t SECS]
#                        [-s SECS] [--nice NICE] [--rootless] [--peer NAME=CMD]... [PEER...]
#
#   benches/peers/run.sh -n 1,50,200 -r 3 floor-fork podnet          # podnet beside its floor
#   benches/peers/run.sh --rootless -n 50 floor-fork podnet          # as nobody, in a user ns
#   benches/peers/run.sh -n 5 -r 1 floor-fork podnet                 # CI smoke
#
# Peers: floor, floor-fork, floor-exec (floor.c), ip, cni, netavark (the *.sh here), podnet
# (examples/bench.rs, built here with cargo unless $PODNET_BENCH_BIN names a built one) and
# podnet-run (the same with its store on the round's private /run). Default: floor-fork podnet.
# The summary prints medians and each peer's ratio to BASELINE (default floor-fork) measured
# in the same run. Exit 0, or 1 if a round failed, 3 if the host's state changed (then it
# stops at once). The protocol, the safety rules and the figures: docs/performance.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ns_list=50 rounds=3 conc=1 out= timeout=900 settle=1 rootless=false baseline=floor-fork nice=
declare -A cmd_of=()
peers=()
while [ $# -gt 0 ]; do
	case $1 in
	-n) ns_list=$2; shift 2 ;;
	-r) rounds=$2; shift 2 ;;
	-c) conc=$2; shift 2 ;;
	-b) baseline=$2; shift 2 ;;
	-o) out=$(realpath -m "$2"); shift 2 ;;
	-t) timeout=$2; shift 2 ;;
	-s) settle=$2; shift 2 ;;
	--nice) nice=$2; shift 2 ;;
	--rootless) rootless=true; shift ;;
	--peer) cmd_of[${2%%=*}]=${2#*=}; peers+=("${2%%=*}"); shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/{/^set/!p}' "$0"; exit 0 ;;
	-*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
	*) peers+=("$1"); shift ;;
	esac
done
[ ${#peers[@]} -gt 0 ] || peers=(floor-fork podnet)
declare -A seen=()
uniq=()
for peer in "${peers[@]}"; do [ -n "${seen[$peer]:-}" ] || uniq+=("$peer"); seen[$peer]=1; done
peers=("${uniq[@]}") # a name given by --peer and again as PEER runs once
[ "$(id -u)" = 0 ] || rootless=true
for tool in gcc jq python3 ip unshare setpriv timeout; do
	command -v "$tool" >/dev/null || { echo "run.sh: needs $tool (see docs/performance.md)" >&2; exit 2; }
done

# Everything a round runs is copied to $work (mode 755), so that a rootless round, which runs
# as nobody, can read it wherever the repository is cloned.
work=$(mktemp -d /tmp/podnetbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir "$work/bin"
cp -r "$here" "$work/h"
chmod -R a+rX "$work/h"
gcc -O2 -Wall -pthread -o "$work/bin/floor" "$here/floor.c"
gcc -O2 -Wall -o "$work/bin/pause" "$here/pause.c"

# The podnet peer: examples/bench.rs, built before the first round (never timed).
need_podnet=false
for peer in "${peers[@]}"; do
	[[ $peer == podnet || $peer == podnet-run ]] && [ -z "${cmd_of[$peer]:-}" ] && need_podnet=true
done
if $need_podnet; then
	if [ -n "${PODNET_BENCH_BIN:-}" ]; then
		bin=$PODNET_BENCH_BIN
	else
		echo "run.sh: cargo build --release --example bench" >&2
		bin=$(cd "$repo" && "${CARGO:-cargo}" build --release --example bench \
			--message-format=json-render-diagnostics |
			jq -r 'select(.reason == "compiler-artifact" and .target.name == "bench"
				and (.target.kind | index("example"))) | .executable' | tail -n1)
	fi
	[ -x "$bin" ] || { echo "run.sh: no podnet bench binary (${bin:-none})" >&2; exit 2; }
	install -m 755 "$bin" "$work/bin/podnet"
fi

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export BENCH_BRIDGE=podnetbench0 BENCH_SUBNET=10.88.0.0/16 BENCH_GW=10.88.0.1
export BENCH_CHECK=$work/h/lib/check.sh BENCH_PAUSE=$work/bin/pause BENCH_TIMEOUT=$timeout

resolve() { # NAME -> command line
	local name=$1
	if [ -n "${cmd_of[$name]:-}" ]; then echo "${cmd_of[$name]}"
	elif [ "$name" = floor ]; then echo "$work/bin/floor"
	elif [[ $name == floor-* ]]; then echo "$work/bin/floor --holder ${name#floor-}"
	elif [ "$name" = podnet ]; then echo "$work/bin/podnet"
	elif [ "$name" = podnet-run ]; then echo "env BENCH_STATE_DIR=/run/podnet-bench $work/bin/podnet"
	elif [ -x "$work/h/$name.sh" ]; then echo "$work/h/$name.sh"
	else echo "run.sh: no peer $name" >&2; return 1; fi
}
for peer in "${peers[@]}"; do resolve "$peer" >/dev/null; done

# The namespaces a round runs in: net + mount + pid (PID 1 = lib/inns.sh; when it exits the
# kernel kills whatever the peer left). Rootless: a user namespace too, entered as nobody.
wrap=(unshare --net --mount --pid --fork --mount-proc --propagation private)
if $rootless; then
	wrap=(unshare --user --map-root-user --net --mount --pid --fork --mount-proc --propagation private)
	[ "$(id -u)" = 0 ] && wrap=(setpriv --reuid=65534 --regid=65534 --clear-groups "${wrap[@]}")
fi
# --nice -20 (as root): the rounds' processes outweigh other work on the machine (a build),
# so that a 1 ms create is not a wait for a CPU. The kernel's own threads are not affected.
[ -z "$nice" ] || wrap=(nice -n "$nice" "${wrap[@]}")
mode=$($rootless && echo rootless || echo root)

# Guards: the host's links and /run/netns must be the same after every round as before the
# first, and no process may be left in the round's PID namespace (inns.sh records its inode).
host_state() {
	ip -br link | awk '{print $1}' | sort
	{ ls -A /run/netns 2>/dev/null || true; } | sed 's/^/netns:/'
}
host_state >"$work/host.before"
check_host() {
	local ino p left=
	host_state >"$work/host.after"
	ino=$(cat "$BENCH_TMP/pidns" 2>/dev/null || true)
	for p in /proc/[0-9]*; do
		[ -n "$ino" ] && [ "$(stat -L -c %i "$p/ns/pid" 2>/dev/null)" = "$ino" ] && left="$left ${p#/proc/}"
	done
	if ! diff -u "$work/host.before" "$work/host.after" >&2 || [ -n "$left" ]; then
		echo "run.sh: HOST STATE CHANGED after $1 (links, /run/netns; processes left:${left:- none}) - stopping" >&2
		exit 3
	fi
}

echo "run.sh: $mode, n=$ns_list, c=$conc, $rounds rounds${nice:+, nice $nice}; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Rounds are interleaved: round r of every peer, then round r+1, so that drift in the
# machine's load (a 2-CPU VM where others compile) hits each peer and the baseline alike.
raw=$work/rounds.jsonl
: >"$raw"
declare -A failed=()
for n in ${ns_list//,/ }; do
	for ((r = 1; r <= rounds; r++)); do
		for peer in "${peers[@]}"; do
			[ -z "${failed[$peer.$n]:-}" ] || continue
			cmd=$(resolve "$peer")
			export BENCH_PEER=$peer BENCH_TMP=$work/$peer.$n.$r
			mkdir "$BENCH_TMP"
			$rootless && [ "$(id -u)" = 0 ] && chown 65534:65534 "$BENCH_TMP"
			load=$(cut -d' ' -f1 /proc/loadavg)
			printf '%-12s n=%-5s c=%-3s round %d/%d (%s, load %s) ... ' "$peer" "$n" "$conc" "$r" "$rounds" "$mode" "$load" >&2
			if "${wrap[@]}" -- "$work/h/lib/inns.sh" "$cmd" "$n" "$conc" >"$BENCH_TMP/out" 2>"$BENCH_TMP/err" &&
				line=$(tail -n1 "$BENCH_TMP/out") && jq -e '.create_ms and .teardown_ms' <<<"$line" >/dev/null; then
				jq -c --arg p "$peer" --argjson n "$n" --argjson c "$conc" --arg mode "$mode" \
					--argjson r "$r" --argjson load "$load" \
					'{peer: $p, n: $n, c: $c} + . + {mode: $mode, round: $r, load1: $load}' <<<"$line" >>"$raw"
				echo ok >&2
			else
				rc=$?
				echo "FAILED (exit $rc)" >&2
				sed 's/^/    | /' "$BENCH_TMP/err" | tail -n 15 >&2
				jq -nc --arg p "$peer" --argjson n "$n" --argjson c "$conc" --arg mode "$mode" \
					--argjson r "$r" --arg e "exit $rc: $(tail -n 3 "$BENCH_TMP/err" | tr '\n' ' ')" \
					'{peer: $p, n: $n, c: $c, mode: $mode, round: $r, error: $e}' >>"$raw"
				failed[$peer.$n]=1 # no more rounds of it at this N
			fi
			check_host "$peer n=$n round $r"
			rm -rf "$BENCH_TMP"
			sleep "$settle" # the kernel frees the round's namespaces asynchronously
		done
	done
done
echo "run.sh: done; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 "$here/lib/summarize.py" -b "$baseline" "$raw" ${out:+"$out"}
[ -z "$out" ] || cp "$raw" "$out.rounds"
# Exit 1 if a round failed (its error is in the summary), so a smoke run can gate CI.
[ ${#failed[@]} = 0 ] || { echo "run.sh: failed: ${!failed[*]}" >&2; exit 1; }
