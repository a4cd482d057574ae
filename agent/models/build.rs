//! Compiles `csrc/qsched_shim.cpp` against the libtorch headers (the same way torch-sys
//! compiles its own wrapper) and links it into the agent.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/qsched_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let libtorch = match std::env::var("LIBTORCH") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => panic!("LIBTORCH is not set: run ops/bootstrap-libtorch.sh (it sets it up in target/libtorch)"),
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/qsched_shim.cpp")
        .compile("qsched_shim");
    println!("cargo:rustc-link-search=native={}", libtorch.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
}
