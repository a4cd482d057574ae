//! Pinning a process to one device, loading CUDA at run time, and memory statistics.
//!
//! The agent binary links only the CPU part of libtorch, so one build serves CPU and GPU
//! hosts. For `cuda:N` it `dlopen`s `libtorch_cuda.so` (RTLD_GLOBAL) before the first
//! CUDA tensor, which registers libtorch's CUDA backend; if that library cannot be found
//! or no such GPU exists, pinning fails with an error listing every place it looked.
//! There is no fallback to the CPU.
//!
//! Peak memory: on CPU the worker's peak resident set (`VmHWM`; each shard runs in its own
//! process), on CUDA the caching allocator's peak allocated bytes, read through the small
//! C++ shim in `csrc/` because tch 0.24 has no binding for it.
// FFI to libc's dlopen/dlsym, the CUDA driver API and our C++ shim needs `unsafe`;
// every block is a plain C call with arguments checked right before it.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use shared::DeviceSpec;

use crate::error::{Error, Result};

/// Environment variable naming `libtorch_cuda.so` (the file or the folder holding it).
pub const LIBTORCH_CUDA_ENV: &str = "QSCHED_LIBTORCH_CUDA";

/// A device this process is pinned to.
#[derive(Debug, Clone)]
pub struct PinnedDevice {
    /// What the user asked for.
    pub spec: DeviceSpec,
    /// The tch device every tensor is created on.
    pub device: tch::Device,
    /// GPU product name (CUDA only).
    pub gpu_name: Option<String>,
    /// GPU memory in bytes (CUDA only).
    pub gpu_total_memory: Option<u64>,
    /// The `libtorch_cuda.so` that was loaded (CUDA only).
    pub cuda_library: Option<PathBuf>,
}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local C string or NULL.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-null pointer from dlerror points to a NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn dlopen_global(path: &Path) -> std::result::Result<(), String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "path contains NUL".to_owned())?;
    // SAFETY: valid NUL-terminated path; the handle is intentionally never closed, the
    // library must stay loaded for the life of the process.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() { Err(dl_error()) } else { Ok(()) }
}

/// Directory of the `libtorch_cpu.so` this process loaded (from `/proc/self/maps`).
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

fn python_torch_lib() -> std::result::Result<PathBuf, String> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import torch, os; print(os.path.dirname(torch.__file__))"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !out.status.success() {
        // The traceback's last line says what failed (e.g. `ModuleNotFoundError: …`).
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        return Err(format!("python3 cannot import torch ({last})"));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("lib"))
}

/// Places `libtorch_cuda.so` is looked for, in order, with a note when a place could
/// not even be determined.
fn cuda_library_candidates() -> (Vec<PathBuf>, Vec<String>) {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    match std::env::var_os(LIBTORCH_CUDA_ENV) {
        Some(v) => {
            let p = PathBuf::from(v);
            found.push(if p.is_dir() { p.join("libtorch_cuda.so") } else { p });
        }
        None => notes.push(format!("{LIBTORCH_CUDA_ENV} is not set")),
    }
    match loaded_libtorch_dir() {
        Some(dir) => found.push(dir.join("libtorch_cuda.so")),
        None => notes.push("the loaded libtorch_cpu.so was not found in /proc/self/maps".into()),
    }
    match python_torch_lib() {
        Ok(dir) => found.push(dir.join("libtorch_cuda.so")),
        Err(e) => notes.push(e),
    }
    found.dedup();
    (found, notes)
}

static CUDA_LOADED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Loads libtorch's CUDA backend once per process.
fn load_cuda_backend() -> Result<PathBuf> {
    CUDA_LOADED
        .get_or_init(|| {
            let (candidates, notes) = cuda_library_candidates();
            let mut tried = Vec::new();
            for path in &candidates {
                if !path.is_file() {
                    tried.push(format!("{} (not found)", path.display()));
                    continue;
                }
                match dlopen_global(path) {
                    Ok(()) => return Ok(path.clone()),
                    Err(e) => tried.push(format!("{} ({e})", path.display())),
                }
            }
            let mut msg = String::from("could not load libtorch_cuda.so; looked in: ");
            msg.push_str(&tried.join("; "));
            if !notes.is_empty() {
                msg.push_str("; also: ");
                msg.push_str(&notes.join("; "));
            }
            msg.push_str(&format!(
                ". Set {LIBTORCH_CUDA_ENV} to the libtorch_cuda.so of a PyTorch 2.11 install (its torch/lib folder)"
            ));
            Err(msg)
        })
        .clone()
        .map_err(Error::Device)
}

type CuInit = unsafe extern "C" fn(u32) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;

/// How many GPUs the CUDA driver (`libcuda.so.1`) sees, asked before anything of
/// libtorch's CUDA backend is loaded, so that a host without a GPU is told so first.
/// `Err` says why there is none: no driver library, or the driver's own error code.
fn driver_device_count() -> std::result::Result<i32, String> {
    let lib = CString::new("libcuda.so.1").map_err(|e| e.to_string())?;
    // SAFETY: plain dlopen of the driver library; handle kept for the process lifetime.
    let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err("the NVIDIA driver library libcuda.so.1 is not installed on this host".into());
    }
    let sym = |name: &str| -> std::result::Result<*mut c_void, String> {
        let c = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: handle is valid, name is NUL-terminated.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() { Err(format!("libcuda.so.1 has no {name}")) } else { Ok(p) }
    };
    // SAFETY: the symbols have these C signatures in every CUDA driver since 3.2.
    unsafe {
        let init: CuInit = std::mem::transmute(sym("cuInit")?);
        let count_fn: CuDeviceGetCount = std::mem::transmute(sym("cuDeviceGetCount")?);
        let rc = init(0);
        if rc != 0 {
            // 100 = CUDA_ERROR_NO_DEVICE; others (e.g. 999, 804) are driver trouble.
            return Err(format!("the CUDA driver found no usable GPU (cuInit error {rc})"));
        }
        let mut count: c_int = 0;
        let rc = count_fn(&mut count);
        if rc != 0 {
            return Err(format!("the CUDA driver could not count GPUs (error {rc})"));
        }
        Ok(count)
    }
}
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;

/// GPU name and memory from the CUDA driver API (`libcuda.so.1`).
fn gpu_properties(ordinal: u32) -> Option<(String, u64)> {
    let lib = CString::new("libcuda.so.1").ok()?;
    // SAFETY: plain dlopen of the driver library; handle kept for the process lifetime.
    let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return None;
    }
    let sym = |name: &str| -> Option<*mut c_void> {
        let c = CString::new(name).ok()?;
        // SAFETY: handle is valid, name is NUL-terminated.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    // SAFETY: the symbols have these C signatures in every CUDA driver since 3.2.
    unsafe {
        let init: CuInit = std::mem::transmute(sym("cuInit")?);
        let get: CuDeviceGet = std::mem::transmute(sym("cuDeviceGet")?);
        let name_fn: CuDeviceGetName = std::mem::transmute(sym("cuDeviceGetName")?);
        let mem_fn: CuDeviceTotalMem = std::mem::transmute(sym("cuDeviceTotalMem_v2")?);
        if init(0) != 0 {
            return None;
        }
        let mut dev: c_int = 0;
        if get(&mut dev, ordinal as c_int) != 0 {
            return None;
        }
        let mut buf = [0 as c_char; 256];
        if name_fn(buf.as_mut_ptr(), buf.len() as c_int, dev) != 0 {
            return None;
        }
        let mut total: usize = 0;
        let _ = mem_fn(&mut total, dev);
        Some((CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(), total as u64))
    }
}

/// Pins this process to `spec`: for CUDA, loads the backend and checks the ordinal.
pub fn pin(spec: DeviceSpec) -> Result<PinnedDevice> {
    match spec {
        DeviceSpec::Cpu => Ok(PinnedDevice {
            spec,
            device: tch::Device::Cpu,
            gpu_name: None,
            gpu_total_memory: None,
            cuda_library: None,
        }),
        DeviceSpec::Cuda(ordinal) => {
            let visible = || std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".into());
            match driver_device_count() {
                Err(why) => {
                    return Err(Error::Device(format!(
                        "{spec} requested but this host has no CUDA device: {why} (CUDA_VISIBLE_DEVICES={})",
                        visible()
                    )));
                }
                Ok(0) => {
                    return Err(Error::Device(format!(
                        "{spec} requested but this host has no CUDA device visible (CUDA_VISIBLE_DEVICES={})",
                        visible()
                    )));
                }
                Ok(_) => {}
            }
            let library = load_cuda_backend()?;
            if !tch::Cuda::is_available() {
                return Err(Error::Device(format!(
                    "{spec} requested and {} loaded, but CUDA is not available (no driver or no GPU visible; CUDA_VISIBLE_DEVICES={})",
                    library.display(),
                    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".into())
                )));
            }
            let count = tch::Cuda::device_count();
            if i64::from(ordinal) >= count {
                return Err(Error::Device(format!("{spec} requested but this host has {count} CUDA device(s)")));
            }
            let (gpu_name, total) = match gpu_properties(ordinal) {
                Some((n, t)) => (Some(n), Some(t)),
                None => (None, None),
            };
            Ok(PinnedDevice {
                spec,
                device: tch::Device::Cuda(ordinal as usize),
                gpu_name,
                gpu_total_memory: total,
                cuda_library: Some(library),
            })
        }
    }
}

/// Memory use of the pinned device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// Peak bytes since the last reset.
    pub peak: u64,
    /// Bytes in use now.
    pub current: u64,
}

fn proc_status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| Error::io("/proc/self/status", e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| Error::Device(format!("/proc/self/status has no {field} line")))
}

impl PinnedDevice {
    /// Short description for logs and results.
    pub fn describe(&self) -> String {
        match &self.gpu_name {
            Some(name) => format!("{} ({name})", self.spec),
            None => self.spec.to_string(),
        }
    }

    /// What `memory()` measures on this device.
    pub fn memory_kind(&self) -> &'static str {
        match self.spec {
            DeviceSpec::Cpu => "host_rss_peak",
            DeviceSpec::Cuda(_) => "cuda_allocated_peak",
        }
    }

    /// Peak and current memory: process RSS on CPU, caching-allocator bytes on CUDA.
    pub fn memory(&self) -> Result<MemoryReading> {
        match self.spec {
            DeviceSpec::Cpu => Ok(MemoryReading {
                peak: proc_status_kib("VmHWM:")? * 1024,
                current: proc_status_kib("VmRSS:")? * 1024,
            }),
            DeviceSpec::Cuda(ordinal) => {
                let (peak, current, _reserved) = crate::ffi::cuda_memory_stats(ordinal as usize)?;
                Ok(MemoryReading { peak: peak.max(0) as u64, current: current.max(0) as u64 })
            }
        }
    }

    /// Starts a new peak-measurement window.
    ///
    /// On CPU this resets the kernel's peak-RSS counter (`/proc/self/clear_refs`, value 5).
    pub fn reset_peak_memory(&self) -> Result<()> {
        match self.spec {
            DeviceSpec::Cpu => {
                std::fs::write("/proc/self/clear_refs", "5").map_err(|e| Error::io("/proc/self/clear_refs", e))
            }
            DeviceSpec::Cuda(ordinal) => crate::ffi::cuda_reset_peak(ordinal as usize),
        }
    }

    /// Makes CUDA autocast use bf16 (tch's `autocast` defaults to fp16).
    pub fn set_autocast_bf16(&self) -> Result<()> {
        match self.spec {
            DeviceSpec::Cpu => Err(Error::Device("bf16 mixed precision is only available on CUDA".into())),
            DeviceSpec::Cuda(_) => crate::ffi::set_cuda_autocast_bf16(),
        }
    }

    /// Waits for queued device work (for timing).
    pub fn synchronize(&self) {
        if let tch::Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_pins_and_measures() {
        let d = pin(DeviceSpec::Cpu).unwrap();
        assert_eq!(d.device, tch::Device::Cpu);
        // Touch 64 MiB so the peak must rise above the reading before. RSS is process-wide and
        // tests run in parallel, so another test freeing memory inside the window can hide the
        // rise once; it cannot do so on every try.
        let mut tries = Vec::new();
        for _ in 0..5 {
            d.reset_peak_memory().unwrap();
            let before = d.memory().unwrap();
            let t = tch::Tensor::ones([16 * 1024 * 1024], (tch::Kind::Float, tch::Device::Cpu));
            let after = d.memory().unwrap();
            drop(t);
            let rose = after.peak >= before.current + 60 * 1024 * 1024;
            tries.push((before, after));
            if rose {
                break;
            }
        }
        let (before, after) = tries.last().unwrap();
        assert!(after.peak >= before.current + 60 * 1024 * 1024, "{tries:?}");
        assert!(d.set_autocast_bf16().is_err());
    }

    #[cfg(not(feature = "cuda-tests"))]
    #[test]
    fn cuda_without_gpu_is_a_clear_error() {
        // On a host without a GPU, pinning fails and says that first, before anything
        // about libtorch's CUDA backend (and with no Python traceback).
        let err = pin(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        match driver_device_count() {
            Err(_) | Ok(0) => {
                assert!(err.contains("cuda:0 requested but this host has no CUDA device"), "{err}");
                assert!(!err.contains("libtorch_cuda.so") && !err.contains("Traceback"), "{err}");
            }
            // A GPU host without the CUDA backend beside this build.
            Ok(_) => assert!(err.contains("libtorch_cuda.so") || err.contains("CUDA is not available"), "{err}"),
        }
    }
}
