//! Helpers shared by the integration tests: running the `hbac` binary and reading results.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `hbac` with `args` (and extra environment), returning its output.
pub fn hbac(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hbac"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("hbac runs")
}

/// Runs `hbac` and requires success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    ok_with(args, &[])
}

/// Runs `hbac` with extra environment and requires success, returning stdout.
pub fn ok_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = hbac(args, env);
    assert!(
        out.status.success(),
        "hbac {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `hbac`, requires failure, returning stderr.
pub fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = hbac(args, env);
    assert!(
        !out.status.success(),
        "hbac {args:?} should fail; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `hbac coordinator` of a reduced MobileNetV3 run (width 0.25, input pooled by 8, batch 16)
/// of `k` folds × `epochs` on loopback `port`, with a 2 s lease TTL.
pub fn coordinator_args(data: &str, out: &Path, port: u16, k: usize, epochs: usize) -> Vec<String> {
    let (listen, k, epochs) = (
        format!("127.0.0.1:{port}"),
        k.to_string(),
        epochs.to_string(),
    );
    [
        "coordinator",
        "--data",
        data,
        "--out",
        out.to_str().unwrap(),
        "--listen",
        &listen,
        "--k",
        &k,
        "--archs",
        "mobilenetv3-large",
        "--width",
        "0.25",
        "--downsample",
        "8",
        "--epochs",
        &epochs,
        "--batch-size",
        "16",
        "--lease-ttl",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

/// Writes a small synthetic data set into `dir` and returns its path as a string.
pub fn synth(dir: &Path, patients: usize, seed: u64) -> String {
    let d = dir.to_str().unwrap().to_string();
    ok(&[
        "synth",
        "--out",
        &d,
        "--patients",
        &patients.to_string(),
        "--seed",
        &seed.to_string(),
        "--test",
        "3",
        "--eeg-files",
        "1",
    ]);
    d
}

/// Files (not directories) directly in `dir`, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Copies the files directly in `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
