//! Progress bars for long work, one style for every command. They draw on stderr only when it
//! is a terminal, so logs and CI output stay clean. Every bar lives in one process-wide
//! [`MultiProgress`], and log lines go through [`LogWriter`], which lifts the bars while it
//! writes, so logs never overdraw a bar.

use std::io::Write;
use std::sync::LazyLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// The process's bars (stderr; hidden when stderr is not a terminal).
pub fn bars() -> &'static MultiProgress {
    &BARS
}

/// A bar of `len` steps labelled `what` (e.g. "prepare").
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = bars().add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Stderr for log lines: each write is done with the bars lifted, then they are redrawn below
/// it (tracing's formatter writes one whole event per call).
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
