//! The coordinator's HTTP port: the live dashboard and what it reads, plus Prometheus.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the dashboard (`assets/`: one page, its script and style, all served from here) |
//! | `GET /api/run` | the run as JSON ([`RunView`]); the page polls it every second |
//! | `GET /plots/cv.svg`, `GET /plots/jobs/{job}.svg` | the figures, drawn from the live curves |
//! | `GET /files/{path}` | a file of the run (`report.json`, a job's `loss.svg`, …), read from the output root |
//! | `GET /metrics` | Prometheus metrics |
//!
//! **Access.** Read-only. With a token (`--http-token`; for `hbac coordinator` the worker token
//! by default) everything but the page itself and `/metrics` wants `Authorization: Bearer
//! TOKEN`; the page asks for the token once and keeps it for the browser tab. Every response
//! carries a content security policy that allows nothing from outside this server, and the page
//! writes every string it shows as text, never as markup.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::RunError;
use crate::metrics;
use crate::shared::Shared;

/// The dashboard's page, script and style.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
pub const APP_JS: &str = include_str!("../assets/app.js");
pub const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Where the dashboard is served when no address is given (any free port if it is taken).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8470);

/// Nothing from anywhere but this server (the SVG figures come as `data:` images).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Take any free port on the same interface if `addr` is taken (the default address).
    pub fallback: bool,
    /// The bearer token the API wants (`None`: open).
    pub token: Option<String>,
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
}

/// Serves the dashboard, the API and `/metrics`; returns the bound address.
pub async fn serve(cfg: &HttpConfig, shared: Arc<Shared>) -> Result<SocketAddr, RunError> {
    let listener = match tokio::net::TcpListener::bind(cfg.addr).await {
        Ok(l) => l,
        Err(_) if cfg.fallback => tokio::net::TcpListener::bind(SocketAddr::new(cfg.addr.ip(), 0))
            .await
            .map_err(|e| RunError::Http(format!("HTTP address {}: {e}", cfg.addr)))?,
        Err(e) => {
            return Err(RunError::Http(format!("HTTP address {}: {e}", cfg.addr)));
        }
    };
    let bound = listener
        .local_addr()
        .map_err(|e| RunError::Http(e.to_string()))?;
    let app = App {
        shared,
        token: cfg.token.as_deref().map(Arc::from),
    };
    let router = axum::Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/run", get(api_run))
        .route("/plots/cv.svg", get(cv_svg))
        .route("/plots/jobs/{file}", get(job_svg))
        .route("/files/{*path}", get(file))
        .route(
            "/metrics",
            get(|State(app): State<App>| async move { metrics::render(&app.shared) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(app);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(bound)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    respond(kind, body.to_string())
}

/// A response with the security headers every answer carries.
fn respond(kind: &str, body: String) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    let kind = HeaderValue::from_str(kind).unwrap_or(HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_TYPE, kind);
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// A 401 answer unless the request carries the token (compared in constant time).
fn refused(app: &App, headers: &HeaderMap) -> Option<Response> {
    let token = app.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if crate::service::same(given, format!("Bearer {token}").as_bytes()) {
        None
    } else {
        let mut r = respond("text/plain; charset=utf-8", "a token is needed".into());
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        Some(r)
    }
}

async fn api_run(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let body = serde_json::to_string(&app.shared.view()).expect("serialisable");
    respond("application/json", body)
}

async fn cv_svg(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    respond("image/svg+xml", app.shared.view().cv_svg())
}

async fn job_svg(State(app): State<App>, headers: HeaderMap, Path(file): Path<String>) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let id = file.strip_suffix(".svg").unwrap_or(&file);
    match app.shared.view().job_svg(id) {
        Some(svg) => respond("image/svg+xml", svg),
        None => not_found(),
    }
}

fn not_found() -> Response {
    let mut r = respond("text/plain; charset=utf-8", "not found".into());
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// A file of the run: only the run's own files and those of accepted attempts, by the names
/// the view lists (nothing else of the output root is reachable).
async fn file(State(app): State<App>, headers: HeaderMap, Path(path): Path<String>) -> Response {
    if let Some(r) = refused(&app, &headers) {
        return r;
    }
    let view = app.shared.view();
    let listed = view.files.contains(&path)
        || view.jobs.iter().any(|j| {
            j.folder.as_ref().is_some_and(|d| {
                path.strip_prefix(d.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|name| j.files.iter().any(|f| f == name))
            })
        });
    if !listed {
        return not_found();
    }
    match app.shared.out.get(&path).await {
        Ok(bytes) => {
            let kind = content_type(&path);
            let mut r = respond(kind, String::new());
            *r.body_mut() = axum::body::Body::from(bytes);
            r
        }
        Err(hbac_common::Error::NotFound { .. }) => not_found(),
        Err(e) => {
            let mut r = respond("text/plain; charset=utf-8", e.to_string());
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

/// The media type of a run file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "csv" => "text/csv; charset=utf-8",
        "jsonl" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
