//! Loading catalog sources into the in-memory catalog and reporting on each source.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::{Catalog, Loaded, ProductVersion, git, load_directory, load_source};
use crate::model::{CatalogSource, CatalogSourceStatus, GitSource, LoadedProduct};
use crate::store::Store;
use crate::{Error, Result};

/// What a sync of every source found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SyncReport {
    /// Sources read without a source-level failure.
    pub sources_synced: usize,
    /// Product versions the catalog holds after the sync.
    pub versions_loaded: usize,
    /// Every problem, each naming its source and file.
    pub errors: Vec<String>,
}

/// The in-memory catalog the hooks and the reconciler share, and the one sync at a time that
/// refreshes it. Requests that all miss a version while a sync runs share the next sync instead
/// of each reading every source again.
#[derive(Debug, Default)]
pub struct SharedCatalog {
    catalog: RwLock<Catalog>,
    turn: tokio::sync::Mutex<()>,
    /// Syncs of every source that have taken their turn so far.
    started: AtomicU64,
    /// When the last sync of every source ended.
    finished: std::sync::Mutex<Option<std::time::Instant>>,
    /// Where git sources keep their clones; without it, git sources fail to sync.
    git_cache: Option<PathBuf>,
    /// Where the Secrets of git sources are: rsgo's namespace on Kubernetes, none standalone.
    secret_namespace: String,
    /// The commit each git source's loaded catalog was read from.
    revisions: std::sync::Mutex<BTreeMap<String, String>>,
}

/// How eagerly a missing version makes the catalog sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissPolicy {
    /// Sync after every miss (sharing syncs with concurrent misses): a hook's caller is told a
    /// version is missing only after the sources were read since it asked.
    EveryMiss,
    /// Sync at most once in this period, however many stacks miss a version: the reconciler
    /// retries stacks every resync, and one missing product must not read every source for each.
    OncePer(std::time::Duration),
}

impl SharedCatalog {
    /// A shared catalog holding `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self {
            catalog: RwLock::new(catalog),
            ..Default::default()
        }
    }

    /// An empty catalog whose git sources keep their clones below `dir` and find their Secrets
    /// in `secret_namespace` (empty in standalone mode).
    pub fn with_git_cache(dir: PathBuf, secret_namespace: String) -> Self {
        Self {
            git_cache: Some(dir),
            secret_namespace,
            ..Default::default()
        }
    }

    /// Reads the catalog; a lock poisoned by a panic is reported, not propagated.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, Catalog>> {
        self.catalog
            .read()
            .map_err(|_| Error::Task("catalog lock poisoned".into()))
    }

    /// The commit the loaded catalog of git source `source` was read from.
    pub fn loaded_revision(&self, source: &str) -> Option<String> {
        let revisions = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        revisions.get(source).cloned()
    }

    /// Makes `versions` what source `name` holds, read from commit `revision` for a git source,
    /// and returns its products.
    fn install(
        &self,
        name: &str,
        versions: Vec<ProductVersion>,
        revision: Option<&str>,
    ) -> Result<Vec<LoadedProduct>> {
        let products = {
            let mut loaded = self.write()?;
            loaded.replace_source(name, versions);
            loaded.source_products(name)
        };
        if let Some(revision) = revision {
            let mut revisions = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
            revisions.insert(name.to_owned(), revision.to_owned());
        }
        Ok(products)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Catalog>> {
        self.catalog
            .write()
            .map_err(|_| Error::Task("catalog lock poisoned".into()))
    }
}

/// Reads every CatalogSource now, after any sync already under way.
pub async fn sync_all(store: &Arc<dyn Store>, catalog: &SharedCatalog) -> Result<SyncReport> {
    let turn = catalog.turn.lock().await;
    sync_in_turn(store, catalog, turn, None).await
}

/// Reads the CatalogSources `which` picks now, after any sync already under way; the others keep
/// what they loaded last.
pub async fn sync_some(
    store: &Arc<dyn Store>,
    catalog: &SharedCatalog,
    which: &(dyn Fn(&CatalogSource) -> bool + Sync),
) -> Result<SyncReport> {
    let turn = catalog.turn.lock().await;
    sync_in_turn(store, catalog, turn, Some(which)).await
}

/// Makes sure the catalog has had a chance to load `product` at `version` (the newest when
/// `None`): when it is missing, every source is synced once, by a sync that started after the
/// miss was seen (possibly another caller's). A replica that did not serve the last sync-sources
/// call, or a file added without one, is then caught up before anyone is told the version does
/// not exist. Problems of the sync itself are logged; the caller's lookup reports what is still
/// missing.
pub async fn ensure_version(
    store: &Arc<dyn Store>,
    catalog: &SharedCatalog,
    product: &str,
    version: Option<&str>,
    policy: MissPolicy,
) -> Result<()> {
    if catalog.read()?.resolve(product, version).is_some() {
        return Ok(());
    }
    if let MissPolicy::OncePer(period) = policy {
        let last = *catalog.finished.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < period) {
            return Ok(());
        }
    }
    let seen = catalog.started.load(Ordering::Acquire);
    let turn = catalog.turn.lock().await;
    // Holding the turn, every sync that started since the miss has finished.
    if catalog.started.load(Ordering::Acquire) > seen {
        return Ok(());
    }
    let report = sync_in_turn(store, catalog, turn, None).await?;
    for error in &report.errors {
        tracing::warn!(%error, "catalog problem");
    }
    Ok(())
}

/// What one source holds now.
struct Read {
    loaded: Loaded,
    /// For a git source, the commit `loaded` was read from.
    revision: Option<String>,
    /// For a git source, a newer commit that was fetched but not taken because files of it are
    /// broken.
    rejected: Option<String>,
}

/// Reads one source: a directory as it is, a git repository after fetching it.
async fn read_source(
    store: &Arc<dyn Store>,
    catalog: &SharedCatalog,
    source: &CatalogSource,
) -> Result<Read> {
    if let Some(dir) = &source.spec.directory {
        let path = PathBuf::from(&dir.path);
        let loaded = blocking(move || load_directory(&path)).await?;
        return Ok(Read {
            loaded,
            revision: None,
            rejected: None,
        });
    }
    let Some(spec) = source.spec.git.clone() else {
        return Err(Error::Invalid(
            "the source names no directory and no git repository".into(),
        ));
    };
    let cache = catalog.git_cache.clone().ok_or_else(|| {
        Error::Invalid("git sources need a data directory to keep their clones in".into())
    })?;
    let credentials = match &spec.secret_ref {
        Some(secret) => {
            Some(credentials(store, &catalog.secret_namespace, &secret.name, &spec).await?)
        }
        None => None,
    };
    let name = source.name_any();
    let last_good = source.status.as_ref().and_then(|s| s.revision.clone());
    let fetch = blocking(move || read_git(&cache, &name, &spec, credentials, last_good));
    match tokio::time::timeout(git::FETCH_TIMEOUT, fetch).await {
        Ok(read) => read,
        Err(_) => Err(Error::Unreachable(format!(
            "fetching took longer than {} s; gave up",
            git::FETCH_TIMEOUT.as_secs()
        ))),
    }
}

/// Fetches a git source and reads the commit its ref names. A commit with broken files is not
/// taken while an earlier good one (`last_good`, from the source's status) can be read: that one
/// stays loaded, and the broken files are reported. Blocking.
fn read_git(
    cache: &std::path::Path,
    name: &str,
    spec: &GitSource,
    credentials: Option<git::Credentials>,
    last_good: Option<String>,
) -> Result<Read> {
    let clone = git::KeptClone::open(cache, name, &spec.url, credentials.as_ref())
        .map_err(Error::Unreachable)?;
    let fetched = clone.fetch(spec, credentials).map_err(Error::Unreachable)?;
    tracing::info!(source = %name, revision = %fetched.revision, objects = fetched.objects, "git source fetched");
    let keep: Vec<&str> = last_good.iter().map(String::as_str).collect();
    let loaded = read_commit(&clone, spec, &fetched.revision, &keep)?;
    let good = match last_good {
        Some(good) if !loaded.errors.is_empty() && good != fetched.revision => good,
        _ => {
            return Ok(Read {
                loaded,
                revision: Some(fetched.revision),
                rejected: None,
            });
        }
    };
    let kept = read_commit(&clone, spec, &good, &[&fetched.revision])?;
    Ok(Read {
        loaded: Loaded {
            versions: kept.versions,
            errors: loaded.errors,
        },
        revision: Some(good),
        rejected: Some(fetched.revision),
    })
}

/// Reads the files of commit `revision` of a git source from its kept clone. Trees written out
/// for commits other than it and those in `keep` are removed. Blocking.
fn read_commit(
    clone: &git::KeptClone,
    spec: &GitSource,
    revision: &str,
    keep: &[&str],
) -> Result<Loaded> {
    let tree = clone
        .checkout(revision, spec.path.as_deref(), keep)
        .map_err(Error::Invalid)?;
    load_source(&tree, Some(&root_name(spec)))
}

/// The name a compose project at the top of what a git source reads is given: its folder's (or
/// the repository's), not that of the folder its files were written to.
fn root_name(spec: &GitSource) -> String {
    spec.path
        .as_deref()
        .and_then(|path| std::path::Path::new(path).file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| {
            let url = spec.url.trim_end_matches('/');
            let last = url.rsplit(['/', ':']).next().unwrap_or(url);
            last.trim_end_matches(".git").to_owned()
        })
}

/// Loads what every CatalogSource held when rsgo last ran, from this machine only: directories
/// as they are, git sources at the commit their status names, read from the clone kept for them
/// (no fetch). `rsgo serve` does this before it reconciles or answers a hook, so a restart never
/// shows a catalog with sources missing while the first fetches run, and a remote that is down
/// at start does not empty the catalog. A source that cannot be loaded so is left to its first
/// sync. Returns the product versions loaded.
pub async fn load_kept(store: &Arc<dyn Store>, catalog: &SharedCatalog) -> Result<usize> {
    let turn = catalog.turn.lock().await;
    for source in store.list::<CatalogSource>(None).await? {
        let name = source.name_any();
        if source.validate().is_err() {
            continue;
        }
        let kept = match (&source.spec.git, &catalog.git_cache) {
            // A directory is read as a sync reads it.
            (None, _) => read_source(store, catalog, &source)
                .await
                .map(|read| (read.loaded.versions, None)),
            (Some(spec), Some(cache)) => {
                let Some(revision) = source.status.as_ref().and_then(|s| s.revision.clone()) else {
                    continue;
                };
                let (cache, name, spec) = (cache.clone(), name.clone(), spec.clone());
                blocking(move || {
                    let clone = git::KeptClone::open_existing(&cache, &name, &spec.url)
                        .map_err(Error::Unreachable)?;
                    let loaded = read_commit(&clone, &spec, &revision, &[])?;
                    Ok((loaded.versions, Some(revision)))
                })
                .await
            }
            (Some(_), None) => continue,
        };
        match kept {
            Ok((versions, revision)) => {
                catalog.install(&name, versions, revision.as_deref())?;
            }
            Err(error) => {
                tracing::warn!(source = %name, %error, "the source's last catalog cannot be loaded from this machine; it loads with its first sync");
            }
        }
    }
    drop(turn);
    Ok(catalog.read()?.counts().1)
}

/// Runs blocking work `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// The credentials in Secret `name` for the remote of `spec`: `username` and `password` for
/// HTTPS, `identity` and `known_hosts` for SSH (the keys Flux uses).
async fn credentials(
    store: &Arc<dyn Store>,
    namespace: &str,
    name: &str,
    spec: &GitSource,
) -> Result<git::Credentials> {
    let secret = store.get::<Secret>(namespace, name).await?.ok_or_else(|| {
        Error::Invalid(format!(
            "Secret '{name}' named by spec.git.secretRef does not exist"
        ))
    })?;
    let value = |key: &str| {
        crate::model::secret_text(&secret, key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "Secret '{name}' has no {key} (as UTF-8 text) for the git remote"
                ))
            })
    };
    let ssh = spec
        .parsed_url()
        .is_ok_and(|url| url.scheme == gix::url::Scheme::Ssh);
    if ssh {
        return Ok(git::Credentials::Ssh {
            identity: value("identity")?,
            known_hosts: value("known_hosts")?,
        });
    }
    Ok(git::Credentials::Token {
        username: value("username")?,
        password: value("password")?,
    })
}

/// The first 12 digits of a commit id, as messages show it.
fn short(revision: &str) -> &str {
    &revision[..revision.len().min(12)]
}

/// Reads the CatalogSources `which` picks, every one when `None`. A source that cannot be read
/// keeps its last good set of products and its error is reported; broken files are reported and
/// the rest still load. Only a sync of every source counts for [`ensure_version`]: one that read
/// some sources says nothing about a version the others may hold.
async fn sync_in_turn(
    store: &Arc<dyn Store>,
    catalog: &SharedCatalog,
    _turn: tokio::sync::MutexGuard<'_, ()>,
    which: Option<&(dyn Fn(&CatalogSource) -> bool + Sync)>,
) -> Result<SyncReport> {
    if which.is_none() {
        catalog.started.fetch_add(1, Ordering::AcqRel);
    }
    let sources = store.list::<CatalogSource>(None).await?;
    let mut report = SyncReport::default();
    for source in sources
        .iter()
        .filter(|s| which.is_none_or(|which| which(s)))
    {
        let name = source.name_any();
        let outcome = match source.validate() {
            Ok(()) => read_source(store, catalog, source).await,
            Err(reason) => Err(Error::Invalid(reason)),
        };
        let status = match outcome {
            Ok(Read {
                loaded: Loaded { versions, errors },
                revision,
                rejected,
            }) => {
                report.sources_synced += 1;
                crate::metrics::global().catalog_synced(errors.is_empty() && rejected.is_none());
                let errors: Vec<String> = match (&rejected, &revision) {
                    (Some(new), Some(kept)) => errors
                        .iter()
                        .map(|e| {
                            format!(
                                "commit {} is not taken, {} stays loaded: {e}",
                                short(new),
                                short(kept)
                            )
                        })
                        .collect(),
                    _ => errors.iter().map(ToString::to_string).collect(),
                };
                let products = catalog.install(&name, versions, revision.as_deref())?;
                report
                    .errors
                    .extend(errors.iter().map(|e| format!("source '{name}': {e}")));
                CatalogSourceStatus {
                    last_sync_at: Some(Timestamp::now()),
                    products_loaded: products.len() as u32,
                    versions_loaded: products.iter().map(|p| p.versions.len() as u32).sum(),
                    errors,
                    revision,
                    products,
                }
            }
            Err(error) => {
                crate::metrics::global().catalog_synced(false);
                let message = format!("source '{name}': {error}; keeping its last good catalog");
                report.errors.push(message.clone());
                CatalogSourceStatus {
                    errors: vec![message],
                    ..source.status.clone().unwrap_or_default()
                }
            }
        };
        let mut updated = source.clone();
        updated.status = Some(status);
        store.update_status(&updated).await?;
    }
    let known: Vec<String> = sources.iter().map(|s| s.name_any()).collect();
    {
        let mut loaded = catalog.write()?;
        loaded.retain_sources(&known);
        report.versions_loaded = loaded.counts().1;
    }
    if which.is_none() {
        *catalog.finished.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CatalogSourceSpec, DirectorySource};
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn concurrent_misses_share_syncs() {
        let dir = tempfile::TempDir::new().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        directory_source(&store, dir.path(), "src", "app").await;
        let catalog = Arc::new(SharedCatalog::default());
        // Ten requests miss a version while a sync is busy (the test holds its turn).
        let busy = catalog.turn.lock().await;
        let misses: Vec<_> = (0..10)
            .map(|_| {
                let (store, catalog) = (store.clone(), catalog.clone());
                tokio::spawn(async move {
                    ensure_version(
                        &store,
                        &catalog,
                        "missing",
                        Some("9.9.9"),
                        MissPolicy::EveryMiss,
                    )
                    .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(busy);
        for miss in misses {
            miss.await.unwrap().unwrap();
        }
        let syncs = catalog.started.load(Ordering::Acquire);
        assert_eq!(syncs, 1, "the ten misses share one sync");
        assert!(catalog.read().unwrap().find("app", "1.0.0").is_some());
        ensure_version(
            &store,
            &catalog,
            "app",
            Some("1.0.0"),
            MissPolicy::EveryMiss,
        )
        .await
        .unwrap();
        assert_eq!(
            catalog.started.load(Ordering::Acquire),
            syncs,
            "a present version syncs nothing"
        );
        // The reconciler's misses share one sync per period.
        let hour = MissPolicy::OncePer(std::time::Duration::from_secs(3600));
        for _ in 0..5 {
            ensure_version(&store, &catalog, "missing", None, hour)
                .await
                .unwrap();
        }
        assert_eq!(catalog.started.load(Ordering::Acquire), syncs);
        ensure_version(&store, &catalog, "missing", None, MissPolicy::EveryMiss)
            .await
            .unwrap();
        assert_eq!(catalog.started.load(Ordering::Acquire), syncs + 1);
    }

    /// A directory source `name` holding `product` 1.0.0.
    async fn directory_source(
        store: &Arc<dyn Store>,
        root: &std::path::Path,
        name: &str,
        product: &str,
    ) {
        let manifests = root.join(name);
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(
            manifests.join("app.yaml"),
            format!("metadata: {{name: {product}, productVersion: '1.0.0'}}\nservices:\n  web: {{image: x}}\n"),
        )
        .unwrap();
        let source = CatalogSource::new(
            name,
            CatalogSourceSpec {
                directory: Some(DirectorySource {
                    path: manifests.to_string_lossy().into_owned(),
                }),
                git: None,
            },
        );
        store.create(&source).await.unwrap();
    }

    #[tokio::test]
    async fn a_sync_of_some_sources_does_not_stand_in_for_one_of_all() {
        let dir = tempfile::TempDir::new().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        directory_source(&store, dir.path(), "first", "one").await;
        directory_source(&store, dir.path(), "second", "two").await;
        let catalog = SharedCatalog::default();
        // What a restart does: each source is synced on its own as the watch lists it. The
        // first one's sync has ended when a stack of the second one's product misses it.
        sync_some(&store, &catalog, &|s| s.name_any() == "first")
            .await
            .unwrap();
        assert_eq!(catalog.started.load(Ordering::Acquire), 0);
        let hour = MissPolicy::OncePer(std::time::Duration::from_secs(3600));
        ensure_version(&store, &catalog, "two", None, hour)
            .await
            .unwrap();
        assert!(catalog.read().unwrap().find("two", "1.0.0").is_some());
        assert_eq!(catalog.started.load(Ordering::Acquire), 1);
    }

    #[tokio::test]
    async fn what_was_last_synced_loads_without_a_sync() {
        let dir = tempfile::TempDir::new().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        directory_source(&store, dir.path(), "first", "one").await;
        let catalog = SharedCatalog::default();
        assert_eq!(load_kept(&store, &catalog).await.unwrap(), 1);
        assert!(catalog.read().unwrap().find("one", "1.0.0").is_some());
        assert_eq!(catalog.started.load(Ordering::Acquire), 0);
    }
}
