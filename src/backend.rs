//! The burn backends this build carries: flex on the CPU always, CUDA with `--features cuda`,
//! wgpu (Vulkan, Metal, DX12) with `--features wgpu`. The GPU backends are burn's plain
//! `CubeBackend` (not its fusion wrapper), which runs hbac's CubeCL kernels. Library code stays
//! generic; only the binary names a backend. Each device is checked before first use, because
//! burn-cuda and burn-wgpu panic when the driver or adapter is missing.

use anyhow::{Result, bail};
use clap::ValueEnum;

/// CPU backend (burn-flex).
pub type Cpu = burn::backend::Flex;

/// CUDA backend (burn-cuda's runtime, without fusion).
#[cfg(feature = "cuda")]
pub type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// wgpu backend (without fusion).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// Where to train or predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    /// NVIDIA GPUs (a build with `--features cuda`).
    Cuda,
    /// Vulkan / Metal / DX12 GPUs: AMD, Intel, Apple (a build with `--features wgpu`).
    Wgpu,
}

/// The device of GPU slot `slot` of a worker.
#[cfg(feature = "cuda")]
pub fn cuda_device(slot: usize) -> burn::backend::cuda::CudaDevice {
    burn::backend::cuda::CudaDevice::new(slot)
}

/// The device of GPU slot `slot` of a worker: the system's default adapter for the first,
/// the `slot`-th discrete GPU for the others.
#[cfg(feature = "wgpu")]
pub fn wgpu_device(slot: usize) -> burn::backend::wgpu::WgpuDevice {
    use burn::backend::wgpu::WgpuDevice;
    match slot {
        0 => WgpuDevice::DefaultDevice,
        i => WgpuDevice::DiscreteGpu(i),
    }
}

/// Fails with a clear message unless this build can use `device` on this machine.
pub fn check(device: DeviceKind) -> Result<()> {
    match device {
        DeviceKind::Cpu => Ok(()),
        DeviceKind::Cuda => check_cuda(),
        DeviceKind::Wgpu => check_wgpu(),
    }
}

fn check_cuda() -> Result<()> {
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

fn check_wgpu() -> Result<()> {
    #[cfg(not(feature = "wgpu"))]
    bail!(
        "this hbac was built without wgpu support; rebuild with `cargo build --release --features wgpu`, or use --device cpu"
    );
    #[cfg(feature = "wgpu")]
    {
        use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup};
        // burn-wgpu panics when no adapter exists: set the device up here, where that panic
        // becomes an error (its own message is kept quiet).
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let setup = std::panic::catch_unwind(|| {
            init_setup::<AutoGraphicsApi>(&wgpu_device(0), Default::default());
        });
        std::panic::set_hook(hook);
        if setup.is_err() {
            bail!(
                "no usable GPU adapter for wgpu on this machine (Vulkan, Metal or DX12; on Linux a Vulkan driver such as Mesa's); use --device cpu"
            );
        }
        Ok(())
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
        let e = check(DeviceKind::Cuda).unwrap_err().to_string();
        assert!(e.contains("--device cpu"), "{e}");
    }

    #[test]
    fn wgpu_is_refused_clearly_without_the_feature() {
        if cfg!(feature = "wgpu") {
            return;
        }
        let e = check(DeviceKind::Wgpu).unwrap_err().to_string();
        assert!(e.contains("--features wgpu"), "{e}");
    }
}
