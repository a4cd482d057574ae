#!/usr/bin/env python3
"""Make the tiny Hugging Face parity fixtures under agent/models/tests/fixtures/parity/.

Each fixture is a folder <name>/ with
  model/              an HF checkpoint written by transformers (config.json + weights)
  tokens.json         {"input_ids": [[...]], "attention_mask": [[...]]} with padding
  reference.safetensors  {"logits": fp32} computed by transformers in fp32 on CPU
  meta.json           transformers/torch versions, what the fixture exercises, and HF's
                      named_parameters() order

The Rust tests (agent/models/src/parity_tests.rs) load model/ with `load_model_dir`, run
tokens.json and compare with reference.safetensors.

Run once (CPU is enough), from the repository root, with torch 2.11 and transformers 5.x:

    python3 -m venv /work/venv-parity
    /work/venv-parity/bin/pip install torch==2.11.0 transformers safetensors
    /work/venv-parity/bin/python ops/parity/make_fixtures.py

and once more with transformers 4.x for the 4.x-style configs (rope_theta at top level,
torch_dtype; 4.56+ already write `dtype`), e.g. with transformers 4.51.3 -- the version
that wrote the released Qwen3 configs -- installed into a side folder:

    /work/venv-parity/bin/pip install --no-deps --target /work/tf451 transformers==4.51.3 \
        huggingface-hub==0.30.2 tokenizers==0.21.1 requests urllib3 charset-normalizer certifi
    PYTHONPATH=/work/tf451 /work/venv-parity/bin/python ops/parity/make_fixtures.py --tf4

Weights are re-drawn at O(1) scale after HF's init (HF's std 0.02 would make every
logit ~1e-3, so a 1e-4 tolerance would prove nothing), norms get random scales and
biases random values, so every parameter matters.
"""

import argparse
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import OPTConfig, OPTForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "agent", "tests", "fixtures", "parity")
TF_MAJOR = int(transformers.__version__.split(".")[0])


def randomize(model, seed):
    """O(1)-scale weights: linear ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norms 1 + N(0, 0.2²), biases N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def batch(rows, seq, pad_id, vocab, seed, avoid=()):
    """rows: list of ("full" | "right" | "left", n_real). Real ids avoid `avoid` and pad_id."""
    g = torch.Generator().manual_seed(seed)
    ids, mask = [], []
    for side, n in rows:
        real = []
        while len(real) < n:
            t = int(torch.randint(0, vocab, (1,), generator=g))
            if t != pad_id and t not in avoid:
                real.append(t)
        pads = [pad_id] * (seq - n)
        if side == "left":
            ids.append(pads + real)
            mask.append([0] * (seq - n) + [1] * n)
        else:
            ids.append(real + pads)
            mask.append([1] * n + [0] * (seq - n))
    return ids, mask


def dtype_kw(dtype):
    # transformers 5.x (and 4.56+) take `dtype`; older 4.x take `torch_dtype`.
    return {"dtype": dtype} if TF_MAJOR >= 5 else {"torch_dtype": dtype}


def write_fixture(name, model, ids, mask, note, save_dtype=None, max_shard_size=None):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model_dir = os.path.join(out, "model")
    to_save = model if save_dtype is None else model.to(save_dtype)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    to_save.save_pretrained(model_dir, safe_serialization=True, **kw)
    # Reference logits come from the checkpoint as saved, reloaded in fp32, so they are
    # what a correct loader computes from these exact (possibly rounded) weights.
    cls = type(model)
    ref = cls.from_pretrained(model_dir, attn_implementation="sdpa", **dtype_kw(torch.float32)).eval()
    with torch.no_grad():
        logits = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().contiguous()
    save_file({"logits": logits}, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"input_ids": ids, "attention_mask": mask}, f)
    meta = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "architecture": cls.__name__,
        "note": note,
        # HF named_parameters() order (tied weights once), which the Rust models must reproduce.
        "named_parameters": [n for n, _ in ref.named_parameters()],
        "command": " ".join(["python"] + sys.argv),
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"{name}: logits {tuple(logits.shape)}, files {sorted(os.listdir(model_dir))}")


def qwen3_config(**kw):
    base = dict(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-6,
    )
    base.update(kw)
    if TF_MAJOR >= 5:
        theta = base.pop("rope_theta", 10000.0)
        base["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    return Qwen3Config(**base)


def opt_config(**kw):
    base = dict(
        vocab_size=128, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )
    base.update(kw)
    return OPTConfig(**base)


def tf5_fixtures():
    torch.manual_seed(0)
    # Qwen3 causal LM: GQA (4 q heads, 2 kv heads), head_dim 16 ≠ hidden/heads, QK-norm,
    # untied head, θ = 1e6; right padding, a full row and a left-padded row (mixed).
    m = Qwen3ForCausalLM(qwen3_config(rope_theta=1e6, tie_word_embeddings=False, head_dim=16)).eval()
    randomize(m, 1)
    ids, mask = batch([("full", 9), ("right", 6), ("right", 3), ("left", 5)], 9, 0, 128, 11)
    write_fixture("qwen3_lm", m, ids, mask, "Qwen3 LM, GQA 4/2, head_dim 16, untied, right + left padding, fp32")

    # Tied Qwen3 LM stored in bf16 (weights rounded to bf16; reference computed from the
    # rounded weights in fp32).
    m = Qwen3ForCausalLM(qwen3_config(num_hidden_layers=3, tie_word_embeddings=True, num_key_value_heads=1)).eval()
    randomize(m, 2)
    ids, mask = batch([("right", 7), ("full", 8)], 8, 0, 128, 12)
    write_fixture("qwen3_lm_tied_bf16", m, ids, mask, "Qwen3 LM, tied, MQA 4/1, 3 layers, stored bf16", save_dtype=torch.bfloat16)

    # Qwen3 sequence classification, sharded checkpoint; right, left and no padding.
    m = Qwen3ForSequenceClassification(qwen3_config(num_labels=3, pad_token_id=0)).eval()
    randomize(m, 3)
    ids, mask = batch([("right", 5), ("full", 8), ("left", 4), ("right", 1)], 8, 0, 128, 13)
    write_fixture(
        "qwen3_cls_sharded", m, ids, mask, "Qwen3 seq-cls, 3 labels, pad 0, right/left padding, sharded", max_shard_size="20KB"
    )

    # Qwen3 regression head (num_labels = 1), stored fp16.
    m = Qwen3ForSequenceClassification(qwen3_config(num_labels=1, pad_token_id=5, tie_word_embeddings=True)).eval()
    randomize(m, 4)
    ids, mask = batch([("right", 6), ("left", 3)], 7, 5, 128, 14)
    write_fixture("qwen3_reg_fp16", m, ids, mask, "Qwen3 regression (1 label), pad 5, stored fp16", save_dtype=torch.float16)

    # OPT pre-LN: left padding with pad id 1 (the OPT convention) plus one right-padded row.
    m = OPTForCausalLM(opt_config()).eval()
    randomize(m, 5)
    ids, mask = batch([("left", 5), ("full", 8), ("left", 2), ("right", 6)], 8, 1, 128, 15)
    write_fixture("opt_preln", m, ids, mask, "OPT pre-LN, left padding (pad 1) + one right-padded row, fp32")

    # OPT post-LN with project_in/project_out (the opt-350m layout), stored fp16.
    m = OPTForCausalLM(opt_config(do_layer_norm_before=False, word_embed_proj_dim=16, num_hidden_layers=3)).eval()
    randomize(m, 6)
    ids, mask = batch([("left", 4), ("full", 7), ("left", 6)], 7, 1, 128, 16)
    write_fixture("opt_postln_proj", m, ids, mask, "OPT post-LN, project_in/out 16<->32, left padding, stored fp16", save_dtype=torch.float16)


def tf4_fixtures():
    torch.manual_seed(0)
    m = Qwen3ForCausalLM(qwen3_config(rope_theta=1e6, tie_word_embeddings=True, num_hidden_layers=1)).eval()
    randomize(m, 7)
    ids, mask = batch([("right", 5), ("full", 6), ("left", 4)], 6, 0, 128, 17)
    write_fixture("qwen3_lm_tf4", m, ids, mask, "Qwen3 LM, transformers 4.x config (rope_theta top level, torch_dtype)")

    m = OPTForCausalLM(opt_config(num_hidden_layers=1)).eval()
    randomize(m, 8)
    ids, mask = batch([("left", 3), ("full", 6)], 6, 1, 128, 18)
    write_fixture("opt_tf4", m, ids, mask, "OPT pre-LN, transformers 4.x config (torch_dtype, defaults omitted)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tf4", action="store_true", help="write the transformers-4.x fixtures (run under transformers 4.x)")
    args = ap.parse_args()
    if args.tf4 != (TF_MAJOR == 4):
        sys.exit(f"--tf4 needs transformers 4.x and the default set needs 5.x; this is {transformers.__version__}")
    torch.set_grad_enabled(False)
    (tf4_fixtures if args.tf4 else tf5_fixtures)()


if __name__ == "__main__":
    main()
