//! The burn backends this build carries: flex on the CPU always, CUDA with `--features cuda`,
//! wgpu (Vulkan, Metal, DX12) with `--features wgpu`. The GPU backends are burn's plain
//! `CubeBackend` (not its fusion wrapper), which runs hbac's CubeCL kernels. Library code stays
//! generic; only the binary names a backend. Each device is checked before first use, because
//! burn-cuda and burn-wgpu panic when the driver or adapter is missing.

use anyhow::Result;
use burn::backend::Autodiff;
use clap::ValueEnum;
use hbac_worker::executor::{Executor, TrainExecutor};
use hbac_worker::ops::TrainBackend;

use std::sync::Arc;

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

/// Work that runs on whichever backend `--device` picks. [`run_on`] is the one place that
/// maps a [`DeviceKind`] to a burn backend; a task is written once, generic over it.
pub trait OnBackend {
    type Output;
    /// Runs the task on `B`, the autodiff backend (training); prediction uses
    /// `B::InnerBackend`. `device(slot)` is the device of GPU slot `slot` (the CPU for any).
    fn run<B: TrainBackend>(self, device: fn(usize) -> B::Device) -> Self::Output;
}

/// A future [`OnBackend::run`] returns for async work (each backend's future has its own type).
pub type Task<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// Checks `kind` ([`check`]), then runs `task` on its backend.
pub fn run_on<T: OnBackend>(kind: DeviceKind, task: T) -> Result<T::Output> {
    check(kind)?;
    Ok(match kind {
        DeviceKind::Cpu => task.run::<Autodiff<Cpu>>(|_| Default::default()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => task.run::<Autodiff<Cuda>>(cuda_device),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => task.run::<Autodiff<Wgpu>>(wgpu_device),
        #[allow(unreachable_patterns)]
        other => unreachable!("check refuses {other:?} in this build"),
    })
}

/// The training executor of a worker on `kind`: one device per GPU slot.
pub fn executor(kind: DeviceKind) -> Result<Arc<dyn Executor>> {
    struct Train;
    impl OnBackend for Train {
        type Output = Arc<dyn Executor>;
        fn run<B: TrainBackend>(self, device: fn(usize) -> B::Device) -> Self::Output {
            Arc::new(TrainExecutor::<B> {
                device: Arc::new(device),
            })
        }
    }
    run_on(kind, Train)
}

/// The wire's name for the backend a worker trains on.
pub fn wire_backend(kind: DeviceKind) -> hbac_common::proto::Backend {
    use hbac_common::proto::Backend;
    match kind {
        DeviceKind::Cpu => Backend::Cpu,
        DeviceKind::Cuda => Backend::Cuda,
        DeviceKind::Wgpu => Backend::Wgpu,
    }
}

/// Fails with a clear message unless this build can use `device` on this machine.
pub fn check(device: DeviceKind) -> Result<()> {
    describe(device).map(|_| ())
}

/// [`check`], and a line saying what was found (`hbac device`).
pub fn describe(device: DeviceKind) -> Result<String> {
    match device {
        DeviceKind::Cpu => Ok(format!(
            "cpu: {} threads",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )),
        DeviceKind::Cuda => check_cuda(),
        DeviceKind::Wgpu => check_wgpu().map(|()| "wgpu: adapter ready".to_string()),
    }
}

fn check_cuda() -> Result<String> {
    #[cfg(not(feature = "cuda"))]
    anyhow::bail!(
        "this hbac was built without CUDA support; rebuild with `cargo build --release --features cuda`, or use --device cpu"
    );
    #[cfg(feature = "cuda")]
    {
        let report = cuda::probe().map_err(|e| anyhow::anyhow!("{e}; or use --device cpu"))?;
        tracing::info!(%report, "cuda ready");
        configure_kernel_cache();
        Ok(format!("cuda: {report}"))
    }
}

/// What `hbac` needs from a CUDA machine, checked in the order a kernel needs it: the driver
/// (`libcuda.so.1`, a GPU), NVRTC (the run-time compiler cubecl compiles every kernel with,
/// under the names cudarc looks for) and its builtins library, and the CUDA headers cubecl's
/// kernels include (`$CUDA_PATH/include/cuda_runtime.h`). A missing piece is an error that says
/// where to find it, instead of the panic cudarc and cubecl-cuda raise on first use.
#[cfg(feature = "cuda")]
pub mod cuda {
    use std::fmt;
    use std::path::{Path, PathBuf};

    /// The CUDA version this binary was built for, from `CUDARC_CUDA_VERSION` at build time
    /// (e.g. 13000 → 13.0); `None` when cudarc took it from the build machine's nvcc.
    pub fn built_for() -> Option<(u32, u32)> {
        let v = option_env!("HBAC_CUDA_VERSION")?.parse::<u32>().ok()?;
        Some((v / 1000, v % 1000 / 10))
    }

    fn built_for_text() -> String {
        built_for().map_or("the build machine's CUDA".into(), |(a, b)| {
            format!("CUDA {a}.{b}")
        })
    }

    /// What [`probe`] found.
    #[derive(Debug, Clone)]
    pub struct CudaReport {
        pub gpus: usize,
        pub gpu_name: String,
        /// The driver's CUDA version, e.g. (13, 0).
        pub driver: (u32, u32),
        /// NVRTC's version, e.g. (13, 0).
        pub nvrtc: (u32, u32),
        /// The CUDA root whose `include/` the kernels compile against.
        pub cuda_path: PathBuf,
    }

    impl fmt::Display for CudaReport {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "{} GPU(s), {}; driver CUDA {}.{}; nvrtc {}.{}; headers {}; built for {}",
                self.gpus,
                self.gpu_name,
                self.driver.0,
                self.driver.1,
                self.nvrtc.0,
                self.nvrtc.1,
                self.cuda_path.join("include").display(),
                built_for_text()
            )
        }
    }

    /// Checks the driver, NVRTC and the headers, and compiles one kernel that includes
    /// `cuda_runtime.h` as cubecl's kernels do.
    pub fn probe() -> Result<CudaReport, String> {
        use cudarc::driver::{result as drv, sys as dsys};
        use cudarc::nvrtc::sys as nsys;
        let built = built_for_text();
        let major = built_for().map_or("<major>".into(), |(a, _)| a.to_string());
        // SAFETY: these probes only dlopen the libraries under the names cudarc itself tries.
        if !unsafe { dsys::is_culib_present() } {
            return Err(
                "no NVIDIA driver on this machine: libcuda.so.1 could not be loaded (install the driver, or in a container run with the NVIDIA container runtime)"
                    .into(),
            );
        }
        drv::init().map_err(|e| format!("the NVIDIA driver did not initialise: {e:?}"))?;
        let gpus = drv::device::get_count()
            .map_err(|e| format!("the NVIDIA driver could not count GPUs: {e:?}"))?
            as usize;
        if gpus == 0 {
            return Err("the NVIDIA driver sees no GPU".into());
        }
        let gpu_name = drv::device::get(0)
            .and_then(drv::device::get_name)
            .unwrap_or_else(|_| "unnamed GPU".into());
        let mut v = 0;
        // SAFETY: the driver library is loaded and initialised; `v` outlives the call.
        unsafe { dsys::cuDriverGetVersion(&mut v) }
            .result()
            .map_err(|e| format!("the NVIDIA driver did not report its version: {e:?}"))?;
        let driver = (v as u32 / 1000, v as u32 % 1000 / 10);

        // SAFETY: as above, for the NVRTC library.
        if !unsafe { nsys::is_culib_present() } {
            let found = find_nvrtc();
            let hint = match found.first() {
                Some(dir) => format!(
                    "; one is in {}: export LD_LIBRARY_PATH={}:$LD_LIBRARY_PATH",
                    dir.display(),
                    dir.display()
                ),
                None => format!(
                    "; install {built}'s NVRTC (the toolkit, or `pip install nvidia-cuda-nvrtc`) and add its lib folder to LD_LIBRARY_PATH"
                ),
            };
            return Err(format!(
                "NVRTC, CUDA's run-time compiler, could not be loaded: this hbac was built for {built} and looks for libnvrtc.so or libnvrtc.so.{major}{hint}"
            ));
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: NVRTC is loaded; the outputs outlive the call.
        unsafe { nsys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| format!("NVRTC did not report its version: {e:?}"))?;
        let nvrtc = (major as u32, minor as u32);
        if nvrtc > driver {
            return Err(format!(
                "NVRTC {}.{} is newer than the driver's CUDA {}.{}: the driver cannot load what it compiles; use the NVRTC of CUDA {}.{} or older (LD_LIBRARY_PATH), or update the driver",
                nvrtc.0, nvrtc.1, driver.0, driver.1, driver.0, driver.1
            ));
        }

        let cuda_path = cubecl::cuda::install::cuda_path()
            .filter(|p| p.join("include/cuda_runtime.h").is_file())
            .ok_or_else(|| {
                let set = std::env::var("CUDA_PATH").map_or_else(
                    |_| "CUDA_PATH is not set and /usr/local/cuda, /opt/cuda and /usr hold no CUDA toolkit".to_string(),
                    |p| format!("CUDA_PATH={p} has no include/cuda_runtime.h"),
                );
                format!(
                    "the CUDA headers cubecl compiles every kernel against are missing ({set}): install the toolkit's headers (Debian/Ubuntu: cuda-cudart-dev, cuda-nvrtc-dev; containers: an nvidia/cuda -devel image) and set CUDA_PATH to the folder that holds include/cuda_runtime.h"
                )
            })?;
        compile_test_kernel(&cuda_path)?;
        Ok(CudaReport {
            gpus,
            gpu_name,
            driver,
            nvrtc,
            cuda_path,
        })
    }

    /// Compiles a kernel that includes `cuda_runtime.h` the way cubecl-cuda does: proves that
    /// NVRTC, its builtins library (`libnvrtc-builtins.so.*`, found beside libnvrtc) and the
    /// headers work together.
    fn compile_test_kernel(cuda_path: &Path) -> Result<(), String> {
        use cudarc::nvrtc::{CompileError, CompileOptions, compile_ptx_with_opts};
        let include = cuda_path.join("include");
        let mut include_paths = vec![include.display().to_string()];
        if include.join("cccl").is_dir() {
            include_paths.push(include.join("cccl").display().to_string());
        }
        let src = "#include <cuda_runtime.h>\nextern \"C\" __global__ void hbac_probe(float* x) { x[threadIdx.x] *= 2.0f; }\n";
        match compile_ptx_with_opts(
            src,
            CompileOptions {
                include_paths,
                ..Default::default()
            },
        ) {
            Ok(_) => Ok(()),
            Err(CompileError::CompileError { log, .. }) => Err(format!(
                "NVRTC could not compile a kernel against {}: {}",
                include.display(),
                log.to_string_lossy().trim()
            )),
            Err(e) => Err(format!(
                "NVRTC failed ({e:?}); its builtins library (libnvrtc-builtins.so.*) must be in the same folder as libnvrtc"
            )),
        }
    }

    /// Folders that hold a libnvrtc, where CUDA toolkits and pip's NVIDIA wheels put it.
    fn find_nvrtc() -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        if let Ok(p) = std::env::var("CUDA_PATH") {
            roots.push(PathBuf::from(p));
        }
        roots.extend(["/usr/local/cuda", "/opt/cuda"].map(PathBuf::from));
        let mut dirs: Vec<PathBuf> = roots
            .iter()
            .flat_map(|r| [r.join("lib64"), r.join("lib")])
            .collect();
        dirs.push(PathBuf::from("/usr/lib/x86_64-linux-gnu"));
        // pip wheels: <site-packages>/nvidia/{cu13,cuda_nvrtc}/lib
        for venv in ["/opt/torch/.venv", "/usr/local", "/usr"] {
            if let Ok(entries) = std::fs::read_dir(Path::new(venv).join("lib")) {
                for e in entries.flatten() {
                    let nvidia = e.path().join("site-packages/nvidia");
                    for sub in ["cu13", "cu12", "cuda_nvrtc"] {
                        dirs.push(nvidia.join(sub).join("lib"));
                    }
                }
            }
        }
        dirs.into_iter()
            .filter(|d| {
                std::fs::read_dir(d).is_ok_and(|mut it| {
                    it.any(|e| {
                        e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libnvrtc.so"))
                    })
                })
            })
            .collect()
    }
}

/// Keeps compiled GPU kernels and autotune results between runs, so only a machine's first
/// run compiles and tunes: in `$HBAC_KERNEL_CACHE`, else `$XDG_CACHE_HOME/hbac/kernels` or
/// `~/.cache/hbac/kernels`. A `cubecl.toml` or `burn.toml` in the working folder or above it
/// takes precedence (cubecl's own configuration, left as the user wrote it).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn configure_kernel_cache() {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let configured = std::env::current_dir().is_ok_and(|cwd| {
            cwd.ancestors().any(|d| {
                ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"]
                    .iter()
                    .any(|f| d.join(f).is_file())
            })
        });
        let Some(dir) = kernel_cache_dir() else {
            return;
        };
        if configured {
            return;
        }
        let mut config = CubeClRuntimeConfig::default().override_from_env();
        config.compilation.cache = Some(CacheConfig::File(dir.clone()));
        config.autotune.cache = CacheConfig::File(dir.clone());
        // cubecl panics if its configuration was already read; nothing has touched the
        // device yet when the check runs, but a second backend in one process could have.
        let set = std::panic::catch_unwind(|| CubeClRuntimeConfig::set(config));
        if set.is_ok() {
            tracing::info!(dir = %dir.display(), "gpu kernel cache");
        }
    });
}

/// The kernel cache folder (see [`configure_kernel_cache`]).
pub fn kernel_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(d) = std::env::var_os("HBAC_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("hbac").join("kernels"))
}

fn check_wgpu() -> Result<()> {
    #[cfg(not(feature = "wgpu"))]
    anyhow::bail!(
        "this hbac was built without wgpu support; rebuild with `cargo build --release --features wgpu`, or use --device cpu"
    );
    #[cfg(feature = "wgpu")]
    {
        use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup};
        // The device is set up once per process (burn-wgpu panics on a second set-up, and a
        // command may dispatch several tasks); every later check returns the first answer.
        static SETUP: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        let setup = SETUP.get_or_init(|| {
            // burn-wgpu panics when no adapter exists: set the device up here, where that
            // panic becomes an error (its own message is kept quiet and quoted below).
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            // Before the device exists: cubecl reads its configuration once, at set-up.
            configure_kernel_cache();
            let setup = std::panic::catch_unwind(|| {
                init_setup::<AutoGraphicsApi>(&wgpu_device(0), Default::default());
            });
            std::panic::set_hook(hook);
            setup.map_err(|panic| {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!(
                    "no usable GPU adapter for wgpu on this machine (Vulkan, Metal or DX12; on Linux a Vulkan driver such as Mesa's){}; use --device cpu",
                    if detail.is_empty() { String::new() } else { format!(": {detail}") }
                )
            })
        });
        setup.clone().map_err(anyhow::Error::msg)
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
