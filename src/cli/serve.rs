//! `rsgo serve`: the hooks, the catalog and the reconciler in one process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::runtime::WatchStreamExt;
use sha2::{Digest, Sha256};

use crate::api::{
    AppState, AuthGuard, DEFAULT_FAILURES_PER_MINUTE, HttpLimits, RefusalLog, Shared, refusals,
    router,
};
use crate::audit::AuditLog;
use crate::auth::KeyIndex;
use crate::catalog::sync::{self, SharedCatalog};
use crate::model::{
    CONTROLLER_MANAGER, CatalogSource, CatalogSourceSpec, DEFAULT_ENVIRONMENT, DirectorySource,
    HOOKS_MANAGER,
};
use crate::reconcile::leader::{self, LeaseLock};
use crate::reconcile::{self, Context};
use crate::store::{KubeStore, Store};
use crate::{Error, Result};

/// Deletion tombstones younger than this many revisions stay for the change feed.
const TOMBSTONE_REVISIONS: u64 = 10_000;

/// Where `rsgo serve` keeps its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The embedded SQLite database in `--data-dir`.
    Sqlite,
    /// Custom resources in the Kubernetes cluster of the in-cluster config or KUBECONFIG.
    Kubernetes,
}

/// Options of `rsgo serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where objects live: `sqlite` (standalone) or `kubernetes` (custom resources).
    #[arg(long, env = "RSGO_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Name of the Lease that elects the one reconciling replica (Kubernetes store).
    #[arg(long, default_value = "rsgo-controller")]
    pub lease_name: String,
    /// Address to serve the API on.
    #[arg(long, env = "RSGO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Register a directory of manifests as a catalog source; repeat for several.
    #[arg(long = "catalog")]
    pub catalogs: Vec<PathBuf>,
    /// Seconds between full reconciles that correct drift.
    #[arg(long, env = "RSGO_RESYNC_SECONDS", default_value_t = 30)]
    pub resync_seconds: u64,
    /// Environment used when neither a request nor its key names one.
    #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
    pub default_environment: String,
    /// Seconds a client gets to send a complete request head; a kept-alive connection idle this
    /// long is closed too.
    #[arg(long, env = "RSGO_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_timeout_seconds: u64,
    /// Seconds a client gets to send a whole request body.
    #[arg(long, env = "RSGO_BODY_TIMEOUT_SECONDS", default_value_t = 30)]
    pub body_timeout_seconds: u64,
    /// Connections served at once; more wait until one closes.
    #[arg(long, env = "RSGO_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Failed authentications one address may make per minute before it is answered 429 with
    /// Retry-After until its budget refills; 0 turns the limit off.
    #[arg(long, env = "RSGO_AUTH_FAILURES_PER_MINUTE", default_value_t = DEFAULT_FAILURES_PER_MINUTE)]
    pub auth_failures_per_minute: u32,
    /// Audit entries kept; the oldest beyond it are removed. 0 keeps every entry.
    #[arg(long, env = "RSGO_AUDIT_RETENTION", default_value_t = crate::audit::DEFAULT_RETENTION)]
    pub audit_retention: usize,
    /// PEM certificate chain to serve HTTPS with (needs --tls-key). Read again when the file
    /// changes, so a renewed certificate is served without a restart.
    #[arg(long, env = "RSGO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RSGO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServeArgs {
    fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(self.header_timeout_seconds.max(1)),
            body_timeout: Duration::from_secs(self.body_timeout_seconds.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }
}

/// Name of the lock file that lets one `rsgo serve` reconcile a data directory.
const RECONCILE_LOCK: &str = "reconcile.lock";

/// Runs the reconciler of a SQLite store once this process holds the data directory's lock.
/// Another `rsgo serve` on the same directory keeps it; this one then serves the hooks only and
/// takes over when the other stops (the operating system releases the lock of a dead process,
/// `kill -9` included).
async fn reconcile_when_locked(
    data_dir: &std::path::Path,
    run: impl Future<Output = ()>,
) -> Result<()> {
    let path = data_dir.join(RECONCILE_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::warn!(
                lock = %path.display(),
                "another rsgo serve reconciles this data directory; this one serves the hooks \
                 only and takes over when that one stops"
            );
            let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                .await
                .map_err(|e| Error::Task(e.to_string()))?
                .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
            tracing::info!("the other rsgo serve stopped; this one reconciles now");
            crate::metrics::global().set_leader(true);
            run.await;
            drop(file);
            return Ok(());
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io(format!("locking {}", path.display()), e));
        }
    }
    crate::metrics::global().set_leader(true);
    run.await;
    drop(file);
    Ok(())
}

/// Registers a `--catalog` directory as a CatalogSource named after the directory.
async fn register_catalog(store: &Arc<dyn Store>, dir: &std::path::Path) -> Result<()> {
    let path = std::fs::canonicalize(dir)
        .map_err(|e| Error::io(format!("--catalog {}", dir.display()), e))?;
    let digest = hex::encode(&Sha256::digest(path.to_string_lossy().as_bytes())[..4]);
    let source = CatalogSource {
        metadata: ObjectMeta {
            name: Some(format!("dir-{digest}")),
            ..Default::default()
        },
        spec: CatalogSourceSpec {
            directory: Some(DirectorySource {
                path: path.to_string_lossy().into_owned(),
            }),
            git: None,
        },
        status: None,
    };
    match store.create(&source).await {
        Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn serve(data_dir: &std::path::Path, args: ServeArgs) -> Result<()> {
    let Stores {
        controller: store,
        hooks: hooks_store,
        client,
    } = open_stores(data_dir, args.store).await?;
    for dir in &args.catalogs {
        register_catalog(&store, dir).await?;
    }
    // Secrets of git sources: rsgo's own namespace on Kubernetes, none in standalone mode.
    let secret_namespace = match &client {
        Some(client) => {
            std::env::var("POD_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_owned())
        }
        None => String::new(),
    };
    let catalog = Arc::new(SharedCatalog::with_git_cache(
        data_dir.join("git"),
        secret_namespace,
    ));
    match sync::load_kept(&store, &catalog).await {
        Ok(versions) => tracing::info!(versions, "catalog loaded as it was last synced"),
        Err(error) => {
            tracing::warn!(%error, "the last synced catalog could not be loaded; each source loads with its first sync");
        }
    }
    let catalog_synced = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(sync_on_source_changes(
        store.clone(),
        catalog.clone(),
        catalog_synced.clone(),
    ));
    tokio::spawn(sync_on_intervals(
        store.clone(),
        catalog.clone(),
        catalog_synced.clone(),
    ));

    let resync = Duration::from_secs(args.resync_seconds.max(1));
    let mut ctx = Context::new(store.clone(), catalog.clone()).with_resync(resync);
    let identity =
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("rsgo-{}", std::process::id()));
    if let Some(client) = &client {
        ctx = ctx.with_kubernetes(client.clone(), &identity);
    }
    let ctx = Arc::new(ctx);
    let keys = KeyIndex::follow(store.clone()).await?;
    match client {
        None => {
            let run = reconcile::run(ctx, resync, catalog_synced.clone());
            let data_dir = data_dir.to_owned();
            tokio::spawn(async move {
                if let Err(error) = reconcile_when_locked(&data_dir, run).await {
                    tracing::error!(%error, "cannot reconcile");
                }
            });
        }
        Some(client) => {
            // Every replica serves hooks; only the Lease holder reconciles.
            let namespace = std::env::var("POD_NAMESPACE")
                .unwrap_or_else(|_| client.default_namespace().to_owned());
            let lock = LeaseLock::new(
                kube::Api::namespaced(client, &namespace),
                &args.lease_name,
                &identity,
            );
            let synced = catalog_synced.clone();
            tokio::spawn(leader::lead(lock, move || {
                reconcile::run(ctx.clone(), resync, synced.clone())
            }));
        }
    }

    let refusals = Arc::new(RefusalLog::default());
    let guard = Arc::new(AuthGuard::new(args.auth_failures_per_minute));
    tokio::spawn(report_refusals(refusals.clone(), guard.clone()));
    let limits = args.http_limits();
    let audit = AuditLog::start(hooks_store.clone(), args.audit_retention);
    let state = AppState::from(Shared {
        keys,
        store: hooks_store,
        catalog,
        default_environment: args.default_environment,
        catalog_synced,
        http: limits,
        refusals,
        guard,
        audit: audit.clone(),
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::api::tls::Certificates::load(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::io(format!("listening on {}", args.listen), e))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %args.listen, %scheme, "rsgo serving");
    let served = crate::api::serve(listener, router(state), limits, tls, shutdown_signal())
        .await
        .map_err(|e| Error::io("serving", e));
    audit.flush().await;
    served
}

/// Where `serve` keeps its objects: one store for the reconciler and one for the hooks (the same
/// one in SQLite; on Kubernetes they differ in the field manager their writes carry).
struct Stores {
    controller: Arc<dyn Store>,
    hooks: Arc<dyn Store>,
    client: Option<kube::Client>,
}

async fn open_stores(data_dir: &std::path::Path, kind: StoreKind) -> Result<Stores> {
    match kind {
        StoreKind::Sqlite => {
            let (store, sqlite) = super::open_sqlite_store(data_dir).await?;
            let purged = sqlite.purge_tombstones(TOMBSTONE_REVISIONS).await?;
            tracing::debug!(purged, "old deletion tombstones purged");
            Ok(Stores {
                controller: store.clone(),
                hooks: store,
                client: None,
            })
        }
        StoreKind::Kubernetes => {
            let client = kube::Client::try_default().await.map_err(|e| {
                Error::kube(
                    "connecting to the cluster (in-cluster config or KUBECONFIG)",
                    e,
                )
            })?;
            Ok(Stores {
                controller: Arc::new(KubeStore::new(client.clone(), CONTROLLER_MANAGER)),
                hooks: Arc::new(KubeStore::new(client.clone(), HOOKS_MANAGER)),
                client: Some(client),
            })
        }
    }
}

/// Syncs a CatalogSource whenever its spec changes (the first listing included), and a git
/// source whenever its status names a commit this process has not loaded: another replica (or
/// process) synced it, and this one follows. Wakes stacks waiting for a product.
async fn sync_on_source_changes(
    store: Arc<dyn Store>,
    catalog: Arc<SharedCatalog>,
    synced: Arc<tokio::sync::Notify>,
) {
    let changes = |source: &CatalogSource| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        source.metadata.generation.hash(&mut hasher);
        source
            .status
            .as_ref()
            .and_then(|s| s.revision.as_ref())
            .hash(&mut hasher);
        Some(hasher.finish())
    };
    let sources = store
        .clone()
        .watch::<CatalogSource>()
        .applied_objects()
        .predicate_filter(changes, Default::default());
    futures::pin_mut!(sources);
    let mut generations: std::collections::HashMap<String, Option<i64>> = Default::default();
    while let Some(source) = sources.next().await {
        let Ok(source) = source else {
            continue;
        };
        let name = source.name_any();
        let generation = source.metadata.generation;
        let revision = source.status.as_ref().and_then(|s| s.revision.clone());
        let spec_changed = generations.insert(name.clone(), generation) != Some(generation);
        if !spec_changed {
            if revision.is_none() || revision == catalog.loaded_revision(&name) {
                continue;
            }
            tracing::info!(source = %name, revision = ?revision, "following a revision synced elsewhere");
        }
        let picked = |s: &CatalogSource| s.name_any() == name;
        sync_and_wake(&store, &catalog, &synced, &picked, &name, "catalog synced").await;
    }
}

/// Syncs the sources `which` picks, logs what came of it (`what`, with `trigger`), and wakes the
/// stacks waiting for a product.
async fn sync_and_wake(
    store: &Arc<dyn Store>,
    catalog: &SharedCatalog,
    synced: &tokio::sync::Notify,
    which: &(dyn Fn(&CatalogSource) -> bool + Sync),
    trigger: &str,
    what: &str,
) {
    match sync::sync_some(store, catalog, which).await {
        Ok(report) => {
            for error in &report.errors {
                tracing::warn!(%error, "catalog problem");
            }
            tracing::info!(trigger = %trigger, versions = report.versions_loaded, "{what}");
        }
        Err(error) => tracing::error!(%error, "catalog sync failed"),
    }
    synced.notify_one();
}

/// How often rsgo looks for git sources whose `interval` has passed.
const INTERVAL_CHECK: Duration = Duration::from_secs(5);

/// Fetches each git source with an `interval` once per interval, counted from its last sync or
/// from the last attempt, so an unreachable remote is tried once per interval too.
async fn sync_on_intervals(
    store: Arc<dyn Store>,
    catalog: Arc<SharedCatalog>,
    synced: Arc<tokio::sync::Notify>,
) {
    let mut attempted: std::collections::HashMap<String, jiff::Timestamp> = Default::default();
    let mut every = tokio::time::interval(INTERVAL_CHECK);
    loop {
        every.tick().await;
        let Ok(sources) = store.list::<CatalogSource>(None).await else {
            continue;
        };
        let now = jiff::Timestamp::now();
        let due: Vec<String> = sources
            .iter()
            .filter(|source| {
                let Some(Ok(Some(interval))) = source.spec.git.as_ref().map(|g| g.interval())
                else {
                    return false;
                };
                let synced = source.status.as_ref().and_then(|s| s.last_sync_at);
                let last = attempted.get(&source.name_any()).copied().max(synced);
                last.is_none_or(|at| now.duration_since(at).unsigned_abs() >= interval)
            })
            .map(|source| source.name_any())
            .collect();
        if due.is_empty() {
            continue;
        }
        for name in &due {
            attempted.insert(name.clone(), now);
        }
        let picked = |s: &CatalogSource| due.contains(&s.name_any());
        let trigger = due.join(",");
        let what = "git sources fetched on their interval";
        sync_and_wake(&store, &catalog, &synced, &picked, &trigger, what).await;
    }
}

/// Logs the refusals counted since the last summary, once per period, and lets the guard forget
/// addresses whose budget is full again.
async fn report_refusals(refusals: Arc<RefusalLog>, guard: Arc<AuthGuard>) {
    let mut every = tokio::time::interval(refusals::SUMMARY_PERIOD);
    loop {
        every.tick().await;
        refusals.flush();
        guard.forget_old();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}
