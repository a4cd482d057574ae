#!/usr/bin/env python3
"""Load a checkpoint saved by qsched (`save_model_dir`) in transformers and compare its
logits with the ones qsched computed.

    python ops/parity/check_saved.py DIR TOKENS [EXPECTED]

DIR       a model directory written by qsched (config.json + model.safetensors)
TOKENS    {"input_ids": [[...]], "attention_mask": [[...]]} (mask optional)
EXPECTED  qsched's logits for TOKENS as printed by `qagent inspect --model-dir DIR
          --tokens TOKENS` ({"logits": ...}); default DIR/qsched_logits.json

The Rust test `models::hf::tests::saved_checkpoints_reload_with_identical_logits` writes
such directories (with tokens.json and qsched_logits.json) when QSCHED_SAVE_CHECK_DIR is
set:

    QSCHED_SAVE_CHECK_DIR=/tmp/qsched-saved cargo test -p qsched-models saved_checkpoints_reload
    for d in /tmp/qsched-saved/*/; do
        /work/venv-parity/bin/python ops/parity/check_saved.py $d $d/tokens.json; done

Causal-LM logits are compared where HF defines them (every position except left-padding
query rows, which attend to nothing); exit status 1 if the max |difference| exceeds
1e-4 or transformers cannot load the directory.
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

TOL = 1e-4


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    model_dir, tokens_path = sys.argv[1], sys.argv[2]
    expected_path = sys.argv[3] if len(sys.argv) == 4 else os.path.join(model_dir, "qsched_logits.json")
    with open(os.path.join(model_dir, "config.json")) as f:
        arch = json.load(f)["architectures"][0]
    auto = AutoModelForSequenceClassification if arch.endswith("ForSequenceClassification") else AutoModelForCausalLM
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    model = auto.from_pretrained(model_dir, attn_implementation="sdpa", **dtype_kw).eval()
    if type(model).__name__ != arch:
        sys.exit(f"transformers built {type(model).__name__}, config says {arch}")

    with open(tokens_path) as f:
        tokens = json.load(f)
    ids = torch.tensor(tokens["input_ids"])
    mask = torch.tensor(tokens.get("attention_mask") or [[1] * len(r) for r in tokens["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    with open(expected_path) as f:
        expected = torch.tensor(json.load(f)["logits"], dtype=torch.float32)
    if expected.shape != logits.shape:
        sys.exit(f"shape mismatch: transformers {tuple(logits.shape)}, qsched {tuple(expected.shape)}")

    diff = (logits - expected).abs()
    if diff.dim() == 3:
        defined = (mask.cumsum(1) > 0).unsqueeze(-1).expand_as(diff)
        diff = diff[defined]
    worst = diff.max().item()
    print(
        f"{model_dir}: {arch} transformers {transformers.__version__} torch {torch.__version__}: "
        f"logits {tuple(logits.shape)}, max |transformers - qsched| = {worst:.3e}"
    )
    sys.exit(0 if worst <= TOL else 1)


if __name__ == "__main__":
    main()
