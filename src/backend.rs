//! The burn backends this build carries: flex on the CPU always, CUDA with `--features cuda`.
//! Library code stays generic; only the binary names a backend. Before touching CUDA, the
//! driver library is loaded by hand, because burn-cuda panics when it is missing.

use anyhow::{Result, bail};
use clap::ValueEnum;

/// CPU backend (burn-flex).
pub type Cpu = burn::backend::Flex;

/// CUDA backend (burn-cuda).
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;

/// Where to train or predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Fails with a clear message unless this build can use CUDA on this machine.
pub fn check_cuda() -> Result<()> {
    if !cfg!(feature = "cuda") {
        bail!(
            "this hbac was built without CUDA support; rebuild with `cargo build --release --features cuda`, or use --device cpu"
        );
    }
    // SAFETY: loading the NVIDIA driver library runs its initialisers only, as any CUDA program does.
    match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "no usable NVIDIA driver on this machine: libcuda.so.1 could not be loaded ({e}); use --device cpu"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_is_refused_clearly_when_unavailable() {
        // This machine has neither the cuda feature in default builds nor an NVIDIA driver.
        if cfg!(feature = "cuda") && std::path::Path::new("/dev/nvidiactl").exists() {
            return;
        }
        let e = check_cuda().unwrap_err().to_string();
        assert!(e.contains("--device cpu"), "{e}");
    }
}
