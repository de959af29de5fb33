//! The burn backends this build carries: flex on the CPU always, CUDA with `--features cuda`.
//! Library code stays generic; only the binary names a backend.

/// CPU backend (burn-flex).
pub type Cpu = burn::backend::Flex;
