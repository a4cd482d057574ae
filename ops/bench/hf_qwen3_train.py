#!/usr/bin/env python3
"""PyTorch peer of `qbench qwen3-depth`: Hugging Face transformers Qwen3 trained in eager
PyTorch (sdpa attention) with torch.optim.AdamW(fused=True), same shapes, batches, warm-up
and timing protocol, same JSON field names (impl = "hf-transformers").

One step: zero_grad (set_to_none=True, PyTorch's default and what qsched's AdamW does;
--keep-grads keeps them allocated and zeroed), forward with labels (HF computes the loss:
classification CE on the last non-pad token, or causal-LM CE over all positions), backward,
clip_grad_norm_(foreach) when --grad-clip > 0, optimizer step, loss.item().

--models qwen3,qwen3-ckpt: `qwen3-ckpt` is the same model after
`model.gradient_checkpointing_enable()` (transformers' own per-layer activation
checkpointing, its default settings), the peer of `qbench ... --models qwen3-ckpt`.

Usage (GPU host, system PyTorch 2.11 + transformers):
  python3 hf_qwen3_train.py --device cuda:0 --depths 2,4,8,16,28 --batch 8 --seq 512 --head cls
CPU smoke test:
  python3 hf_qwen3_train.py --device cpu --depths 1,2 --hidden 32 --heads 4 --kv-heads 2 \
      --head-dim 8 --intermediate 48 --vocab 128 --batch 2 --seq 16 --steps 2 --warmup 1
"""

import argparse
import sys
import time

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

import bench_common as bc

IMPL = "hf-transformers"
MODELS = ("qwen3", "qwen3-ckpt")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", required=True, help="cpu or cuda:N")
    p.add_argument("--depths", default="2,4,8,16,28")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--head", choices=["cls", "lm"], default="cls")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--models", default="qwen3", help="qwen3 and/or qwen3-ckpt (gradient_checkpointing_enable())")
    p.add_argument("--keep-grads", action="store_true", help="zero_grad(set_to_none=False): keep gradients allocated")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.depths = [int(d) for d in a.depths.split(",") if d]
    a.models = [m for m in a.models.split(",") if m]
    if not a.models or any(m not in MODELS for m in a.models):
        raise SystemExit(f"--models must list {', '.join(MODELS)}, got {a.models}")
    a.set_to_none = not a.keep_grads
    if not a.depths or min(a.depths) < 1:
        raise SystemExit(f"--depths must be positive layer counts, got {a.depths}")
    bc.check_counts(a.steps, a.warmup)
    return a


def build(a, depth, device, model_name):
    cfg = Qwen3Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=depth,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        head_dim=a.head_dim,
        max_position_embeddings=max(a.seq, 2048),
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        initializer_range=0.02,
        attention_bias=False,
        attention_dropout=0.0,
        use_sliding_window=False,
        use_cache=False,
        pad_token_id=0 if a.head == "cls" else None,
        num_labels=2,
        attn_implementation="sdpa",
    )
    cls = Qwen3ForSequenceClassification if a.head == "cls" else Qwen3ForCausalLM
    with torch.device(device):
        model = cls(cfg)
    if model_name == "qwen3-ckpt":
        # transformers' per-layer checkpointing as users enable it (library defaults).
        model.gradient_checkpointing_enable()
    model.train()
    return model


def make_batch(a, device, gen):
    ids = torch.randint(1, a.vocab, (a.batch, a.seq), device=device, generator=gen)
    mask = torch.ones_like(ids)
    if a.head == "cls":
        labels = torch.randint(0, 2, (a.batch,), device=device, generator=gen)
    else:
        labels = ids  # HF shifts internally; the last position is ignored
    return ids, mask, labels


def measure(a, depth, device, mem, model_name):
    t_setup = time.perf_counter()
    torch.manual_seed(a.seed)
    model = build(a, depth, device, model_name)
    named = list(model.named_parameters())
    opt = bc.adamw(named, a.lr, a.weight_decay)
    params = [p for _, p in named]
    gen = torch.Generator(device=device)
    gen.manual_seed(a.seed)
    batches = [make_batch(a, device, gen) for _ in range(a.warmup + a.steps)]

    def step(i):
        ids, mask, labels = batches[i]
        opt.zero_grad(set_to_none=a.set_to_none)
        with bc.autocast(device, a.precision):
            # Keep only the loss: the output object (logits) is dropped before backward,
            # as in HF Trainer.
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, a.grad_clip, foreach=True)
        opt.step()
        return loss.item()

    for i in range(a.warmup):
        step(i)
    opt.zero_grad(set_to_none=a.set_to_none)
    setup_seconds = time.perf_counter() - t_setup
    w = bc.timed(mem, a.steps, lambda i: step(a.warmup + i))

    n_params = sum(p.numel() for p in params)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    record = {
        "record": "measurement",
        "figure": "qwen3-depth",
        "impl": IMPL,
        "model": model_name,
        "head": a.head,
        "depth": depth,
        "hidden": a.hidden, "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim,
        "intermediate": a.intermediate, "vocab": a.vocab,
        "batch": a.batch, "seq": a.seq, "tokens_per_step": a.batch * a.seq,
        "precision": bc.PRECISION_LABEL[a.precision],
        "steps": a.steps, "warmup": a.warmup,
        "lr": a.lr, "grad_clip": a.grad_clip,
        "parameters": n_params,
        "param_bytes": param_bytes,
        "grad_bytes": param_bytes,
        "optimizer_state_bytes": 2 * param_bytes + 4 * len(params),
        "backward": "checkpointed (gradient_checkpointing_enable)" if model_name == "qwen3-ckpt" else "autograd",
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "setup_seconds": setup_seconds,
        "attn_implementation": model.config._attn_implementation,
        "zero_grad": "set_to_none" if a.set_to_none else "zero",
        "transformers_version": transformers.__version__,
    }
    record.update(bc.window_fields(w, a.batch * a.seq))
    record.update(bc.device_fields(device, mem))
    return record


def summary(a, device, model_name, rows):
    """One record per model: the columns over depth and least-squares slopes per layer."""
    depths = [r["depth"] for r in rows]
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    slope, intercept = bc.linear_fit(depths, col("activation_bytes"))
    static_slope, _ = bc.linear_fit(depths, col("static_memory_bytes"))
    gradient_slope, _ = bc.linear_fit(depths, col("gradient_memory_bytes"))
    peak_slope, _ = bc.linear_fit(depths, col("peak_memory_bytes"))
    bc.emit({
        "record": "summary", "figure": "qwen3-depth", "impl": IMPL, "model": model_name, "head": a.head,
        "precision": bc.PRECISION_LABEL[a.precision], "batch": a.batch, "seq": a.seq, "depths": depths,
        "activation_bytes": col("activation_bytes"), "peak_memory_bytes": col("peak_memory_bytes"),
        "static_memory_bytes": col("static_memory_bytes"), "gradient_memory_bytes": col("gradient_memory_bytes"),
        "step_seconds": col("step_seconds"), "tokens_per_second": col("tokens_per_second"),
        "activation_slope_bytes_per_layer": slope, "activation_intercept_bytes": intercept,
        "static_slope_bytes_per_layer": static_slope, "gradient_slope_bytes_per_layer": gradient_slope,
        "peak_slope_bytes_per_layer": peak_slope, "memory_kind": rows[0]["memory_kind"],
        "device": str(device), "gpu_name": rows[0]["gpu_name"],
    })


def main(argv):
    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = bc.pin(a.device)
    mem = bc.Memory(device)
    failed = 0
    for model_name in a.models:
        rows = []
        for depth in a.depths:
            bc.log(f"hf {model_name} depth={depth} head={a.head} precision={a.precision}")
            try:
                r = measure(a, depth, device, mem, model_name)
                bc.emit(r)
                rows.append(r)
            except (RuntimeError, torch.OutOfMemoryError) as e:
                failed += 1
                bc.log(f"measurement failed: {e}")
                bc.emit({
                    "record": "error", "figure": "qwen3-depth", "impl": IMPL, "model": model_name, "head": a.head,
                    "depth": depth, "batch": a.batch, "seq": a.seq, "precision": bc.PRECISION_LABEL[a.precision],
                    "device": str(device), "out_of_memory": bc.is_oom(e), "error": str(e)[:2000],
                })
            mem.release()
        if len(rows) >= 2:
            summary(a, device, model_name, rows)
    if failed:
        bc.log(f"{failed} of {len(a.depths) * len(a.models)} measurement(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
