//! Records the CUDA version a `--features cuda` build targets (cudarc's `CUDARC_CUDA_VERSION`),
//! so `backend::cuda::probe` can say which NVRTC the binary looks for.

fn main() {
    println!("cargo:rerun-if-env-changed=CUDARC_CUDA_VERSION");
    if let Ok(v) = std::env::var("CUDARC_CUDA_VERSION") {
        println!("cargo:rustc-env=HBAC_CUDA_VERSION={v}");
    }
}
