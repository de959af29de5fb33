//! Dataset and run roots as URLs, opened through `object_store`.
//!
//! A root is a local path (`data/`, `/mnt/hms`), or a URL: `file:///abs/path`,
//! `s3://bucket/prefix` (credentials, region and endpoint from the standard `AWS_*`
//! environment variables; a plain `http://` endpoint is allowed for S3-compatible servers),
//! `gs://bucket/prefix` (`GOOGLE_*`), `az://container/prefix` (`AZURE_*`), or
//! `memory://name` (an in-process store shared by every [`Store`] of the same name, for tests).
//!
//! Keys below a root are `/`-separated relative paths. Every [`Store::put`] is atomic on every
//! backend (local files are staged and renamed; object stores publish on completion), so a
//! crash never leaves a half-written object under its final name. Local writes are also
//! flushed to disk (file and folder `fsync`) before they return, so what a run acknowledged
//! survives a power cut of its node, as it would on an object store.
//!
//! [`faults`] injects write failures, lost replies and crashes (for the chaos harness).

pub mod faults;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::error::{Error, Result};
use faults::{Fault, Faults};

/// An opened root: a store plus the prefix every key is resolved under.
#[derive(Clone)]
pub struct Store {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    root: String,
    /// The local directory behind `store`, for `fsync` (`None` for object stores).
    disk: Option<Arc<std::path::PathBuf>>,
    faults: Option<&'static Faults>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// Whether opening a local root may create its directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Create,
}

impl Store {
    /// Opens an existing root for reading (a local directory must exist).
    pub fn open(root: &str) -> Result<Self> {
        Self::open_mode(root, Mode::Read)
    }

    /// Opens a root for writing, creating a local directory if needed.
    pub fn create(root: &str) -> Result<Self> {
        Self::open_mode(root, Mode::Create)
    }

    fn open_mode(root: &str, mode: Mode) -> Result<Self> {
        let bad = |reason: String| Error::BadUrl {
            url: root.to_string(),
            reason,
        };
        if root.trim().is_empty() {
            return Err(bad("empty".into()));
        }
        let Some((scheme, _)) = root.split_once("://") else {
            if root.contains(':') && !std::path::Path::new(root).exists() && looks_like_url(root) {
                return Err(bad(
                    "not a path, and not a URL of the form scheme://…".into()
                ));
            }
            return local(root, root, mode);
        };
        let url = url::Url::parse(root).map_err(|e| bad(e.to_string()))?;
        let prefix = Path::from(url.path().trim_start_matches('/'));
        let bucket = url.host_str().unwrap_or_default();
        let store: Arc<dyn ObjectStore> = match scheme {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| bad("not an absolute file path".into()))?;
                return local(&path.to_string_lossy(), root, mode);
            }
            "memory" => memory(bucket),
            "s3" | "s3a" => {
                require_bucket(bucket, root)?;
                let mut b = AmazonS3Builder::from_env()
                    .with_url(root)
                    .with_retry(retry())
                    .with_client_options(client());
                let endpoint =
                    std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
                if endpoint.is_ok_and(|e| e.starts_with("http://")) {
                    b = b.with_allow_http(true);
                }
                Arc::new(b.build().map_err(|e| bad(chain(&e)))?)
            }
            "gs" => {
                require_bucket(bucket, root)?;
                let b = GoogleCloudStorageBuilder::from_env()
                    .with_url(root)
                    .with_retry(retry())
                    .with_client_options(client());
                Arc::new(b.build().map_err(|e| bad(chain(&e)))?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                require_bucket(bucket, root)?;
                let b = MicrosoftAzureBuilder::from_env()
                    .with_url(root)
                    .with_retry(retry())
                    .with_client_options(client());
                let hint = "; set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or another AZURE_* credential)";
                Arc::new(b.build().map_err(|e| bad(format!("{}{hint}", chain(&e))))?)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}; use a local path, file://, s3://, gs://, az:// or memory://"
                )));
            }
        };
        Ok(Self {
            store,
            prefix,
            root: root.trim_end_matches('/').to_string(),
            disk: None,
            faults: Faults::global()?,
        })
    }

    /// The root as the user gave it (without a trailing `/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The user-facing URL of `key`, used in every message about it.
    pub fn url(&self, key: &str) -> String {
        if key.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, key)
        }
    }

    /// A store rooted at `key` below this one.
    pub fn sub(&self, key: &str) -> Store {
        Store {
            store: self.store.clone(),
            prefix: self.path(key),
            root: self.url(key),
            disk: self.disk.clone(),
            faults: self.faults,
        }
    }

    fn path(&self, key: &str) -> Path {
        let mut parts: Vec<String> = self
            .prefix
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        parts.extend(key.split('/').filter(|s| !s.is_empty()).map(str::to_string));
        Path::from_iter(parts)
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let url = self.url(key);
        let res = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| storage_error(&url, e))?;
        res.bytes().await.map_err(|e| storage_error(&url, e))
    }

    /// Reads the single object at `url` (a local path or any supported URL).
    pub async fn read_url(url: &str) -> Result<Bytes> {
        let (parent, name) = parent_and_name(url)?;
        Self::open(&parent)?.get(&name).await
    }

    /// Writes the single object at `url` atomically, creating a local parent folder.
    pub async fn write_url(url: &str, bytes: impl Into<Bytes>) -> Result<()> {
        let (parent, name) = parent_and_name(url)?;
        Self::create(&parent)?.put(&name, bytes).await
    }

    /// Writes a whole object atomically: readers see the old object, nothing, or all of it.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<()> {
        let url = self.url(key);
        let fault = self.faults.and_then(Faults::draw);
        if fault == Some(Fault::Fail) {
            return Err(Faults::error(&url, Fault::Fail));
        }
        let path = self.path(key);
        self.store
            .put(&path, PutPayload::from_bytes(bytes.into()))
            .await
            .map_err(|e| storage_error(&url, e))?;
        self.committed(&path, &url, fault).await
    }

    /// Writes `key` only if no object has that name yet — a conditional create, atomic on every
    /// backend (a hard link on local disks, `If-None-Match: *` on S3, preconditions on GCS and
    /// Azure): `Ok(false)` when it exists already. The journal's fencing rests on it.
    pub async fn put_new(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool> {
        let url = self.url(key);
        let fault = self.faults.and_then(Faults::draw);
        if fault == Some(Fault::Fail) {
            return Err(Faults::error(&url, Fault::Fail));
        }
        let path = self.path(key);
        let opts = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(bytes.into()), opts)
            .await
        {
            Ok(_) => self.committed(&path, &url, fault).await.map(|()| true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(storage_error(&url, e)),
        }
    }

    /// After a write of `path` committed: flushes a local file and its folder to disk, then
    /// plays an injected crash or lost reply.
    async fn committed(&self, path: &Path, url: &str, fault: Option<Fault>) -> Result<()> {
        if let Some(dir) = &self.disk {
            let file = dir.join(path.as_ref());
            tokio::task::spawn_blocking(move || fsync(&file))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|e| Error::Storage {
                    url: url.into(),
                    detail: format!("written, but flushing it to disk failed: {e}"),
                })?;
        }
        if let Some(f) = self.faults {
            f.committed(path.as_ref());
        }
        match fault {
            Some(fault) => Err(Faults::error(url, fault)),
            None => Ok(()),
        }
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage_error(&self.url(key), e)),
        }
    }

    /// Deletes `key` (missing is fine).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_error(&self.url(key), e)),
        }
    }

    /// Lists every object below `dir` (recursively), as keys relative to `dir` with sizes.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let base = self.path(dir);
        let depth = base.parts().count();
        let url = self.url(dir);
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| storage_error(&url, e))?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let rel: Vec<String> = m
                    .location
                    .parts()
                    .skip(depth)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                (rel.join("/"), m.size)
            })
            .collect())
    }
}

fn looks_like_url(root: &str) -> bool {
    // "s3:/bucket" or "s3//bucket": a scheme followed by something that is not "://".
    let scheme: String = root
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    !scheme.is_empty() && scheme.len() > 1 && root[scheme.len()..].starts_with(':')
}

fn require_bucket(bucket: &str, root: &str) -> Result<()> {
    if bucket.is_empty() {
        return Err(Error::BadUrl {
            url: root.into(),
            reason: "no bucket/container name".into(),
        });
    }
    Ok(())
}

fn local(path: &str, root: &str, mode: Mode) -> Result<Store> {
    let p = std::path::Path::new(path);
    if mode == Mode::Create {
        std::fs::create_dir_all(p).map_err(|e| Error::Storage {
            url: root.into(),
            detail: format!("cannot create directory: {e}"),
        })?;
    } else if !p.is_dir() {
        return Err(if p.exists() {
            Error::BadUrl {
                url: root.into(),
                reason: "is a file, expected a directory".into(),
            }
        } else {
            Error::not_found(root)
        });
    }
    let fs = LocalFileSystem::new_with_prefix(p)
        .map_err(|e| storage_error(root, e))?
        .with_automatic_cleanup(true);
    let disk = std::fs::canonicalize(p).map_err(|e| Error::Storage {
        url: root.into(),
        detail: e.to_string(),
    })?;
    Ok(Store {
        store: Arc::new(fs),
        prefix: Path::default(),
        root: root.trim_end_matches('/').to_string(),
        disk: Some(Arc::new(disk)),
        faults: Faults::global()?,
    })
}

/// Flushes `file` and the folder that names it to disk.
fn fsync(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    match file.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn memory(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// Few retries with a short back-off: a dead endpoint must fail in seconds, not minutes.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

fn client() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(300))
}

/// Maps an `object_store` error to ours, naming the URL and keeping the whole cause chain.
fn storage_error(url: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::not_found(url),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Error::AccessDenied {
            url: url.into(),
            detail: chain(&e),
        },
        other => {
            let detail = chain(&other);
            // object_store reports a refused LIST as a generic error carrying the HTTP status.
            if ["401 Unauthorized", "403 Forbidden"]
                .iter()
                .any(|s| detail.contains(s))
            {
                Error::AccessDenied {
                    url: url.into(),
                    detail,
                }
            } else {
                Error::Storage {
                    url: url.into(),
                    detail,
                }
            }
        }
    }
}

/// Joins an error and its sources into one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Splits a file's URL (or local path) into its folder's root and the file's name:
/// `s3://b/x/f.csv` → (`s3://b/x`, `f.csv`), `f.csv` → (`.`, `f.csv`), `/f` → (`/`, `f`).
pub fn parent_and_name(url: &str) -> Result<(String, String)> {
    let trimmed = url.trim_end_matches('/');
    if let Some((scheme, rest)) = trimmed.split_once("://") {
        return match rest.rsplit_once('/') {
            Some((parent, name)) if !parent.is_empty() => {
                Ok((format!("{scheme}://{parent}"), name.to_string()))
            }
            _ => Err(Error::BadUrl {
                url: url.to_string(),
                reason: "it names a bucket or root, not a file".into(),
            }),
        };
    }
    Ok(match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/".to_string(), name.to_string()),
        Some((parent, name)) => (parent.to_string(), name.to_string()),
        None => (".".to_string(), trimmed.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_split_into_root_and_name() {
        let p = |u: &str| parent_and_name(u).unwrap();
        assert_eq!(p("train.csv"), (".".into(), "train.csv".into()));
        assert_eq!(p("data/train.csv"), ("data".into(), "train.csv".into()));
        assert_eq!(p("/train.csv"), ("/".into(), "train.csv".into()));
        assert_eq!(
            p("s3://b/x/train.csv"),
            ("s3://b/x".into(), "train.csv".into())
        );
        assert_eq!(p("s3://b/train.csv"), ("s3://b".into(), "train.csv".into()));
        assert!(parent_and_name("s3://bucket").is_err());
        assert!(parent_and_name("s3://bucket/").is_err());
    }

    /// The same checks against every backend reachable without a server.
    async fn conformance(s: Store) {
        s.put("a/x.npy", Bytes::from_static(b"1")).await.unwrap();
        s.put("a/b/y.npy", Bytes::from_static(b"22")).await.unwrap();
        s.put("a/x.npy", Bytes::from_static(b"333")).await.unwrap(); // overwrite is whole
        let again = Store::open(s.root()).unwrap();
        assert_eq!(
            again.get("a/x.npy").await.unwrap(),
            Bytes::from_static(b"333")
        );
        let mut l = again.list("a").await.unwrap();
        l.sort();
        assert_eq!(
            l,
            vec![("b/y.npy".to_string(), 2), ("x.npy".to_string(), 3)]
        );
        assert!(again.list("nothing-here").await.unwrap().is_empty());
        // Conditional create: once only, and the first object stays.
        assert!(
            again
                .put_new("c/once", Bytes::from_static(b"first"))
                .await
                .unwrap()
        );
        assert!(
            !again
                .put_new("c/once", Bytes::from_static(b"second"))
                .await
                .unwrap()
        );
        assert_eq!(
            again.get("c/once").await.unwrap(),
            Bytes::from_static(b"first")
        );
        assert!(again.exists("a/x.npy").await.unwrap());
        assert!(!again.exists("a/z.npy").await.unwrap());
        let sub = again.sub("a");
        assert_eq!(sub.url("x.npy"), format!("{}/a/x.npy", s.root()));
        assert_eq!(sub.get("b/y.npy").await.unwrap(), Bytes::from_static(b"22"));
        let err = sub.get("missing.npy").await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&sub.url("missing.npy")),
            "{err}"
        );
        again.delete("a/x.npy").await.unwrap();
        again.delete("a/x.npy").await.unwrap(); // deleting twice is fine
        assert!(!again.exists("a/x.npy").await.unwrap());
    }

    #[tokio::test]
    async fn memory_backend_conformance() {
        conformance(Store::create("memory://storage-test/run").unwrap()).await;
    }

    #[tokio::test]
    async fn local_backend_conformance() {
        let dir = tempfile::tempdir().unwrap();
        conformance(Store::create(dir.path().join("run").to_str().unwrap()).unwrap()).await;
        let url = format!("file://{}", dir.path().join("run2").display());
        conformance(Store::create(&url).unwrap()).await;
    }

    #[test]
    fn cloud_urls_open_without_network() {
        // Builders only parse configuration; the first request is what reaches the network.
        for url in ["s3://bucket/prefix", "gs://bucket/prefix"] {
            let s = Store::open(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(s.url("x"), format!("{url}/x"));
        }
        // Azure needs an account name before anything else; the error says which variable.
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
            let e = Store::open("az://container/prefix")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("az://container/prefix") && e.contains("AZURE_STORAGE_ACCOUNT_NAME"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn local_missing_object_names_url() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap()).unwrap();
        let err = s.get("train.csv").await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("train.csv"), "{err}");
    }

    #[test]
    fn local_missing_root_is_not_found() {
        let err = Store::open("/definitely/not/here/hbac").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }

    #[test]
    fn mistyped_urls_are_refused_with_the_url_named() {
        for bad in [
            "s4://bucket/x",
            "s3:/bucket/x",
            "s3://",
            "ftp://host/x",
            "gs://",
        ] {
            let err = Store::open(bad).unwrap_err();
            assert!(matches!(err, Error::BadUrl { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn injected_faults_fail_before_or_after_the_write_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::create(dir.path().to_str().unwrap()).unwrap();
        s.faults = Some(Box::leak(Box::new(Faults::parse("fail=1").unwrap())));
        let e = s.put("a", Bytes::from_static(b"1")).await.unwrap_err();
        assert!(e.to_string().contains("injected fault"), "{e}");
        assert!(s.put_new("b", Bytes::from_static(b"1")).await.is_err());
        s.faults = Some(Box::leak(Box::new(Faults::parse("lose=1").unwrap())));
        assert!(s.put("a", Bytes::from_static(b"1")).await.is_err());
        assert!(s.put_new("b", Bytes::from_static(b"2")).await.is_err());
        s.faults = None;
        // The failed writes left nothing; the lost ones are there, and a retried create sees it.
        assert_eq!(s.get("a").await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(s.get("b").await.unwrap(), Bytes::from_static(b"2"));
        assert!(!s.put_new("b", Bytes::from_static(b"3")).await.unwrap());
    }

    #[test]
    fn file_url_is_local() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        assert!(Store::open(&url).is_ok());
    }
}
