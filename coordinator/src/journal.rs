//! The run's journal and its single owner, with nothing but object storage: an append-only log
//! of create-only snapshots, and a claim marker per coordinator generation.
//!
//! ```text
//! <out>/journal/0000000042.json   snapshot 42: owner, plan, every job's record, drained workers
//! <out>/journal/owner-000003      the claim of generation 3 (never deleted)
//! ```
//!
//! **Writes.** A snapshot is written with a conditional create ([`Store::put_new`]) at the next
//! sequence number, so no two writers can both write the same entry; readers take the highest.
//! **Claiming.** A starting coordinator reads the latest snapshot; if its owner wrote it less
//! than an owner lifetime ago, it watches the log for that long and refuses the run if the
//! owner is still writing (a live coordinator renews its claim with an entry at least every
//! third of a lifetime). Then it creates the next generation's marker — creating it fails if
//! another coordinator got there first — and re-reads the log.
//! **Fencing.** After every write, and before acknowledging anything that depends on it, the
//! owner checks that no next-generation marker exists. A coordinator that finds one has been
//! replaced: its write is ignored by the new owner's history, nothing it wrote is
//! acknowledged, and it stops ([`JournalError::Fenced`]). Once the marker exists, the new owner
//! has read (or will read) every entry the old owner wrote before it, so every result that was
//! ever acknowledged is in the new owner's state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hbac_common::error::Location;
use hbac_common::storage::Store;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::jobs::{JobEntry, JobResult};
use crate::plan::Plan;

/// The journal folder inside the output root.
pub const DIR: &str = "journal";
/// The journal of hbac before generations (one `journal.json`, rewritten in place): read once
/// to carry its results over.
pub const LEGACY: &str = "journal.json";
/// Snapshots kept behind the latest (older ones are deleted).
const KEEP: u64 = 16;

/// Why the journal could not be claimed or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Storage(#[from] hbac_common::Error),
    #[error(
        "this coordinator (generation {generation}) was replaced by generation {newer} and \
         stops: another coordinator owns the run in {out}"
    )]
    Fenced {
        generation: u64,
        newer: u64,
        out: String,
    },
    #[error(
        "the run in {out} is owned by coordinator {owner:?} (generation {generation}), which is \
         still writing its journal; stop it first, or use another --out"
    )]
    Owned {
        out: String,
        owner: String,
        generation: u64,
    },
    #[error(
        "{url}: this output root holds a run with another plan (data, folds, architectures or \
         training settings differ); use a new --out, or delete the journal to start over"
    )]
    OtherPlan { url: String },
}

/// Who wrote a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The coordinator's id (`--id`, by default host name and process id).
    pub id: String,
    pub generation: u64,
    /// When the snapshot was written (Unix milliseconds, the writer's clock).
    pub written_ms: u64,
    /// The owner let go of the run (it ended): the next coordinator may claim it at once.
    pub released: bool,
}

/// One journal entry: the whole durable state of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    pub seq: u64,
    pub owner: Owner,
    pub plan: Plan,
    pub jobs: BTreeMap<String, JobEntry>,
    /// Worker ids drained by `hbac drain`.
    pub drained: BTreeSet<String>,
}

/// The journal format written now.
pub const VERSION: u32 = 2;

impl Snapshot {
    /// The accepted results, by job id.
    pub fn done(&self) -> std::collections::HashMap<String, JobResult> {
        self.jobs
            .iter()
            .filter_map(|(id, e)| Some((id.clone(), e.result.clone()?)))
            .collect()
    }
}

/// The run's latest journal snapshot in output root `out`, if any (for status tools and tests).
pub async fn read(out: &Store) -> hbac_common::Result<Option<Snapshot>> {
    latest(&out.sub(DIR)).await
}

/// A claimed journal: the only writer of the run while no newer generation exists.
pub struct Journal {
    dir: Store,
    out: String,
    id: String,
    generation: u64,
    next: u64,
}

fn entry_key(seq: u64) -> String {
    format!("{seq:010}.json")
}

fn marker_key(generation: u64) -> String {
    format!("owner-{generation:06}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sequence numbers of the entries and the generations of the markers in `dir`.
async fn listing(dir: &Store) -> hbac_common::Result<(Vec<u64>, u64)> {
    let (mut seqs, mut generation) = (Vec::new(), 0);
    for (key, _) in dir.list("").await? {
        if let Some(n) = key.strip_suffix(".json").and_then(|n| n.parse().ok()) {
            seqs.push(n);
        } else if let Some(g) = key.strip_prefix("owner-").and_then(|g| g.parse().ok()) {
            generation = generation.max(g);
        }
    }
    seqs.sort_unstable();
    Ok((seqs, generation))
}

/// The latest snapshot in `dir`, if any.
async fn latest(dir: &Store) -> hbac_common::Result<Option<Snapshot>> {
    let (seqs, _) = listing(dir).await?;
    let Some(&seq) = seqs.last() else {
        return Ok(None);
    };
    let key = entry_key(seq);
    let url = dir.url(&key);
    let bytes = dir.get(&key).await?;
    // The version first: a newer hbac's entry is refused as such, whatever else it holds.
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("version")?.as_u64());
    if let Some(v) = version.filter(|&v| v > u64::from(VERSION)) {
        return Err(hbac_common::Error::invalid(
            Location::file(&url),
            format!(
                "journal format version {v}: written by a newer hbac (this one reads up to \
                 version {VERSION}); use that hbac"
            ),
        ));
    }
    let snap: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
        hbac_common::Error::invalid(Location::file(&url), format!("not a journal entry: {e}"))
    })?;
    Ok(Some(snap))
}

/// Results of a journal written before generations (`journal.json`), as job records.
async fn legacy(out: &Store) -> hbac_common::Result<Option<(Plan, BTreeMap<String, JobEntry>)>> {
    #[derive(Deserialize)]
    struct V1 {
        plan: Plan,
        done: BTreeMap<String, JobResult>,
    }
    if !out.exists(LEGACY).await? {
        return Ok(None);
    }
    let url = out.url(LEGACY);
    let v1: V1 = serde_json::from_slice(&out.get(LEGACY).await?).map_err(|e| {
        hbac_common::Error::invalid(Location::file(&url), format!("not a journal: {e}"))
    })?;
    let jobs = v1
        .done
        .into_iter()
        .map(|(id, r)| {
            let entry = JobEntry {
                attempts: r.attempt,
                result: Some(r),
                ..JobEntry::default()
            };
            (id, entry)
        })
        .collect();
    Ok(Some((v1.plan, jobs)))
}

impl Journal {
    /// Claims the run in `out` for coordinator `id`, waiting up to `lifetime` to see whether a
    /// previous owner is still alive. Returns the journal and the run's durable state so far
    /// (`None` for a new run). A run of another plan, or one still owned, is refused.
    pub async fn claim(
        out: &Store,
        plan: &Plan,
        id: &str,
        lifetime: Duration,
    ) -> Result<(Journal, Option<Snapshot>), JournalError> {
        let dir = out.sub(DIR);
        let mut seen = latest(&dir).await?;
        if let Some(s) = &seen {
            let age = now_ms().saturating_sub(s.owner.written_ms);
            if !s.owner.released && age < lifetime.as_millis() as u64 {
                info!(
                    owner = s.owner.id,
                    generation = s.owner.generation,
                    "the journal was written {age} ms ago; checking whether its owner is alive"
                );
                tokio::time::sleep(lifetime).await;
                let now = latest(&dir).await?;
                if now.as_ref().map(|n| n.seq) != Some(s.seq) {
                    let owner = now.map(|n| n.owner).unwrap_or_else(|| s.owner.clone());
                    return Err(JournalError::Owned {
                        out: out.root().to_string(),
                        owner: owner.id,
                        generation: owner.generation,
                    });
                }
            }
        }
        let (_, newest_marker) = listing(&dir).await?;
        let generation = newest_marker.max(seen.as_ref().map_or(0, |s| s.owner.generation)) + 1;
        if !dir.put_new(&marker_key(generation), id.to_string()).await? {
            return Err(JournalError::Owned {
                out: out.root().to_string(),
                owner: String::from_utf8_lossy(&dir.get(&marker_key(generation)).await?)
                    .into_owned(),
                generation,
            });
        }
        // Whatever the previous owner wrote before the marker existed is in what we read now.
        if seen.is_some() {
            seen = latest(&dir).await?;
        }
        let seen = match seen {
            Some(s) => Some(s),
            None => legacy(out).await?.map(|(plan, jobs)| Snapshot {
                version: VERSION,
                seq: 0,
                owner: Owner {
                    id: String::new(),
                    generation: 0,
                    written_ms: 0,
                    released: true,
                },
                plan,
                jobs,
                drained: BTreeSet::new(),
            }),
        };
        if let Some(s) = &seen
            && !s.plan.same_run(plan)
        {
            return Err(JournalError::OtherPlan {
                url: dir.url(&entry_key(s.seq)),
            });
        }
        info!(generation, id, "claimed the run");
        let journal = Journal {
            next: seen.as_ref().map_or(0, |s| s.seq + 1),
            dir,
            out: out.root().to_string(),
            id: id.to_string(),
            generation,
        };
        Ok((journal, seen))
    }

    /// This owner's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Fails with [`JournalError::Fenced`] if a newer generation has claimed the run.
    pub async fn check(&self) -> Result<(), JournalError> {
        if self.dir.exists(&marker_key(self.generation + 1)).await? {
            let (_, newer) = listing(&self.dir).await?;
            return Err(JournalError::Fenced {
                generation: self.generation,
                newer: newer.max(self.generation + 1),
                out: self.out.clone(),
            });
        }
        Ok(())
    }

    /// Appends `jobs` and `drained` as the next snapshot (`released`: the run is over). Once
    /// this returns `Ok`, the snapshot is durable and this coordinator still owns the run.
    pub async fn append(
        &mut self,
        plan: &Plan,
        jobs: BTreeMap<String, JobEntry>,
        drained: BTreeSet<String>,
        released: bool,
    ) -> Result<(), JournalError> {
        let mut snap = Snapshot {
            version: VERSION,
            seq: self.next,
            owner: Owner {
                id: self.id.clone(),
                generation: self.generation,
                written_ms: now_ms(),
                released,
            },
            plan: plan.clone(),
            jobs,
            drained,
        };
        loop {
            snap.seq = self.next;
            let bytes = serde_json::to_vec(&snap).expect("serialisable");
            if self.dir.put_new(&entry_key(snap.seq), bytes).await? {
                break;
            }
            // The slot is taken: by a newer owner (we are fenced), or by an unacknowledged
            // write of an older one or of our own whose reply was lost; go past it.
            self.check().await?;
            let (seqs, _) = listing(&self.dir).await?;
            self.next = seqs.last().map_or(self.next, |s| s + 1).max(self.next + 1);
        }
        self.next = snap.seq + 1;
        self.check().await?;
        if snap.seq.is_multiple_of(KEEP) && snap.seq >= KEEP {
            self.prune(snap.seq - KEEP).await;
        }
        Ok(())
    }

    /// Deletes the entries before `below` (best effort: a failure only leaves them there).
    async fn prune(&self, below: u64) {
        let seqs = match listing(&self.dir).await {
            Ok((seqs, _)) => seqs,
            Err(e) => return warn!(error = %e, "could not list the journal to prune it"),
        };
        for seq in seqs.into_iter().filter(|s| *s < below) {
            if let Err(e) = self.dir.delete(&entry_key(seq)).await {
                return warn!(error = %e, "could not prune the journal");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(out: &str) -> Plan {
        crate::plan::test_plan(
            out,
            "a",
            serde_json::json!({"epochs": 2, "loader_threads": 2}),
        )
    }

    fn done(lease: &str) -> BTreeMap<String, JobEntry> {
        let entry = JobEntry {
            attempts: 1,
            result: Some(JobResult {
                lease_id: lease.into(),
                out_url: "u".into(),
                summary_json: "{}".into(),
                attempt: 1,
                worker: "w".into(),
            }),
            ..JobEntry::default()
        };
        [("a-fold0".to_string(), entry)].into()
    }

    const QUICK: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_new_owner_fences_the_old_one_and_sees_what_it_acknowledged() {
        let out = Store::create("memory://journal-fence").unwrap();
        let p = plan(out.root());
        let (mut a, seen) = Journal::claim(&out, &p, "a", QUICK).await.unwrap();
        assert!(seen.is_none());
        a.append(&p, done("L1"), BTreeSet::new(), false)
            .await
            .unwrap();
        // b starts while a is alive: a keeps writing while b watches, so b refuses.
        let watcher = tokio::spawn({
            let (out, p) = (out.clone(), p.clone());
            async move { Journal::claim(&out, &p, "b", Duration::from_millis(400)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.append(&p, done("L1"), BTreeSet::new(), false)
            .await
            .unwrap();
        let refused = watcher.await.unwrap().err().unwrap();
        assert!(matches!(refused, JournalError::Owned { ref owner, .. } if owner == "a"));
        // a dies; c claims once a's last entry is older than the lifetime.
        tokio::time::sleep(QUICK * 2).await;
        let (mut c, seen) = Journal::claim(&out, &p, "c", QUICK).await.unwrap();
        assert_eq!(c.generation(), 2);
        assert_eq!(seen.unwrap().jobs, done("L1"), "a's acknowledged result");
        // a was only paused: its next write is refused and it learns it was replaced.
        let e = a
            .append(&p, BTreeMap::new(), BTreeSet::new(), false)
            .await
            .unwrap_err();
        assert!(matches!(e, JournalError::Fenced { newer: 2, .. }), "{e}");
        c.append(&p, done("L1"), BTreeSet::new(), false)
            .await
            .unwrap();
        let last = latest(&out.sub(DIR)).await.unwrap().unwrap();
        assert_eq!((last.owner.id.as_str(), last.jobs), ("c", done("L1")));
    }

    #[tokio::test]
    async fn a_released_run_is_claimed_at_once_and_another_plan_is_refused() {
        let out = Store::create("memory://journal-release").unwrap();
        let p = plan(out.root());
        let (mut a, _) = Journal::claim(&out, &p, "a", QUICK).await.unwrap();
        a.append(&p, done("L1"), BTreeSet::new(), true)
            .await
            .unwrap();
        let start = std::time::Instant::now();
        let (b, seen) = Journal::claim(&out, &p, "b", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(b.generation(), 2);
        assert!(seen.unwrap().owner.released);
        // Tuning knobs may change between restarts; the run may not.
        let mut tuned = p.clone();
        tuned.io_concurrency = 16;
        tuned.archs[0].1["loader_threads"] = 8.into();
        Journal::claim(&out, &tuned, "c", QUICK).await.unwrap();
        let mut other = p.clone();
        other.archs[0].1["epochs"] = 3.into();
        let e = Journal::claim(&out, &other, "d", QUICK)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("another plan"), "{e}");
    }

    #[tokio::test]
    async fn entries_are_pruned_and_taken_slots_skipped() {
        let out = Store::create("memory://journal-prune").unwrap();
        let p = plan(out.root());
        let (mut a, _) = Journal::claim(&out, &p, "a", QUICK).await.unwrap();
        // A write whose reply was lost left an entry at the next slot.
        out.sub(DIR).put_new(&entry_key(0), "{}").await.unwrap();
        for _ in 0..40 {
            a.append(&p, done("L1"), BTreeSet::new(), false)
                .await
                .unwrap();
        }
        let (seqs, _) = listing(&out.sub(DIR)).await.unwrap();
        assert_eq!(*seqs.last().unwrap(), 40);
        assert!(seqs.len() <= 2 * KEEP as usize, "{seqs:?}");
    }
}
