//! What the gRPC service, the HTTP port and the run loop share ([`Shared`]): the scheduling
//! [`State`] under a lock, the plan, and the claimed journal with group commit — a write
//! covers every change made before it started, and a coordinator found fenced writes nothing
//! more.

use std::sync::Mutex;
use std::time::Duration;

use hbac_common::storage::Store;
use tokio::time::Instant;

use crate::jobs::JobDef;
use crate::journal::{Journal, JournalError};
use crate::plan::Plan;
use crate::state::State;
use crate::view::RunView;
use hbac_common::records::RunReport;

/// What the service and the run loop share.
pub struct Shared {
    pub state: Mutex<State>,
    pub plan: Plan,
    pub jobs: Vec<JobDef>,
    pub out: Store,
    /// The claimed journal and the state version it holds (group commit: one write covers
    /// every change made before it started).
    journal: tokio::sync::Mutex<Committed>,
    /// Set once a newer coordinator has claimed the run (this one's generation, the newer
    /// one's): nothing more is leased or written.
    pub fenced: std::sync::OnceLock<(u64, u64)>,
    /// Woken whenever a job ends or the run state changes.
    pub changed: tokio::sync::Notify,
    /// The run's results, set once they are written: until then a run whose jobs are all done
    /// is "aggregating", not "finished".
    pub report: std::sync::OnceLock<RunReport>,
}

struct Committed {
    journal: Journal,
    version: Option<u64>,
    at: Instant,
}

impl Shared {
    /// Shares `state`, whose journal is `journal`.
    pub fn new(state: State, plan: Plan, out: Store, journal: Journal) -> Self {
        Shared {
            jobs: plan.jobs(),
            state: Mutex::new(state),
            plan,
            out,
            journal: tokio::sync::Mutex::new(Committed {
                journal,
                version: None,
                at: Instant::now(),
            }),
            fenced: std::sync::OnceLock::new(),
            changed: tokio::sync::Notify::new(),
            report: std::sync::OnceLock::new(),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the journal holds state version `version` (or a later one): returns at once
    /// if a write that started after it has finished, else writes the latest state. A
    /// coordinator found fenced remembers it and writes nothing more.
    pub async fn commit(&self, version: u64) -> Result<(), JournalError> {
        self.write(Some(version), false).await
    }

    /// Writes the journal if anything changed since the last write, or if the last write is
    /// older than `renew` (an owner's claim is renewed by writing); `released` marks the end.
    pub async fn renew(&self, renew: Duration, released: bool) -> Result<(), JournalError> {
        let due = {
            let c = self.journal.lock().await;
            released || c.at.elapsed() >= renew || c.version != Some(self.lock().version())
        };
        if due {
            self.write(None, released).await?;
        }
        Ok(())
    }

    /// The error a fenced coordinator answers with (`None` while it owns the run).
    pub fn fence(&self) -> Option<JournalError> {
        self.fenced
            .get()
            .map(|&(generation, newer)| JournalError::Fenced {
                generation,
                newer,
                out: self.out.root().to_string(),
            })
    }

    async fn write(&self, version: Option<u64>, released: bool) -> Result<(), JournalError> {
        if let Some(e) = self.fence() {
            return Err(e);
        }
        let mut c = self.journal.lock().await;
        if let (Some(v), Some(done)) = (version, c.version)
            && done >= v
            && !released
        {
            return Ok(());
        }
        let (entries, drained, v) = {
            let s = self.lock();
            (s.entries(), s.drained(), s.version())
        };
        match c
            .journal
            .append(&self.plan, entries, drained, released)
            .await
        {
            Ok(()) => {
                c.version = Some(v);
                c.at = Instant::now();
                Ok(())
            }
            Err(
                e @ JournalError::Fenced {
                    generation, newer, ..
                },
            ) => {
                let _ = self.fenced.set((generation, newer));
                self.changed.notify_waiters();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The run as people look at it (the dashboard, `/api/run`).
    pub fn view(&self) -> RunView {
        let s = self.lock();
        RunView::of(
            &s,
            &self.plan,
            self.out.root(),
            self.report.get(),
            Instant::now().into_std(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;

    /// A coordinator replaced by a newer one says so with both generations, on every later
    /// write and call (not a message rebuilt with generation 0).
    #[tokio::test]
    async fn a_fenced_coordinator_names_both_generations() {
        use std::collections::BTreeMap;
        let out = Store::create("memory://service-fence").unwrap();
        let plan = crate::plan::test_plan(out.root(), "a", serde_json::json!({"epochs": 1}));
        let quick = Duration::from_millis(50);
        let (journal, _) = Journal::claim(&out, &plan, "old", quick).await.unwrap();
        let settings = crate::state::Settings {
            lease_ttl: quick,
            max_attempts: 1,
            max_disruptions: 1,
            job_timeout: quick,
            stall_timeout: quick,
            worker_grace: quick,
        };
        let state = State::new(
            plan.jobs(),
            &BTreeMap::new(),
            Default::default(),
            settings,
            std::time::Instant::now(),
        );
        let shared = Shared::new(state, plan.clone(), out.clone(), journal);
        shared.renew(Duration::ZERO, false).await.unwrap();
        assert!(shared.fence().is_none());
        tokio::time::sleep(quick * 3).await;
        let (_newer, _) = Journal::claim(&out, &plan, "new", quick).await.unwrap();
        for _ in 0..2 {
            let e = shared.renew(Duration::ZERO, false).await.unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("generation 1") && text.contains("generation 2"),
                "{text}"
            );
        }
        let e = shared.fence().unwrap().to_string();
        assert!(e.contains("generation 1") && e.contains(out.root()), "{e}");
    }
}
