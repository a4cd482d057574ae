#!/usr/bin/env python3
"""PyTorch peer of `qbench zo-opt`: a plain PyTorch MeZO step (zo_methods.md §1.2: seeded
in-place perturbation +eps, -2eps, +eps with two losses, then the update regenerating z
from the same seed) on transformers' OPTForCausalLM with random init from OPTConfig, plus
its inference-only measurement and an AdamW(fused) full fine-tune step. Same synthetic
batch (B examples x C candidates of T tokens, options at the end, no padding), the same
prompt-format loss as qsched's trainer (mean log-prob of the option tokens from the LM
head applied to the last k+1 hidden states only, cross-entropy over candidates), same
warm-up/timing protocol and JSON field names (impl = "pytorch"). DiZO has no peer here.

Usage (GPU host):
  python3 torch_mezo_opt.py --device cuda:0 --batch 16 --seq 256 --methods inference,mezo,ft
CPU smoke test:
  python3 torch_mezo_opt.py --device cpu --hidden 32 --layers 2 --heads 4 --ffn 64 --vocab 128 \
      --batch 2 --seq 16 --steps 2 --warmup 1
"""

import argparse
import random
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import OPTConfig, OPTForCausalLM

import bench_common as bc

IMPL = "pytorch"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", required=True, help="cpu or cuda:N")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--ffn", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=50272)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--option-len", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--methods", default="inference,mezo,ft")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--weights", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--zo-lr", type=float, default=1e-6)
    p.add_argument("--zo-eps", type=float, default=1e-3)
    p.add_argument("--ft-lr", type=float, default=1e-5)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.methods = [m for m in a.methods.split(",") if m]
    bad = [m for m in a.methods if m not in ("inference", "mezo", "ft")]
    if bad or not a.methods:
        raise SystemExit(f"--methods takes inference, mezo, ft; got {a.methods}")
    bc.check_counts(a.steps, a.warmup)
    if a.weights == "fp16" and a.precision == "bf16":
        raise SystemExit("bf16 autocast runs on fp32 weights; use --weights fp32 with --precision bf16")
    if a.weights == "fp16" and "ft" in a.methods:
        raise SystemExit("ft with fp16 weights has no fp32 master copy; measure ft with --weights fp32")
    if a.batch < 1 or a.candidates < 1 or a.option_len < 1 or a.seq < a.option_len + 2:
        raise SystemExit("need batch >= 1, candidates >= 1, option_len >= 1 and seq >= option_len + 2")
    # inference first: the other methods report their ratio to it
    a.methods = sorted(dict.fromkeys(a.methods), key=lambda m: m != "inference")
    return a


def build(a, device):
    cfg = OPTConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        ffn_dim=a.ffn,
        num_attention_heads=a.heads,
        max_position_embeddings=max(a.seq, 2048),
        word_embed_proj_dim=a.hidden,
        do_layer_norm_before=True,
        dropout=0.1,
        attention_dropout=0.0,
        activation_function="relu",
        init_std=0.02,
        enable_bias=True,
        layer_norm_elementwise_affine=True,
        tie_word_embeddings=True,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        use_cache=False,
        attn_implementation="sdpa",
    )
    with torch.device(device):
        model = OPTForCausalLM(cfg)
    if a.weights == "fp16":
        model.half()
    return model


def make_batch(a, seed, device):
    """B examples x C candidates of exactly T tokens: BOS 0, a random prompt shared by an
    example's candidates, option_len random option tokens per candidate; random gold."""
    rng = random.Random(seed)
    t, k = a.seq, a.option_len
    rows, gold = [], []
    for _ in range(a.batch):
        prompt = [0] + [rng.randrange(3, a.vocab) for _ in range(t - 1 - k)]
        for _ in range(a.candidates):
            rows.append(prompt + [rng.randrange(3, a.vocab) for _ in range(k)])
        gold.append(rng.randrange(a.candidates))
    ids = torch.tensor(rows, dtype=torch.long, device=device)
    option_mask = torch.zeros(ids.shape, dtype=torch.float32, device=device)
    option_mask[:, t - k:] = 1.0
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "option_mask": option_mask,
        "gold": torch.tensor(gold, dtype=torch.long, device=device),
    }


def option_loss(model, b, a):
    """qsched's task_model::option_scores + candidate_loss."""
    ids, opt_mask = b["input_ids"], b["option_mask"]
    t = ids.shape[1]
    k = max(1, min(int(opt_mask.sum(1).max().item()), t - 1))
    hidden = model.model.decoder(input_ids=ids, attention_mask=b["attention_mask"]).last_hidden_state
    h = hidden[:, t - k - 1 : t - 1]
    logits = model.lm_head(h).float()
    targets = ids[:, t - k :]
    m = opt_mask[:, t - k :]
    lp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    scores = (lp * m).sum(1) / m.sum(1)
    return F.cross_entropy(scores.view(a.batch, a.candidates).float(), b["gold"])


def zo_loss(model, b, a, device):
    with torch.no_grad(), bc.autocast(device, a.precision):
        return option_loss(model, b, a).item()


def perturb(params, seed, scale):
    """theta <- theta + scale * z(seed), z regenerated per tensor in a fixed order."""
    torch.manual_seed(seed)
    for _, p in params:
        z = torch.normal(mean=0, std=1, size=p.size(), device=p.device, dtype=p.dtype)
        p.data.add_(z, alpha=scale)


def mezo_step(model, params, b, a, device, seed):
    eps = a.zo_eps
    perturb(params, seed, eps)
    lp = zo_loss(model, b, a, device)
    perturb(params, seed, -2 * eps)
    lm = zo_loss(model, b, a, device)
    perturb(params, seed, eps)
    g = (lp - lm) / (2 * eps)
    torch.manual_seed(seed)
    for _, p in params:  # weight decay 0 (MeZO's OPT grid)
        z = torch.normal(mean=0, std=1, size=p.size(), device=p.device, dtype=p.dtype)
        p.data.add_(z, alpha=-a.zo_lr * g)
    return lp


def measure(a, method, device, mem, inference):
    t_setup = time.perf_counter()
    torch.manual_seed(a.seed)
    model = build(a, device)
    named = list(model.named_parameters())
    batches = [make_batch(a, a.seed + i, device) for i in range(a.warmup + a.steps)]
    seeds = random.Random(a.seed)
    if method == "ft":
        model.train()  # dropout on, as qsched's first-order step
        opt = bc.adamw(named, a.ft_lr, 0.0)
        params = [p for _, p in named]
    else:
        model.eval()
        for _, p in named:
            p.requires_grad_(False)

    def step(i):
        b = batches[i]
        if method == "inference":
            return zo_loss(model, b, a, device)
        if method == "mezo":
            return mezo_step(model, named, b, a, device, seeds.randrange(10**9))
        torch.manual_seed(a.seed * 1_000_003 + i)
        opt.zero_grad(set_to_none=True)  # as qsched's AdamW: gradients freed between steps
        with bc.autocast(device, a.precision):
            loss = option_loss(model, b, a)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, a.grad_clip, foreach=True)
        opt.step()
        return loss.item()

    for i in range(a.warmup):
        step(i)
    if method == "ft":
        opt.zero_grad(set_to_none=True)  # the static memory holds no gradients
    setup_seconds = time.perf_counter() - t_setup
    w = bc.timed(mem, a.steps, lambda i: step(a.warmup + i))

    rows = a.batch * a.candidates
    tokens = rows * a.seq
    param_bytes = sum(p.numel() * p.element_size() for _, p in named)
    r = {
        "record": "measurement",
        "figure": "zo-opt",
        "impl": IMPL,
        "method": method,
        "hidden": a.hidden, "layers": a.layers, "heads": a.heads, "ffn": a.ffn, "vocab": a.vocab,
        "batch": a.batch, "candidates": a.candidates, "rows": rows, "seq": a.seq, "option_len": a.option_len,
        "tokens_per_step": tokens,
        "precision": bc.PRECISION_LABEL[a.precision], "weights": a.weights,
        "steps": a.steps, "warmup": a.warmup,
        "parameters": sum(p.numel() for _, p in named),
        "param_bytes": param_bytes,
        "setup_seconds": setup_seconds,
        "attn_implementation": model.config._attn_implementation,
        "transformers_version": transformers.__version__,
    }
    r.update(bc.window_fields(w, tokens))
    if method == "inference":
        r.update({"forward_passes_per_step": 1, "loss": "option-score candidate CE, no_grad"})
    elif method == "mezo":
        r.update({"forward_passes_per_step": 2, "zo_lr": a.zo_lr, "zo_eps": a.zo_eps})
    else:
        r.update({
            "forward_passes_per_step": 1, "backward": "autograd", "lr": a.ft_lr, "grad_clip": a.grad_clip,
            "grad_bytes": param_bytes, "optimizer_state_bytes": 2 * param_bytes + 4 * len(named),
        })
    if inference is not None:
        r["peak_ratio_to_inference"] = r["peak_memory_bytes"] / inference["peak_memory_bytes"]
        r["step_ratio_to_inference"] = r["step_seconds"] / inference["step_seconds"]
    r.update(bc.device_fields(device, mem))
    return r


def main(argv):
    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = bc.pin(a.device)
    mem = bc.Memory(device)
    failed, inference = 0, None
    for method in a.methods:
        bc.log(f"torch opt method={method} precision={a.precision} weights={a.weights}")
        try:
            r = measure(a, method, device, mem, inference)
            bc.emit(r)
            if method == "inference":
                inference = r
        except (RuntimeError, torch.OutOfMemoryError) as e:
            failed += 1
            bc.log(f"measurement failed: {e}")
            bc.emit({
                "record": "error", "figure": "zo-opt", "impl": IMPL, "method": method, "batch": a.batch,
                "seq": a.seq, "precision": bc.PRECISION_LABEL[a.precision], "weights": a.weights,
                "device": str(device), "out_of_memory": bc.is_oom(e), "error": str(e)[:2000],
            })
        mem.release()
    if failed:
        bc.log(f"{failed} of {len(a.methods)} measurement(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
