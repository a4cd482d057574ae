#!/usr/bin/env python3
"""Turns the JSON lines of gpu_figures.sh into Markdown tables for BENCHMARKS.md: each
of our measurements next to the peer measured in the same run, with the ratio.

  python3 ops/bench/summarize.py OUT_DIR        (reads qwen3_depth.jsonl, zo_opt.jsonl)
  python3 ops/bench/summarize.py --ckpt-vs-rev OUT_DIR   (reads ckpt_vs_rev.jsonl)

Standard library only. Prints nothing it did not read: a missing peer shows as "-".
"""

import json
import os
import sys

GIB = 1024**3


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def gib(x):
    return "-" if x is None else f"{x / GIB:.2f}"


def sec(x):
    return "-" if x is None else f"{x * 1000:.1f}"


def ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"


def qwen_tables(records):
    meas = [r for r in records if r.get("record") == "measurement"]
    errors = [r for r in records if r.get("record") == "error"]
    out = []
    for head, prec in sorted({(r["head"], r["precision"]) for r in meas}):
        rows = [r for r in meas if r["head"] == head and r["precision"] == prec]
        dev = rows[0].get("gpu_name") or rows[0]["device"]
        b, t = rows[0]["batch"], rows[0]["seq"]
        out.append(f"\n### Qwen3 depth sweep — head {head}, {prec}, batch {b} x seq {t}, {dev}\n")
        out.append("| depth | model | static GiB | peak GiB | activation GiB | step ms | tokens/s | HF step ms | HF activation GiB | step vs HF | activation vs HF |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        hf = {r["depth"]: r for r in rows if r["impl"] == "hf-transformers"}
        for r in sorted((r for r in rows if r["impl"] == "qsched-tch"), key=lambda r: (r["model"], r["depth"])):
            p = hf.get(r["depth"], {})
            out.append(
                f"| {r['depth']} | {r['model']} | {gib(r['static_memory_bytes'])} | {gib(r['peak_memory_bytes'])} | "
                f"{gib(r['activation_bytes'])} | {sec(r['step_seconds'])} | {r['tokens_per_second']:.0f} | "
                f"{sec(p.get('step_seconds'))} | {gib(p.get('activation_bytes'))} | "
                f"{ratio(r['step_seconds'], p.get('step_seconds'))} | {ratio(r['activation_bytes'], p.get('activation_bytes'))} |"
            )
        for r in sorted((r for r in rows if r["impl"] == "hf-transformers" and not any(
                q["impl"] == "qsched-tch" and q["depth"] == r["depth"] for q in rows)), key=lambda r: r["depth"]):
            out.append(f"| {r['depth']} | HF qwen3 only | {gib(r['static_memory_bytes'])} | {gib(r['peak_memory_bytes'])} | "
                       f"{gib(r['activation_bytes'])} | - | - | {sec(r['step_seconds'])} | {gib(r['activation_bytes'])} | - | - |")
        sums = [s for s in records if s.get("record") == "summary" and s["head"] == head and s["precision"] == prec]
        for s in sums:
            out.append(f"\n{s['impl']} {s['model']}: activation slope {s['activation_slope_bytes_per_layer'] / 2**20:.1f} MiB/layer "
                       f"(intercept {s['activation_intercept_bytes'] / GIB:.2f} GiB) over depths {s['depths']}")
    for e in errors:
        out.append(f"\nERROR {e.get('impl')} {e.get('model')} depth {e.get('depth')} {e.get('head')} {e.get('precision')}: "
                   f"{'out of memory' if e.get('out_of_memory') else e.get('error', '')[:200]}")
    return out


def zo_tables(records):
    meas = [r for r in records if r.get("record") == "measurement"]
    errors = [r for r in records if r.get("record") == "error"]
    out = []
    for weights, prec in sorted({(r["weights"], r["precision"]) for r in meas}):
        rows = [r for r in meas if r["weights"] == weights and r["precision"] == prec]
        dev = rows[0].get("gpu_name") or rows[0]["device"]
        r0 = rows[0]
        out.append(f"\n### OPT zeroth-order — weights {weights}, {prec}, {r0['batch']} examples x {r0['candidates']} "
                   f"candidates x {r0['seq']} tokens, {dev}\n")
        out.append("| method | impl | static GiB | peak GiB | peak / inference | step ms | step / inference | peer peak GiB | peer step ms | peak vs peer | step vs peer |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        peer = {r["method"]: r for r in rows if r["impl"] == "pytorch"}
        order = ["inference", "mezo", "dizo", "ft"]
        for r in sorted((r for r in rows if r["impl"] == "qsched-tch"), key=lambda r: order.index(r["method"])):
            p = peer.get(r["method"], {})
            out.append(
                f"| {r['method']} | qsched | {gib(r['static_memory_bytes'])} | {gib(r['peak_memory_bytes'])} | "
                f"{ratio(r.get('peak_ratio_to_inference'), 1) if r['method'] != 'inference' else '1.00'} | "
                f"{sec(r['step_seconds'])} | {ratio(r.get('step_ratio_to_inference'), 1) if r['method'] != 'inference' else '1.00'} | "
                f"{gib(p.get('peak_memory_bytes'))} | {sec(p.get('step_seconds'))} | "
                f"{ratio(r['peak_memory_bytes'], p.get('peak_memory_bytes'))} | {ratio(r['step_seconds'], p.get('step_seconds'))} |"
            )
            if r["method"] == "dizo":
                out.append(f"| (dizo: MeZO step {sec(r.get('mezo_step_seconds'))} ms + projection round "
                           f"{sec(r.get('projection_round_seconds'))} ms / {r.get('dizo_interval')}) | | | | | | | | | | |")
        for m, p in peer.items():
            if not any(r["impl"] == "qsched-tch" and r["method"] == m for r in rows):
                out.append(f"| {m} | pytorch only | {gib(p['static_memory_bytes'])} | {gib(p['peak_memory_bytes'])} | | "
                           f"{sec(p['step_seconds'])} | | | | | |")
    for e in errors:
        out.append(f"\nERROR {e.get('impl')} {e.get('method')} {e.get('weights')} {e.get('precision')}: "
                   f"{'out of memory' if e.get('out_of_memory') else e.get('error', '')[:200]}")
    return out


def ckpt_vs_rev(records):
    """ckpt_vs_rev.sh: per (batch, seq) one row per depth with every model's peak split and
    step time, then the issue's done-when ratios (rev-qwen3 against qwen3-ckpt and HF
    checkpointed at depth >= 8; step time against qwen3-ckpt and qwen3) and the slopes."""
    meas = [r for r in records if r.get("record") == "measurement"]
    out = []
    cols = [("qsched-tch", "qwen3"), ("qsched-tch", "qwen3-ckpt"), ("qsched-tch", "rev-qwen3"),
            ("hf-transformers", "qwen3"), ("hf-transformers", "qwen3-ckpt")]
    name = {"qsched-tch": "", "hf-transformers": "HF "}
    for head, prec, b, t in sorted({(r["head"], r["precision"], r["batch"], r["seq"]) for r in meas}):
        rows = [r for r in meas if (r["head"], r["precision"], r["batch"], r["seq"]) == (head, prec, b, t)]
        by = {(r["impl"], r["model"], r["depth"]): r for r in rows}
        dev = rows[0].get("gpu_name") or rows[0]["device"]
        out.append(f"\n### head {head}, {prec}, batch {b} x seq {t}, {dev} ({rows[0].get('memory_kind')})\n")
        out.append("peak GiB = static + gradients + activations; step ms\n")
        out.append("| depth | " + " | ".join(f"{name[i]}{m}" for i, m in cols) + " |")
        out.append("|---|" + "---|" * len(cols))
        for d in sorted({r["depth"] for r in rows}):
            cells = []
            for i, m in cols:
                r = by.get((i, m, d))
                cells.append("-" if r is None else
                             f"{gib(r['peak_memory_bytes'])} = {gib(r['static_memory_bytes'])} + "
                             f"{gib(r.get('gradient_memory_bytes'))} + {gib(r['activation_bytes'])}; "
                             f"{sec(r['step_seconds'])}")
            out.append(f"| {d} | " + " | ".join(cells) + " |")
        out.append("\n| depth | rev peak / ckpt peak | rev peak / HF ckpt peak | rev step / ckpt step | rev step / qwen3 step |")
        out.append("|---|---|---|---|---|")
        for d in sorted({r["depth"] for r in rows if r["depth"] >= 8} or {r["depth"] for r in rows}):
            rev = by.get(("qsched-tch", "rev-qwen3", d), {})
            ck = by.get(("qsched-tch", "qwen3-ckpt", d), {})
            hf = by.get(("hf-transformers", "qwen3-ckpt", d), {})
            q = by.get(("qsched-tch", "qwen3", d), {})
            out.append(f"| {d} | {ratio(rev.get('peak_memory_bytes'), ck.get('peak_memory_bytes'))} | "
                       f"{ratio(rev.get('peak_memory_bytes'), hf.get('peak_memory_bytes'))} | "
                       f"{ratio(rev.get('step_seconds'), ck.get('step_seconds'))} | "
                       f"{ratio(rev.get('step_seconds'), q.get('step_seconds'))} |")
        sums = [s for s in records if s.get("record") == "summary" and (s["head"], s["precision"], s["batch"], s["seq"]) == (head, prec, b, t)]
        for sm in sums:
            out.append(f"\n{sm['impl']} {sm['model']}: activation slope {sm['activation_slope_bytes_per_layer'] / 2**20:.2f} MiB/layer "
                       f"(intercept {sm['activation_intercept_bytes'] / GIB:.3f} GiB), peak slope "
                       f"{(sm.get('peak_slope_bytes_per_layer') or 0) / 2**20:.2f} MiB/layer over depths {sm['depths']}")
    for e in (r for r in records if r.get("record") == "error"):
        out.append(f"\nERROR {e.get('impl')} {e.get('model')} depth {e.get('depth')} {e.get('batch')}x{e.get('seq')}: "
                   f"{'out of memory' if e.get('out_of_memory') else e.get('error', '')[:200]}")
    return out


def main(argv):
    if len(argv) == 2 and argv[0] == "--ckpt-vs-rev":
        lines = ["## Gradient checkpointing vs reversible backprop"]
        lines += ckpt_vs_rev(load(os.path.join(argv[1], "ckpt_vs_rev.jsonl")))
        print("\n".join(lines))
        return 0
    if len(argv) != 1:
        raise SystemExit(__doc__)
    d = argv[0]
    lines = ["## Figure 1: Qwen3 vs Reversible Qwen3 over depth"]
    lines += qwen_tables(load(os.path.join(d, "qwen3_depth.jsonl")))
    lines += ["", "## Figure 2: zeroth-order OPT memory and step time"]
    lines += zo_tables(load(os.path.join(d, "zo_opt.jsonl")))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
