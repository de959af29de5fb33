//! Wall time per kernel, summed over calls: off unless [`enable`]d (one relaxed atomic load
//! per kernel call otherwise). `bench op_profile` uses it for the per-op breakdown of a real
//! training step.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<String, (usize, f64)>> = Mutex::new(BTreeMap::new());

/// Starts recording (and clears what was recorded).
pub fn enable() {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stops recording and returns `(kernel, calls, seconds)` per kernel.
pub fn take() -> Vec<(String, usize, f64)> {
    ENABLED.store(false, Ordering::Relaxed);
    let totals = std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|e| e.into_inner()));
    totals.into_iter().map(|(k, (n, s))| (k, n, s)).collect()
}

/// Runs `f`, adding its wall time to `label()` when recording.
pub(crate) fn time<T>(label: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = totals.entry(label()).or_default();
    entry.0 += 1;
    entry.1 += seconds;
    out
}
