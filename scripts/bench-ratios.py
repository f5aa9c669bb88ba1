#!/usr/bin/env python3
"""Prints criterion results as ratios against the anchor measured in the same run.

Usage: scripts/bench-ratios.py GROUP... --anchor NAME
Reads target/criterion/<group>/<contender>/<param>/new/estimates.json (mean time per op)
and prints, per group and parameter, each contender's ns/op and anchor_time / contender_time
(above 1.0 means faster than the anchor).
"""
import json
import pathlib
import sys

args = sys.argv[1:]
anchor = "raw_moka"
if "--anchor" in args:
    i = args.index("--anchor")
    anchor = args[i + 1]
    del args[i : i + 2]
root = pathlib.Path("target/criterion")
print("| workload | threads | contender | ns/op | ratio vs %s |" % anchor)
print("|---|---|---|---|---|")
for group in args:
    gdir = root / group
    if not gdir.is_dir():
        sys.exit(f"no results for {group}; run the bench first")
    times = {}
    for est in gdir.glob("*/*/new/estimates.json"):
        contender, param = est.parent.parent.parent.name, est.parent.parent.name
        times[(param, contender)] = json.loads(est.read_text())["mean"]["point_estimate"]
    for param in sorted({p for p, _ in times}):
        base = times.get((param, anchor))
        for (p, contender), t in sorted(times.items()):
            if p != param:
                continue
            ratio = f"{base / t:.2f}x" if base else "n/a"
            print(f"| {group} | {param} | {contender} | {t:.0f} | {ratio} |")
