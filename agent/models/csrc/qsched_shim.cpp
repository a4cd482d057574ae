// C entry points into libtorch that tch 0.24 does not expose: CUDA caching-allocator
// statistics (peak memory per shard) and cache release (between benchmark measurements), the CUDA autocast dtype (bf16 mixed precision),
// libtorch's fused multi-tensor AdamW and gradient-norm clipping (one pass over all
// parameters instead of a dozen elementwise kernels per tensor), releasing gradients
// (set to none) between steps, and backpropagating a given output gradient.
//
// Only c10/ATen headers are used and only libc10 / libtorch_cpu symbols are referenced,
// so the binary still runs on hosts without CUDA: the CUDA allocator is reached through
// c10's device-allocator registry, which libtorch_cuda.so fills when it is loaded.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

namespace {
void write_error(const std::exception& e, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, e.what(), err_len - 1);
  err[err_len - 1] = '\0';
}
}  // namespace

extern "C" int qsched_cuda_memory_stats(int device, int64_t* peak_allocated, int64_t* current_allocated,
                                        int64_t* peak_reserved, char* err, size_t err_len) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    const auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *peak_allocated = stats.allocated_bytes[aggregate].peak;
    *current_allocated = stats.allocated_bytes[aggregate].current;
    *peak_reserved = stats.reserved_bytes[aggregate].peak;
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}

extern "C" int qsched_cuda_reset_peak(int device, char* err, size_t err_len) {
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}

extern "C" int qsched_cuda_empty_cache(char* err, size_t err_len) {
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->emptyCache();
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}

extern "C" int qsched_set_cuda_autocast_bf16(char* err, size_t err_len) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}

namespace {
// tch's C_tensor handles are `torch::Tensor*` (torch-sys libtch/torch_api.h).
std::vector<at::Tensor> gather(void* const* handles, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*static_cast<const at::Tensor*>(handles[i]));
  return out;
}
}  // namespace

// One AdamW step over every tensor (decoupled weight decay `weight_decay` for all of them:
// callers pass decayed and undecayed tensors in separate calls). `steps` are per-tensor
// float scalars on the tensors' device, incremented here as torch.optim.AdamW does.
extern "C" int qsched_fused_adamw(void* const* params, void* const* grads, void* const* exp_avgs,
                                  void* const* exp_avg_sqs, void* const* steps, size_t n, double lr,
                                  double beta1, double beta2, double weight_decay, double eps, char* err,
                                  size_t err_len) {
  try {
    at::NoGradGuard no_grad;
    auto p = gather(params, n);
    auto g = gather(grads, n);
    auto m = gather(exp_avgs, n);
    auto v = gather(exp_avg_sqs, n);
    auto s = gather(steps, n);
    at::_foreach_add_(s, 1.0);
    at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false);
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}

// Global L2 norm of `grads` (written to `total_norm`); when `max_norm` > 0 and the norm
// exceeds it, scales every gradient in place by max_norm / (norm + 1e-6), as
// torch.nn.utils.clip_grad_norm_ does.
extern "C" int qsched_clip_grad_norm(void* const* grads, size_t n, double max_norm, double* total_norm, char* err,
                                     size_t err_len) {
  try {
    at::NoGradGuard no_grad;
    auto g = gather(grads, n);
    if (g.empty()) {
      *total_norm = 0.0;
      return 0;
    }
    auto norms = at::_foreach_norm(g, 2.0);
    auto total = at::linalg_vector_norm(at::stack(norms).to(at::kFloat), 2.0);
    *total_norm = total.item<double>();
    if (max_norm > 0.0 && *total_norm > max_norm) {
      at::_foreach_mul_(g, max_norm / (*total_norm + 1e-6));
    }
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}

// Sets the gradients of `params` to undefined (PyTorch's `zero_grad(set_to_none=True)`):
// their memory goes back to the allocator between steps instead of staying allocated and
// zeroed, so a step's peak is what the method needs. The next backward allocates fresh
// gradients. tch binds no way to unset a gradient.
extern "C" int qsched_release_grads(void* const* params, size_t n, char* err, size_t err_len) {
  try {
    for (size_t i = 0; i < n; ++i) static_cast<at::Tensor*>(params[i])->mutable_grad().reset();
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}

// Backpropagates `grad` from `out` (a vector-Jacobian product into every leaf `out`
// depends on): what the recomputing backwards (reversible, checkpointed) need per block.
// tch 0.24 only backpropagates scalars, and a surrogate `(out * grad).sum()` would
// allocate one more activation-sized tensor at the peak.
extern "C" int qsched_backward_with_grad(void* out, void* grad, char* err, size_t err_len) {
  try {
    static_cast<at::Tensor*>(out)->backward(*static_cast<const at::Tensor*>(grad));
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}

// Drops autocast's cached low-precision copies of the weights. The reversible backward
// calls it after each block: otherwise every layer's bf16 weight copies stay cached for
// the whole step and grow memory with depth.
extern "C" void qsched_autocast_clear_cache() { at::autocast::clear_cache(); }
