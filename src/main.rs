//! `hbac`: the single binary for every role (see `hbac --help`).

use std::process::ExitCode;

use clap::Parser;
use hbac::{cli, commands};

/// mimalloc, set to keep freed memory for the next training step (see
/// `hbac_worker::ops::cpu::retain_freed_memory`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    hbac_worker::ops::cpu::retain_freed_memory();
    let cli = cli::Cli::parse();
    cli::init_tracing(&cli.global);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<hbac::Exit>() {
            Some(ending) => {
                eprintln!("{ending}");
                ExitCode::from(ending.code())
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
