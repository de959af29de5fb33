//! `hbac report`: a run's dashboard frozen into one self-contained `report.html` — the page, its
//! script and style, the run's [`RunView`] and every figure inline, nothing fetched — for a run
//! on any storage, to attach to a discussion or a pull request.
//!
//! The run is read as a restarted coordinator reads it: the journal's latest snapshot restored
//! into a [`State`], plus `report.json` once the run is finished.

use std::time::{Duration, Instant};

use hbac_common::storage::Store;
use hbac_common::{Error, Result};

use crate::http::{APP_JS, INDEX_HTML, STYLE_CSS};
use crate::journal;
use crate::state::{Settings, State};
use crate::view::RunView;
use hbac_common::records::RunReport;

/// What the page of a file with no server behind it may load: nothing but itself.
const STATIC_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; base-uri 'none'; form-action 'none'";

/// The view of the run in `out`, from its files.
pub async fn view(out: &Store) -> Result<RunView> {
    let Some(snap) = journal::read(out).await? else {
        return Err(Error::NotFound {
            url: out.url(journal::DIR),
            note: " (no journal: not the output root of an hbac run)".into(),
        });
    };
    let long = Duration::from_secs(365 * 24 * 3600);
    let settings = Settings {
        lease_ttl: long,
        max_attempts: u32::MAX,
        max_disruptions: u32::MAX,
        job_timeout: long,
        stall_timeout: long,
        worker_grace: long,
    };
    let now = Instant::now();
    let state = State::new(snap.plan.jobs(), &snap.jobs, snap.drained, settings, now);
    let results = match out.get("report.json").await {
        Ok(bytes) => Some(serde_json::from_slice::<RunReport>(&bytes).map_err(|e| {
            Error::invalid(
                hbac_common::error::Location::file(out.url("report.json")),
                format!("not an hbac report: {e}"),
            )
        })?),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok(RunView::of(
        &state,
        &snap.plan,
        out.root(),
        results.as_ref(),
        now,
    ))
}

/// The dashboard page with `view` and its figures inline: opens from a file, offline.
pub fn html(view: &RunView) -> String {
    let snapshot = serde_json::json!({ "run": view, "figures": view.figures() });
    // Inside <script>, "</script>" or "<!--" in a string would end or change the element:
    // no "<" reaches the page unescaped.
    let json = serde_json::to_string(&snapshot)
        .expect("serialisable")
        .replace('<', "\\u003c");
    INDEX_HTML
        .replace(
            "<!-- static-csp -->",
            &format!(r#"<meta http-equiv="Content-Security-Policy" content="{STATIC_CSP}">"#),
        )
        .replace(
            r#"<link rel="stylesheet" href="style.css">"#,
            &format!("<style>\n{STYLE_CSS}</style>"),
        )
        .replace(
            r#"<script src="app.js"></script>"#,
            &format!(
                "<script id=\"snapshot\" type=\"application/json\">{json}</script>\n<script>\n{}</script>",
                APP_JS.replace("</script", "<\\/script")
            ),
        )
}

/// Writes `report.html` for the run in `out` (into `out`, or to `to`); returns where.
pub async fn write(out: &Store, to: Option<&str>) -> Result<String> {
    let page = html(&view(out).await?);
    match to {
        Some(path) => {
            std::fs::write(path, page).map_err(|e| Error::Io {
                context: format!("cannot write {path}"),
                source: e,
            })?;
            Ok(path.to_string())
        }
        None => {
            out.put("report.html", page).await?;
            Ok(out.url("report.html"))
        }
    }
}
