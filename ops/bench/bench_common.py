"""Measurement protocol shared by the PyTorch peers of `qbench` (hf_qwen3_train.py,
torch_mezo_opt.py): device pinning without fallback, the memory counters, the timed
window and JSON-line output. It mirrors `agent/bench/src/lib.rs` so records compare field
by field:

* static_memory_bytes: bytes in use after the warm-up steps and zero_grad(set_to_none)
  (parameters, optimizer state, batches, library workspaces; no gradients);
* peak_memory_bytes: peak over the timed steps (the peak counter is reset just before);
* gradient_memory_bytes: bytes in use right after the last timed step minus static (what
  a step leaves alive until the next zero_grad: the gradients; ~0 for zeroth-order);
* activation_bytes = peak - static - gradient (activations, checkpoints, temporaries);
* step_seconds: median of `synchronize -> step -> loss.item() -> synchronize`.

CUDA: torch.cuda.memory_allocated / max_memory_allocated (the caching allocator, the
same counters qbench reads through its C++ shim). CPU: the process's resident set
(VmRSS / VmHWM, peak reset through /proc/self/clear_refs), for testing only.
Only the standard library and torch are used.
"""

import gc
import json
import math
import statistics
import sys
import time

import torch


def pin(spec):
    """`cpu` or `cuda:N` -> torch.device; CUDA must exist (no fallback)."""
    if spec == "cpu":
        return torch.device("cpu")
    if not spec.startswith("cuda:") or not spec[5:].isdigit():
        raise SystemExit(f"--device must be cpu or cuda:N, got {spec!r}")
    if not torch.cuda.is_available():
        raise SystemExit(f"{spec} requested but torch.cuda.is_available() is False")
    index = int(spec[5:])
    if index >= torch.cuda.device_count():
        raise SystemExit(f"{spec} requested but this host has {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(index)
    return torch.device(spec)


def _proc_status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


class Memory:
    """The memory counters of one device."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.kind = "cuda_allocated_peak" if self.cuda else "host_rss_peak"

    def synchronize(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def current(self):
        return torch.cuda.memory_allocated(self.device) if self.cuda else _proc_status_bytes("VmRSS:")

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak(self):
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else _proc_status_bytes("VmHWM:")

    def peak_reserved(self):
        return torch.cuda.max_memory_reserved(self.device) if self.cuda else None

    def release(self):
        """After a measurement: collect garbage and hand cached blocks back (qbench does too)."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def timed(mem, steps, step):
    """Runs `step(i)` (returns the loss as a float) `steps` times in a fresh peak window."""
    mem.synchronize()
    static = mem.current()
    mem.reset_peak()
    seconds, losses = [], []
    for i in range(steps):
        mem.synchronize()
        t0 = time.perf_counter()
        loss = step(i)
        mem.synchronize()
        seconds.append(time.perf_counter() - t0)
        if not math.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss} at timed step {i}")
        losses.append(loss)
    return {
        "static": static,
        "end": mem.current(),
        "seconds": seconds,
        "losses": losses,
        "peak": mem.peak(),
        "peak_reserved": mem.peak_reserved(),
    }


def window_fields(w, tokens_per_step):
    step = statistics.median(w["seconds"])
    gradient = w["end"] - w["static"]
    return {
        "static_memory_bytes": w["static"],
        "gradient_memory_bytes": gradient,
        "peak_memory_bytes": w["peak"],
        "activation_bytes": w["peak"] - w["static"] - gradient,
        "peak_reserved_bytes": w["peak_reserved"],
        "step_seconds": step,
        "step_seconds_min": min(w["seconds"]),
        "step_seconds_all": w["seconds"],
        "tokens_per_second": tokens_per_step / step,
        "loss_first": w["losses"][0],
        "loss_last": w["losses"][-1],
    }


def device_fields(device, mem):
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "device": str(device),
        "gpu_name": props.name if cuda else None,
        "gpu_total_memory_bytes": props.total_memory if cuda else None,
        "memory_kind": mem.kind,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def autocast(device, precision):
    """bf16 autocast on CUDA only (as qbench: an error on CPU, never a silent no-op)."""
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    if device.type != "cuda":
        raise SystemExit("bf16 mixed precision is only available on CUDA")
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


PRECISION_LABEL = {"fp32": "fp32", "bf16": "bf16-autocast"}


def decays(name, p):
    """qsched's weight-decay rule (HF convention): not biases, not norms, not 1-D."""
    return not ("bias" in name or "norm" in name or p.dim() < 2)


def adamw(named_params, lr, weight_decay):
    """torch.optim.AdamW(fused=True) with qsched's two groups (decayed / not decayed)."""
    decayed = [p for n, p in named_params if decays(n, p)]
    plain = [p for n, p in named_params if not decays(n, p)]
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


def emit(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def log(msg):
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    sys.stderr.flush()


def is_oom(err):
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err)


def linear_fit(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    slope = sxy / sxx if sxx > 0 else 0.0
    return slope, my - slope * mx


def check_counts(steps, warmup):
    if steps < 1:
        raise SystemExit("--steps must be at least 1")
    if warmup < 1:
        raise SystemExit("--warmup must be at least 1: the static memory is read after a warm-up step")
