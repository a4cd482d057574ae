// C entry points into libtorch that tch 0.24 does not expose: CUDA caching-allocator
// statistics (peak memory per shard) and the CUDA autocast dtype (bf16 mixed precision).
//
// Only c10/ATen headers are used and only libc10 / libtorch_cpu symbols are referenced,
// so the binary still runs on hosts without CUDA: the CUDA allocator is reached through
// c10's device-allocator registry, which libtorch_cuda.so fills when it is loaded.
#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <cstring>
#include <exception>

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

extern "C" int qsched_set_cuda_autocast_bf16(char* err, size_t err_len) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    return 0;
  } catch (const std::exception& e) {
    write_error(e, err, err_len);
    return 1;
  }
}
