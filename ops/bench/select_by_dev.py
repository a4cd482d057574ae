#!/usr/bin/env python3
"""Hyper-parameter selection on the dev split, from `qsched ... --format json` result arrays.

Each input file holds the results of one or more settings (runs that differ in some
training or data field, e.g. `--set first_order.learning_rate=3e-4`). Per method × task,
the script groups shards by setting, averages the dev value of the task's primary metric
(the value at each shard's best dev evaluation, the one its test metrics are reported at)
over seeds, and picks the setting with the highest mean. Test values are printed for every
setting so the choice can be audited, but only dev values decide it.

  python3 ops/bench/select_by_dev.py [--field=train.learning_rate ...] RESULTS.json [MORE.json ...]

Prints a Markdown table (the chosen setting marked) and, last, one line per method × task
naming the chosen setting as `--set` flags: the fields that differ between its settings,
plus every `--field` named (so a choice among one setting still names its value). Standard library only; a failed shard is
listed, never averaged away.
"""

import json
import statistics
import sys
from collections import defaultdict

from quality_table import summary  # mean ± sample std, the same cells as the quality table

# Sections of the shard whose fields make up a setting ("train.learning_rate", ...).
SETTING_SECTIONS = ("train", "data", "arch")
# `qsched --set` names the train section after the method's kind.
FIRST_ORDER = {"qwen3", "rev-qwen3", "ft-opt"}


def flat_setting(shard):
    out = {}
    for section in SETTING_SECTIONS:
        for key, value in (shard.get(section) or {}).items():
            out[f"{section}.{key}"] = value
    return out


def set_flag(model, field, value):
    section, key = field.split(".", 1)
    if section == "train":
        section = "first_order" if model in FIRST_ORDER else "zeroth_order"
    return f"--set {section}.{key}={value}"


def main(args):
    always = [a.split("=", 1)[1] for a in args if a.startswith("--field=")]
    paths = [a for a in args if not a.startswith("--field=")]
    if not paths:
        sys.exit(__doc__)
    rows = []
    for path in paths:
        with open(path) as f:
            rows.extend(json.load(f))
    groups = defaultdict(lambda: defaultdict(list))
    settings = {}
    failed = []
    for r in rows:
        if r.get("status") != "succeeded":
            failed.append(r)
            continue
        setting = flat_setting(r["config"]["shard"])
        key = json.dumps(setting, sort_keys=True)
        settings[key] = setting
        groups[(r["task"], r["model"])][key].append(r)

    print("| task | method | setting | seeds | dev mean ± std | test mean ± std | test accuracy mean ± std | |")
    print("|---|---|---|---|---|---|---|---|")
    choices = []
    for (task, model), by_setting in sorted(groups.items()):
        # Label each setting by the fields that differ between this method × task's settings.
        fields = sorted({f for k in by_setting for f in settings[k]})
        varying = [f for f in fields if len({json.dumps(settings[k].get(f)) for k in by_setting}) > 1]
        scored = []
        for key, shards in by_setting.items():
            primary = shards[0]["primary_metric"]
            dev = [s["dev_metrics"][primary] for s in shards]
            scored.append((statistics.fmean(dev), key, shards, primary, dev))
        best_key = max(scored, key=lambda t: t[0])[1]
        for _, key, shards, primary, dev in sorted(scored, key=lambda t: t[1]):
            label = ", ".join(f"{f.split('.', 1)[1]}={settings[key].get(f)}" for f in varying) or "(one setting)"
            test = [s["metrics"][primary] for s in shards]
            acc = [s["metrics"]["accuracy"] for s in shards if "accuracy" in s["metrics"]]
            seeds = ",".join(str(s["seed"]) for s in sorted(shards, key=lambda s: s["seed"]))
            mark = "**chosen**" if key == best_key else ""
            acc_cell = summary(acc) if primary != "accuracy" else ""
            print(f"| {task} | {model} | {label} | {seeds} | {primary} {summary(dev)} | {summary(test)} | {acc_cell} | {mark} |")
        named = varying + [f for f in always if f not in varying and f in settings[best_key]]
        flags = " ".join(set_flag(model, f, settings[best_key].get(f)) for f in named)
        choices.append(f"{task} {model}: {flags or '(one setting)'}")
    print()
    for line in choices:
        print(line)
    for r in failed:
        print(f"\nFAILED: {r['model']} {r['task']} seed {r['seed']}: {r.get('error', r.get('status'))}")


if __name__ == "__main__":
    main(sys.argv[1:])
