#!/usr/bin/env python3
"""Turns `qsched ... --format json` result arrays into the Markdown quality table of
BENCHMARKS.md §4: per method × task the test value of the task's primary metric (and of
accuracy where that is not the primary one) as mean ± sample std over seeds, with n.

  python3 ops/bench/quality_table.py RESULTS.json [MORE.json ...]

Standard library only. A failed shard is listed, never averaged away.
"""

import json
import statistics
import sys
from collections import defaultdict

METHODS = ["qwen3", "rev-qwen3", "ft-opt", "mezo-opt", "dizo-opt"]


def summary(values):
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def main(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            rows.extend(json.load(f))
    groups = defaultdict(list)
    failed = []
    for r in rows:
        if r.get("status") != "succeeded":
            failed.append(r)
            continue
        groups[(r["task"], r["model"])].append(r)
    tasks = sorted({t for t, _ in groups}, key=lambda t: ["sst2", "cola", "mrpc", "rte", "stsb"].index(t)
                   if t in ["sst2", "cola", "mrpc", "rte", "stsb"] else 99)
    print("| task | method | metric | test mean ± std | accuracy mean ± std | n | wall s/shard |")
    print("|---|---|---|---|---|---|---|")
    for task in tasks:
        for model in METHODS:
            shards = groups.get((task, model))
            if not shards:
                continue
            primary = shards[0].get("primary_metric")
            vals = [s["metrics"][primary] for s in shards if primary in s["metrics"]]
            acc = [s["metrics"]["accuracy"] for s in shards if "accuracy" in s["metrics"]]
            wall = statistics.fmean(s["wall_seconds"] for s in shards)
            acc_cell = summary(acc) if primary != "accuracy" and acc else ""
            print(f"| {task} | {model} | {primary} | {summary(vals)} | {acc_cell} | {len(shards)} | {wall:.0f} |")
    for r in failed:
        print(f"\nFAILED: {r['model']} {r['task']} seed {r['seed']}: {r.get('error', r.get('status'))}")


if __name__ == "__main__":
    main(sys.argv[1:])
