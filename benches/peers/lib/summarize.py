#!/usr/bin/env python3
"""summarize.py [-b BASELINE] [--markdown | --rounds] ROUNDS.jsonl [OUT.jsonl] - run.sh calls it after
the rounds; by hand, e.g. for the tables of docs/performance.md:

    python3 benches/peers/lib/summarize.py --markdown /tmp/root.jsonl.rounds /dev/null

One summary per (peer, n, c, mode): a table on stdout, JSON lines to OUT (or after the table).
Per-sandbox times are pooled over rounds (median; p95 by nearest rank); the create and the
teardown wall (a phase's wall time in one round, the throughput when C > 1) and wall (their
sum) are medians over rounds. A peer's failed rounds are counted and its
first error kept; its figures are those of the rounds that passed. "create x" and "teardown x" are the peer's
create and teardown medians divided by those of BASELINE (default floor-fork) with the same
n, c and mode, i.e. measured in the same run. --markdown prints the table in Markdown, with
the median over the peer's rounds of the 1-minute load average when each started. --rounds
prints one line per round instead: its load, the peer's create median and its ratio to the
baseline's create median in the same round (run.sh interleaves the peers' rounds). settle = podnet's untimed Network::remove()
after the removals (median over rounds), when the peer reports it."""
import json, math, os, platform, statistics, sys

args = sys.argv[1:]
baseline, markdown, per_round = "floor-fork", False, False
while args and args[0] in ("-b", "--markdown", "--rounds"):
    if args[0] == "--markdown":
        markdown, args = True, args[1:]
    elif args[0] == "--rounds":
        per_round, args = True, args[1:]
    elif len(args) >= 2:
        baseline, args = args[1], args[2:]
    else:
        break
if not 1 <= len(args) <= 2:
    sys.exit(__doc__)


def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]  # nearest rank


rounds = [json.loads(l) for l in open(args[0]) if l.strip()]
groups = {}
for r in rounds:
    groups.setdefault((r["peer"], r["n"], r.get("c", 1), r.get("mode", "root")), []).append(r)

rows = []
for (peer, n, c, mode), rs in groups.items():
    ok = [r for r in rs if "error" not in r]
    row = {"peer": peer, "n": n, "c": c, "mode": mode, "rounds": len(ok),
           "kernel": platform.release(), "nproc": os.cpu_count()}
    if not ok:
        row["error"] = rs[0]["error"]
    else:
        cr = [x for r in ok for x in r["create_ms"]]
        td = [x for r in ok for x in r["teardown_ms"]]
        cwalls = [r.get("create_wall_ms", sum(r["create_ms"])) for r in ok]
        twalls = [r.get("teardown_wall_ms", sum(r["teardown_ms"])) for r in ok]
        walls = [a + b for a, b in zip(cwalls, twalls)]
        row.update(create_ms_median=round(statistics.median(cr), 3), create_ms_p95=pct(cr, 95),
                   teardown_ms_median=round(statistics.median(td), 3), teardown_ms_p95=pct(td, 95),
                   wall_ms_median=round(statistics.median(walls), 3),
                   create_wall_ms_median=round(statistics.median(cwalls), 3),
                   teardown_wall_ms_median=round(statistics.median(twalls), 3))
        loads = [r["load1"] for r in ok if "load1" in r]
        if loads:
            row["load1_median"] = round(statistics.median(loads), 2)
        if len(ok) < len(rs):
            row["failed_rounds"] = len(rs) - len(ok)
            row["error"] = next(r["error"] for r in rs if "error" in r)
        settles = [r["settle_ms"] for r in ok if "settle_ms" in r]
        if settles:
            row["settle_ms_median"] = round(statistics.median(settles), 3)
    rows.append(row)

base = {(r["n"], r["c"], r["mode"]): r for r in rows if r["peer"] == baseline and r["rounds"]}
for r in rows:
    b = base.get((r["n"], r["c"], r["mode"]))
    if b and r["rounds"]:
        r["baseline"] = baseline
        r["create_ratio"] = round(r["create_ms_median"] / b["create_ms_median"], 2)
        r["teardown_ratio"] = round(r["teardown_ms_median"] / b["teardown_ms_median"], 3)


def md_table():
    print(f"| peer | mode | N | C | create med | p95 | teardown med | p95 | create x {baseline} "
          f"| teardown x {baseline} | rounds | load |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        head = f"| {r['peer']} | {r['mode']} | {r['n']} | {r['c']} "
        if not r["rounds"]:
            print(head + "| failed | | | | | | 0 | |")
            continue
        cx = f"{r['create_ratio']:.2f}" if "create_ratio" in r else "-"
        tx = f"{r['teardown_ratio']:.3f}" if "teardown_ratio" in r else "-"
        print(head + f"| {r['create_ms_median']:.2f} | {r['create_ms_p95']:.2f} | {r['teardown_ms_median']:.2f} "
              f"| {r['teardown_ms_p95']:.2f} | {cx} | {tx} | {r['rounds']} | {r.get('load1_median', '-')} |")


def text_table():
    print(f"{'peer':<12}{'mode':<9}{'N':>5}{'C':>3}{'create med':>11}{'p95':>8}{'teardown med':>13}{'p95':>8}"
          f"{'c.wall':>9}{'t.wall':>9}{'create x':>9}{'teardown x':>11}{'settle':>8}   (ms; rounds; x = / {baseline})")
    for r in rows:
        head = f"{r['peer']:<12}{r['mode']:<9}{r['n']:>5}{r['c']:>3}"
        if not r["rounds"]:
            print(f"{head}  FAILED: {r['error'][:90]}")
            continue
        cx = f"{r['create_ratio']:.2f}" if "create_ratio" in r else "-"
        tx = f"{r['teardown_ratio']:.3f}" if "teardown_ratio" in r else "-"
        st = f"{r['settle_ms_median']:.1f}" if "settle_ms_median" in r else "-"
        print(f"{head}{r['create_ms_median']:>11.3f}{r['create_ms_p95']:>8.3f}{r['teardown_ms_median']:>13.3f}"
              f"{r['teardown_ms_p95']:>8.3f}{r['create_wall_ms_median']:>9.1f}{r['teardown_wall_ms_median']:>9.1f}{cx:>9}{tx:>11}{st:>8}   ({r['rounds']}"
              + (f", {r['failed_rounds']} FAILED: {r['error'][:60]}" if "failed_rounds" in r else "") + ")")


def round_table():
    base = {(r["n"], r.get("c", 1), r.get("mode", "root"), r.get("round")): r for r in rounds
            if r["peer"] == baseline and "error" not in r}
    print(f"{'peer':<12}{'mode':<9}{'N':>5}{'C':>3}{'round':>6}{'load':>6}{'create med':>11}{'x ' + baseline:>16}")
    for r in rounds:
        if "error" in r:
            continue
        med = statistics.median(r["create_ms"])
        b = base.get((r["n"], r.get("c", 1), r.get("mode", "root"), r.get("round")))
        x = f"{med / statistics.median(b['create_ms']):.2f}" if b else "-"
        print(f"{r['peer']:<12}{r.get('mode', 'root'):<9}{r['n']:>5}{r.get('c', 1):>3}{r.get('round', '-'):>6}"
              f"{r.get('load1', '-'):>6}{med:>11.3f}{x:>16}")


round_table() if per_round else md_table() if markdown else text_table()

lines = "".join(json.dumps(r) + "\n" for r in rows)
if len(args) > 1:
    open(args[1], "w").write(lines)
else:
    sys.stdout.write(lines)
