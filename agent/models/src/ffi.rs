//! Safe wrappers over the C++ shim in `csrc/qsched_shim.cpp` (libtorch functions tch
//! 0.24 does not bind), and over `_exit`.
// Calling into C++ needs `unsafe`; every call passes pointers that live for its duration
// (tensor handles borrowed from live `tch::Tensor`s, locals for out-parameters).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};

use tch::Tensor;

use crate::error::{Error, Result};

unsafe extern "C" {
    fn qsched_cuda_memory_stats(
        device: c_int,
        peak_allocated: *mut i64,
        current_allocated: *mut i64,
        peak_reserved: *mut i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn qsched_cuda_reset_peak(device: c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn qsched_cuda_empty_cache(err: *mut c_char, err_len: usize) -> c_int;
    fn qsched_set_cuda_autocast_bf16(err: *mut c_char, err_len: usize) -> c_int;
    fn qsched_autocast_clear_cache();
    fn qsched_backward_with_grad(out: *mut c_void, grad: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn qsched_release_grads(params: *const *mut c_void, n: usize, err: *mut c_char, err_len: usize) -> c_int;
    fn qsched_fused_adamw(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn qsched_clip_grad_norm(
        grads: *const *mut c_void,
        n: usize,
        max_norm: f64,
        total_norm: *mut f64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Runs a shim call that reports errors through a message buffer.
fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut buf = vec![0 as c_char; 1024];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim NUL-terminates the message within the buffer.
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    Err(Error::Torch(tch::TchError::Torch(msg)))
}

fn handles(ts: &[&Tensor]) -> Vec<*mut c_void> {
    ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// Ends the process at once with `code`, without running exit handlers or C++ static
/// destructors. A worker whose supervisor died exits this way from its stdin watcher
/// thread: `std::process::exit` would destroy libtorch's globals under the training
/// thread still inside an op (seen as "Invalid (backend, op) pair" errors from
/// `Context::float32Precision` in orphaned workers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it does not return.
    unsafe { libc::_exit(code) }
}

/// CUDA caching allocator: (peak allocated, currently allocated, peak reserved) bytes.
pub fn cuda_memory_stats(device: usize) -> Result<(i64, i64, i64)> {
    let (mut peak, mut current, mut reserved) = (0i64, 0i64, 0i64);
    // SAFETY: out-pointers are valid locals; the buffer comes from `call`.
    call(|err, len| unsafe {
        qsched_cuda_memory_stats(device as c_int, &mut peak, &mut current, &mut reserved, err, len)
    })
    .map_err(|e| Error::Device(e.to_string()))?;
    Ok((peak, current, reserved))
}

/// Starts a new peak window of the CUDA caching allocator.
pub fn cuda_reset_peak(device: usize) -> Result<()> {
    // SAFETY: plain call with a message buffer.
    call(|err, len| unsafe { qsched_cuda_reset_peak(device as c_int, err, len) })
        .map_err(|e| Error::Device(e.to_string()))
}

/// Returns the CUDA caching allocator's unused cached blocks to the driver
/// (`torch.cuda.empty_cache()`), so the next peak-reserved reading starts clean.
pub fn cuda_empty_cache() -> Result<()> {
    // SAFETY: plain call with a message buffer.
    call(|err, len| unsafe { qsched_cuda_empty_cache(err, len) }).map_err(|e| Error::Device(e.to_string()))
}

/// Makes CUDA autocast use bf16.
pub fn set_cuda_autocast_bf16() -> Result<()> {
    // SAFETY: plain call with a message buffer.
    call(|err, len| unsafe { qsched_set_cuda_autocast_bf16(err, len) }).map_err(|e| Error::Device(e.to_string()))
}

/// Drops autocast's cached low-precision weight copies (a no-op outside autocast).
pub fn autocast_clear_cache() {
    // SAFETY: no arguments; at::autocast::clear_cache does not throw.
    unsafe { qsched_autocast_clear_cache() }
}

/// Backpropagates `grad` (same shape and kind as `out`) from `out`: accumulates `Jᵀ·grad`
/// into every leaf `out` depends on, and frees the graph.
pub fn backward_with_grad(out: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: both handles are live tensors for the duration of the call.
    call(|err, len| unsafe {
        qsched_backward_with_grad(out.as_ptr() as *mut c_void, grad.as_ptr() as *mut c_void, err, len)
    })
}

/// Sets each tensor's gradient to undefined (`zero_grad(set_to_none=True)`), so its
/// memory is freed between steps.
pub fn release_grads(params: &[&Tensor]) -> Result<()> {
    let h = handles(params);
    // SAFETY: `h` holds live tensor handles for the duration of the call.
    call(|err, len| unsafe { qsched_release_grads(h.as_ptr(), h.len(), err, len) })
}

/// Tensors of one fused AdamW call.
#[derive(Debug, Default)]
pub struct AdamGroup<'a> {
    /// Parameters.
    pub params: Vec<&'a Tensor>,
    /// Their gradients.
    pub grads: Vec<Tensor>,
    /// First moments.
    pub exp_avgs: Vec<&'a Tensor>,
    /// Second moments.
    pub exp_avg_sqs: Vec<&'a Tensor>,
    /// Per-tensor step counters (float scalars on the tensors' device).
    pub steps: Vec<&'a Tensor>,
}

/// libtorch's fused AdamW (`torch.optim.AdamW(fused=True)`) over a group.
pub fn fused_adamw(group: &AdamGroup<'_>, lr: f64, beta1: f64, beta2: f64, weight_decay: f64, eps: f64) -> Result<()> {
    let n = group.params.len();
    if n == 0 {
        return Ok(());
    }
    let grads: Vec<&Tensor> = group.grads.iter().collect();
    let (p, g, m, v, s) = (
        handles(&group.params),
        handles(&grads),
        handles(&group.exp_avgs),
        handles(&group.exp_avg_sqs),
        handles(&group.steps),
    );
    // SAFETY: five arrays of `n` live tensor handles; the tensors outlive the call.
    call(|err, len| unsafe {
        qsched_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
            err,
            len,
        )
    })
}

/// Global L2 norm of `grads`; scales them to `max_norm` when above it (and `max_norm` > 0).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<f64> {
    let refs: Vec<&Tensor> = grads.iter().collect();
    let h = handles(&refs);
    let mut total = 0.0f64;
    // SAFETY: `h` holds live handles; `total` is a local out-parameter.
    call(|err, len| unsafe { qsched_clip_grad_norm(h.as_ptr(), h.len(), max_norm, &mut total, err, len) })?;
    Ok(total)
}
