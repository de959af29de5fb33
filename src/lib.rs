//! The `hbac` binary's command layer: clap structs ([`cli`]) and the thin glue that runs each
//! subcommand ([`commands::run`]) on the library crates (`hbac-common`, `hbac-coordinator`,
//! `hbac-worker`). A library so that tests can check command lines (e.g. the Kubernetes
//! manifests' arguments) against the real flag definitions.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod local;
pub mod predict;
mod recipe;
mod runner;

pub use runner::Exit;
