#!/usr/bin/env bash
# check.sh N - a peer calls this ($BENCH_CHECK N, set by run.sh) after its N creates, untimed:
#   "$BENCH_CHECK" 50
# The bridge must have N ports, all with carrier (peer end up), and the first and the last
# pool address must answer a ping from the bridge.
set -euo pipefail
n=$1 br=${BENCH_BRIDGE:-podnetbench0}
ports=$(ip -br link show master "$br" | wc -l)
down=$(ip -br link show master "$br" | grep -vc LOWER_UP || true)
[ "$ports" = "$n" ] && [ "$down" = 0 ] || { echo "check: $ports ports on $br, $down without carrier, want $n" >&2; exit 1; }
IFS=. read -r a b c d <<<"${BENCH_SUBNET%/*}"
for i in 0 $((n - 1)); do
	x=$(((a << 24 | b << 16 | c << 8 | d) + 2 + i))
	ip=$((x >> 24 & 255)).$((x >> 16 & 255)).$((x >> 8 & 255)).$((x & 255))
	ping -q -c1 -W2 "$ip" >/dev/null || { echo "check: $ip does not answer" >&2; exit 1; }
done
