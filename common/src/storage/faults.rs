//! Injected storage faults, for the chaos harness (`tests/chaos/`) and for anyone who wants to
//! see how a deployment copes with a flaky store. Off unless `HBAC_STORE_FAULTS` is set; it
//! acts on writes ([`Store::put`](super::Store::put) and [`Store::put_new`](super::Store::put_new)):
//!
//! ```text
//! HBAC_STORE_FAULTS="seed=7,fail=0.05,lose=0.05,crash=journal/@12"
//!   seed=S      the faults' random stream (default 0): the same seed, the same faults
//!   fail=P      a write fails before it reaches the store, with probability P
//!   lose=P      a write commits, then reports failure (its reply is lost), with probability P
//!   crash=K@N   the process aborts right after the N-th committed write whose key contains K,
//!               before anything learns that it committed (a kill in the middle of a write)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// The environment variable that turns faults on.
pub const VAR: &str = "HBAC_STORE_FAULTS";

/// What a write should suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail without writing.
    Fail,
    /// Write, then fail.
    Lose,
}

/// Faults parsed from [`VAR`].
#[derive(Debug)]
pub struct Faults {
    fail: f64,
    lose: f64,
    crash: Option<(String, u64)>,
    rng: Mutex<ChaCha8Rng>,
    matched: AtomicU64,
}

impl Faults {
    /// Parses a specification (the syntax in the module docs).
    pub fn parse(spec: &str) -> std::result::Result<Faults, String> {
        let mut f = Faults {
            fail: 0.0,
            lose: 0.0,
            crash: None,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(0)),
            matched: AtomicU64::new(0),
        };
        let probability = |v: &str| match v.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
            _ => Err(format!("{v:?} is not a probability in [0, 1]")),
        };
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not NAME=VALUE"))?;
            match name {
                "seed" => {
                    let seed = value.parse().map_err(|_| format!("seed {value:?}"))?;
                    f.rng = Mutex::new(ChaCha8Rng::seed_from_u64(seed));
                }
                "fail" => f.fail = probability(value)?,
                "lose" => f.lose = probability(value)?,
                "crash" => {
                    let (key, n) = value
                        .rsplit_once('@')
                        .ok_or_else(|| format!("crash={value:?} is not KEY@N"))?;
                    let n = n
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("crash={value:?}: N must be a count from 1"))?;
                    f.crash = Some((key.to_string(), n));
                }
                other => return Err(format!("unknown fault {other:?} (seed, fail, lose, crash)")),
            }
        }
        Ok(f)
    }

    /// The process's faults: `None` unless [`VAR`] is set; a malformed value is an error that
    /// says so (every store open reports it).
    pub fn global() -> Result<Option<&'static Faults>> {
        static FAULTS: OnceLock<std::result::Result<Option<Faults>, String>> = OnceLock::new();
        let parsed = FAULTS.get_or_init(|| match std::env::var(VAR) {
            Ok(spec) if !spec.trim().is_empty() => {
                let f = Faults::parse(&spec).map_err(|e| format!("{VAR}={spec:?}: {e}"))?;
                tracing::warn!(spec, "storage faults are being injected ({VAR})");
                Ok(Some(f))
            }
            _ => Ok(None),
        });
        match parsed {
            Ok(f) => Ok(f.as_ref()),
            Err(e) => Err(Error::BadUrl {
                url: VAR.into(),
                reason: e.clone(),
            }),
        }
    }

    /// Draws the fault (if any) for the next write.
    pub fn draw(&self) -> Option<Fault> {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let x: f64 = rng.random();
        if x < self.fail {
            Some(Fault::Fail)
        } else if x < self.fail + self.lose {
            Some(Fault::Lose)
        } else {
            None
        }
    }

    /// Called once a write of `path` has committed: aborts the process if it is the chosen one.
    pub fn committed(&self, path: &str) {
        let Some((key, n)) = &self.crash else { return };
        if path.contains(key.as_str()) && self.matched.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("{VAR}: aborting right after committing {path} (write {n} matching {key:?})");
            std::process::abort();
        }
    }

    /// The error an injected fault returns.
    pub fn error(url: &str, fault: Fault) -> Error {
        let detail = match fault {
            Fault::Fail => "injected fault: the write failed",
            Fault::Lose => "injected fault: the write committed but its reply was lost",
        };
        Error::Storage {
            url: url.into(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specifications_parse_and_bad_ones_say_why() {
        let f = Faults::parse("seed=3, fail=0.25,lose=0.5,crash=journal/@4").unwrap();
        assert_eq!((f.fail, f.lose), (0.25, 0.5));
        assert_eq!(f.crash, Some(("journal/".into(), 4)));
        for (bad, why) in [
            ("fail=2", "probability"),
            ("lose", "NAME=VALUE"),
            ("crash=journal", "KEY@N"),
            ("crash=x@0", "count from 1"),
            ("explode=1", "unknown fault"),
        ] {
            let e = Faults::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn draws_follow_the_seed_and_the_rates() {
        let draws = |spec: &str| {
            let f = Faults::parse(spec).unwrap();
            (0..4000).map(|_| f.draw()).collect::<Vec<_>>()
        };
        let a = draws("seed=1,fail=0.1,lose=0.2");
        assert_eq!(a, draws("seed=1,fail=0.1,lose=0.2"));
        assert_ne!(a, draws("seed=2,fail=0.1,lose=0.2"));
        let share = |f: Fault| a.iter().filter(|d| **d == Some(f)).count() as f64 / 4000.0;
        assert!(
            (share(Fault::Fail) - 0.1).abs() < 0.03,
            "{}",
            share(Fault::Fail)
        );
        assert!(
            (share(Fault::Lose) - 0.2).abs() < 0.03,
            "{}",
            share(Fault::Lose)
        );
        assert!(draws("fail=0").iter().all(Option::is_none));
    }
}
