//! Loading catalog sources into the in-memory catalog and reporting on each source.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use jiff::Timestamp;
use kube::ResourceExt;

use super::{Catalog, Loaded, load_directory};
use crate::model::{CatalogSource, CatalogSourceStatus};
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
    /// Syncs that have taken their turn so far.
    started: AtomicU64,
    /// When the last sync ended.
    finished: std::sync::Mutex<Option<std::time::Instant>>,
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

    /// Reads the catalog; a lock poisoned by a panic is reported, not propagated.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, Catalog>> {
        self.catalog
            .read()
            .map_err(|_| Error::Task("catalog lock poisoned".into()))
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
    sync_in_turn(store, catalog, turn).await
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
    let report = sync_in_turn(store, catalog, turn).await?;
    for error in &report.errors {
        tracing::warn!(%error, "catalog problem");
    }
    Ok(())
}

/// Reads every CatalogSource. A source that cannot be read keeps its last good set of
/// products and its error is reported; broken files are reported and the rest still load.
async fn sync_in_turn(
    store: &Arc<dyn Store>,
    catalog: &SharedCatalog,
    _turn: tokio::sync::MutexGuard<'_, ()>,
) -> Result<SyncReport> {
    catalog.started.fetch_add(1, Ordering::AcqRel);
    let sources = store.list::<CatalogSource>(None).await?;
    let mut report = SyncReport::default();
    for source in &sources {
        let name = source.name_any();
        let outcome = match &source.spec.directory {
            Some(dir) => {
                let path = PathBuf::from(&dir.path);
                tokio::task::spawn_blocking(move || load_directory(&path))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))?
            }
            None => Err(Error::Invalid("the source names no directory".into())),
        };
        let status = match outcome {
            Ok(Loaded { versions, errors }) => {
                report.sources_synced += 1;
                let products: std::collections::BTreeSet<_> =
                    versions.iter().map(|v| v.product.clone()).collect();
                let status = CatalogSourceStatus {
                    last_sync_at: Some(Timestamp::now()),
                    products_loaded: products.len() as u32,
                    versions_loaded: versions.len() as u32,
                    errors: errors.iter().map(ToString::to_string).collect(),
                };
                catalog.write()?.replace_source(&name, versions);
                report
                    .errors
                    .extend(errors.iter().map(|e| format!("source '{name}': {e}")));
                status
            }
            Err(error) => {
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
    *catalog.finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
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
        let manifests = dir.path().join("catalog");
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(
            manifests.join("app.yaml"),
            "metadata: {name: app, productVersion: '1.0.0'}\nservices:\n  web: {image: x}\n",
        )
        .unwrap();
        let source = CatalogSource::new(
            "src",
            CatalogSourceSpec {
                directory: Some(DirectorySource {
                    path: manifests.to_string_lossy().into_owned(),
                }),
            },
        );
        store.create(&source).await.unwrap();
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
}
