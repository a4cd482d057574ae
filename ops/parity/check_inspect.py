#!/usr/bin/env python3
"""Parity of `qagent inspect` against the committed transformers reference logits, on any
device (the GPU check of the parity fixtures).

    python3 ops/parity/check_inspect.py --qagent PATH/qagent --device cuda:0 [--tol 1e-3]

For every fixture under agent/models/tests/fixtures/parity/ it runs
`qagent inspect --model-dir <fixture>/model --tokens <fixture>/tokens.json --device D`,
and compares the printed fp32 logits with <fixture>/reference.safetensors (written by
transformers, see make_fixtures.py), exactly as the CPU test does: causal-LM logits at every
position except left-padding rows (no real token at or before them), classifier logits in
full. Prints one JSON line per fixture and exits non-zero if any exceeds the tolerance.
Needs torch and safetensors (a GPU host's PyTorch has both).
"""
import argparse
import json
import pathlib
import subprocess
import sys

import torch
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "agent" / "tests" / "fixtures" / "parity"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qagent", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    worst = 0.0
    failed = []
    for fixture in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        tokens = json.loads((fixture / "tokens.json").read_text())
        out = subprocess.run(
            [args.qagent, "inspect", "--model-dir", str(fixture / "model"),
             "--tokens", str(fixture / "tokens.json"), "--device", args.device],
            capture_output=True, text=True)
        if out.returncode != 0:
            print(json.dumps({"fixture": fixture.name, "error": out.stderr.strip()[-2000:]}))
            failed.append(fixture.name)
            continue
        ours = torch.tensor(json.loads(out.stdout)["logits"], dtype=torch.float64)
        ref = load_file(str(fixture / "reference.safetensors"))["logits"].to(torch.float64)
        diff = (ours - ref).abs()
        if diff.dim() == 3:
            mask = torch.tensor(tokens.get("attention_mask", [[1] * len(r) for r in tokens["input_ids"]]))
            defined = (mask.cumsum(1) > 0).unsqueeze(-1).expand_as(diff)
            diff = diff[defined]
        d = float(diff.max())
        worst = max(worst, d)
        ok = d <= args.tol
        if not ok:
            failed.append(fixture.name)
        print(json.dumps({"fixture": fixture.name, "device": args.device, "max_abs_diff": d,
                          "max_abs_logit": float(ref.abs().max()), "tol": args.tol, "ok": ok}))
    print(json.dumps({"summary": True, "device": args.device, "worst_max_abs_diff": worst, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
