//! Prometheus metrics at `/metrics`: jobs by state, live workers, leases, lease expiries, job
//! timeouts, retries, epochs, late results, and each leased job's latest losses.

use hbac_common::proto::wire::JobPhase;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::shared::Shared;
use crate::state::JobState;

type Labels = Vec<(String, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The metrics in Prometheus' text format.
pub fn render(shared: &Shared) -> String {
    let s = shared.lock();
    let mut r = Registry::with_prefix("hbac");
    let jobs = Family::<Labels, Gauge>::default();
    for phase in [
        JobPhase::Pending,
        JobPhase::Leased,
        JobPhase::Done,
        JobPhase::Failed,
    ] {
        let n = s.jobs().iter().filter(|j| j.state.phase() == phase).count();
        jobs.get_or_create(&vec![("state".into(), phase.label().into())])
            .set(n as i64);
    }
    r.register("jobs", "Jobs by state", jobs);
    gauge(
        &mut r,
        "workers",
        "Workers heard from recently",
        s.live_workers(Instant::now().into_std()) as f64,
    );
    let c = s.counters();
    for (name, help, v) in [
        ("leases", "Leases granted", c.leases),
        (
            "lease_expiries",
            "Leases that expired without a heartbeat",
            c.lease_expiries,
        ),
        (
            "job_timeouts",
            "Attempts stopped by the job timeout",
            c.job_timeouts,
        ),
        ("retries", "Attempts re-queued", c.retries),
        (
            "stalls",
            "Attempts stopped because their trainer stopped moving",
            c.stalls,
        ),
        (
            "disruptions",
            "Attempts lost with their worker (expiry, hand-back, drain)",
            c.disruptions,
        ),
        (
            "adopted_leases",
            "Leases taken over from a previous coordinator",
            c.adopted,
        ),
        ("epochs", "Epochs reported by workers", c.epochs),
        (
            "late_results",
            "Reports from leases no longer current (discarded)",
            c.late_results,
        ),
    ] {
        gauge(&mut r, &format!("{name}_total"), help, v as f64);
    }
    let losses = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for j in s.jobs() {
        if let JobState::Leased(l) = &j.state {
            for (split, v) in [
                ("train", l.progress.train_kl),
                ("valid", l.progress.valid_kl),
            ] {
                if let Some(v) = v {
                    losses
                        .get_or_create(&vec![
                            ("job".into(), j.def.id.clone()),
                            ("split".into(), split.into()),
                        ])
                        .set(v);
                }
            }
        }
    }
    r.register("job_kl", "Latest epoch KL of each leased job", losses);
    let mut text = String::new();
    let _ = encode(&mut text, &r);
    text
}
