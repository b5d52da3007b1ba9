//! The embedded store: one SQLite file in WAL mode.
//!
//! Every write takes the next value of a global revision counter inside its transaction, so
//! revisions are totally ordered across processes and a watcher that remembers the newest
//! revision it saw never misses a commit. Deletions leave a tombstone row for the feed.
//!
//! Writes go to one writer thread, which commits the batches that arrive together in one
//! transaction with one fsync (group commit). Each batch runs in its own savepoint, so one that
//! fails changes nothing and does not fail the others, and no batch is answered before the
//! commit that holds it is durable. Point reads run on the calling thread; listings and the
//! change feed run on a few reader threads of the store's own, so a burst of requests queues for
//! them instead of growing the runtime's blocking pool. Both take read connections from one
//! pool. No read waits for a commit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::runtime::watcher;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use super::wal_index::CommitWatch;
use super::{
    CONTENT_FIELDS, Change, Changes, Label, ObjectCache, Store, Stored, Write, check_writes,
    identity, text,
};
use crate::{Error, Result};

/// How often the store looks for writes made by other processes.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Reader threads: the most listings and change-feed reads served at once.
const READERS: usize = 4;
/// Most write batches committed together.
const MAX_GROUP: usize = 256;
/// Most changes the change feed reads at once.
const PAGE: usize = 256;

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "rsgo.db";

/// [`Store`] on an embedded SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    pool: Arc<Pool>,
    /// Work for the reader threads; they end once the store (and with it this sender) is gone.
    queue: mpsc::Sender<ReadJob>,
    writer: mpsc::Sender<Job>,
    written: Arc<watch::Sender<u64>>,
    /// Set once the task that looks for other processes' writes runs.
    polling: Arc<AtomicBool>,
    /// Set when a write failed for lack of space; cleared by the next write that succeeds.
    full: Arc<AtomicBool>,
    /// Decoded objects at the newest revision known: told of every commit by the writer thread
    /// and of every revision read; used once the store follows other processes' writes.
    objects: Arc<ObjectCache>,
    /// Tells whether anything was committed since the revision was last read.
    commits: Arc<CommitWatch>,
}

/// Connections for reads, opened as needed and kept for the next read, the most recently used
/// first (so a quiet store keeps one connection's cache warm rather than several half-filled).
struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Work for a reader thread.
type ReadJob = Box<dyn FnOnce(&Pool) + Send>;

/// Work for the writer thread.
enum Job {
    /// A batch of writes, applied atomically; answered once committed.
    Write {
        writes: Vec<Write>,
        reply: oneshot::Sender<Result<(Vec<Value>, u64)>>,
    },
    /// Something that needs the write connection to itself (maintenance, probes).
    Alone(Box<dyn FnOnce(&mut Connection) + Send>),
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Without this, the bundled SQLite (built with STAT4) compiles a cached statement again
    // whenever a parameter takes a new value, in case a better plan exists for it: in a resync
    // pass that was a fifth of rsgo's CPU. rsgo's queries are index lookups whose plan never
    // depends on the values.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating when needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| Error::io(format!("creating data directory {}", data_dir.display()), e))?;
        let path = data_dir.join(DATABASE_FILE);
        let conn = connect(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL syncs the WAL on every commit: an acknowledged write survives a crash of the
        // process and of the machine.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS objects (
                kind TEXT NOT NULL,
                namespace TEXT NOT NULL,
                name TEXT NOT NULL,
                revision INTEGER NOT NULL,
                deleted INTEGER NOT NULL DEFAULT 0,
                body TEXT NOT NULL,
                PRIMARY KEY (kind, namespace, name)
            );
            CREATE INDEX IF NOT EXISTS objects_by_revision ON objects (kind, revision);
            CREATE INDEX IF NOT EXISTS objects_by_name ON objects (kind, name);
            CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
            INSERT OR IGNORE INTO revision (id, value) VALUES (0, 0);",
        )?;
        migrate(&conn)?;
        // The writer thread keeps `conn` open for as long as the store lives.
        let commits = Arc::new(CommitWatch::open(&path));
        let objects = Arc::new(ObjectCache::default());
        let (writer, jobs) = mpsc::channel();
        let told = objects.clone();
        std::thread::Builder::new()
            .name("rsgo-store-writer".into())
            .spawn(move || write_loop(conn, jobs, &told))
            .map_err(|e| Error::io("starting the store's writer thread", e))?;
        let (queue, jobs) = mpsc::channel();
        let jobs = Arc::new(Mutex::new(jobs));
        let pool = Arc::new(Pool {
            path,
            idle: Mutex::new(Vec::new()),
        });
        for _ in 0..READERS {
            let (pool, jobs) = (pool.clone(), jobs.clone());
            std::thread::Builder::new()
                .name("rsgo-store-reader".into())
                .spawn(move || read_loop(&pool, &jobs))
                .map_err(|e| Error::io("starting the store's reader threads", e))?;
        }
        let (written, _) = watch::channel(0);
        Ok(Self {
            pool,
            queue,
            writer,
            written: Arc::new(written),
            polling: Arc::new(AtomicBool::new(false)),
            full: Arc::new(AtomicBool::new(false)),
            objects,
            commits,
        })
    }

    /// Starts, once, the task that looks for writes of other processes (`rsgo apply`, `rsgo
    /// apikey revoke`, ...) every [`POLL_INTERVAL`] and wakes the subscribers when it finds one:
    /// one look for all of them, rather than a read per watch. It ends with the store.
    fn follow_other_writers(&self) {
        if self.polling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, objects, commits) = (
            self.pool.clone(),
            self.objects.clone(),
            self.commits.clone(),
        );
        let written = Arc::downgrade(&self.written);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(written) = written.upgrade() else {
                    return;
                };
                match read_newest(&pool, &commits, &objects) {
                    Ok(newest) => {
                        written.send_if_modified(|seen| {
                            let newer = newest > *seen;
                            if newer {
                                *seen = newest;
                            }
                            newer
                        });
                    }
                    Err(error) => tracing::warn!(%error, "reading the store's revision failed"),
                }
            }
        });
    }

    /// Drops deletion tombstones more than `keep` revisions old; returns how many went. Watchers
    /// that far behind start over with a full listing anyway, so nothing they need is lost.
    pub async fn purge_tombstones(&self, keep: u64) -> Result<usize> {
        self.alone(move |conn| {
            let purged = conn.execute(
                "DELETE FROM objects WHERE deleted = 1
                 AND revision < (SELECT value FROM revision WHERE id = 0) - ?1",
                params![keep as i64],
            )?;
            Ok(purged)
        })
        .await
    }

    /// Runs `work` on the write connection, between two groups of writes.
    async fn alone<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job::Alone(Box::new(move |conn| {
                let _ = reply.send(work(conn));
            })))
            .map_err(|_| Error::Task("the store's writer thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Task("the store's writer thread has stopped".into()))?
    }

    /// Runs a point read (one row by its key) on the calling thread: such a read takes
    /// microseconds in WAL mode, where readers never wait for the writer, less than handing it
    /// to a blocking thread and back would. Listings go through [`Self::read`].
    fn read_point<T>(&self, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.pool.with_connection(work)
    }

    /// Runs `work` on one of the store's reader threads.
    fn read<T, F>(&self, work: F) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send(Box::new(move |pool: &Pool| {
            let _ = reply.send(pool.with_connection(work));
        }));
        async move {
            let stopped = || Error::Task("the store's reader threads have stopped".into());
            queued.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        }
        .boxed()
    }
}

impl Pool {
    /// Runs `work` on an idle connection (one is opened when none is idle), which is kept for
    /// the next read afterwards.
    fn with_connection<T>(&self, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => connect(&self.path)?,
        };
        let result = work(&conn);
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        result
    }
}

/// A reader thread: runs queued reads on connections of the pool. A read that panics fails
/// alone (its caller gets an error, its connection is closed) and the thread goes on. Ends when
/// the store is dropped.
fn read_loop(pool: &Pool, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(pool)));
    }
}

/// The writer thread: takes every job that is waiting, commits the write batches among them
/// together, and answers each once its commit is durable. Ends when the store is dropped.
fn write_loop(mut conn: Connection, jobs: mpsc::Receiver<Job>, objects: &ObjectCache) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut batches = Vec::new();
        for job in group {
            match job {
                Job::Write { writes, reply } => batches.push((writes, reply)),
                Job::Alone(work) => {
                    commit_group(&mut conn, std::mem::take(&mut batches), objects);
                    work(&mut conn);
                }
            }
        }
        commit_group(&mut conn, batches, objects);
    }
}

/// What the writer answers for one batch: the stored objects and the revision of the commit.
type Reply = oneshot::Sender<Result<(Vec<Value>, u64)>>;

/// Applies each batch in its own savepoint of one transaction, commits once, tells the object
/// cache of the store's newest revision (also when every batch failed: a batch that lost a race
/// to another process's write must find that write when it reads again), then answers.
fn commit_group(conn: &mut Connection, batches: Vec<(Vec<Write>, Reply)>, objects: &ObjectCache) {
    if batches.is_empty() {
        return;
    }
    let (batches, replies): (Vec<_>, Vec<_>) = batches.into_iter().unzip();
    let mut outcomes = Vec::with_capacity(batches.len());
    let committed = (|| -> Result<u64> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for writes in batches {
            let mut savepoint = tx.savepoint()?;
            let applied = writes
                .into_iter()
                .map(|write| apply_write(&savepoint, write))
                .collect::<Result<Vec<_>>>();
            match applied {
                Ok(stored) => {
                    savepoint.commit()?;
                    outcomes.push(Ok(stored.into_iter().flatten().collect()));
                }
                Err(error) => {
                    savepoint.rollback()?;
                    outcomes.push(Err(error));
                }
            }
        }
        let revision = newest_revision(&tx)?;
        tx.commit()?;
        Ok(revision as u64)
    })();
    match committed {
        Ok(revision) => {
            objects.observe(revision);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome.map(|stored: Vec<Value>| (stored, revision)));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(for_each_batch(&error)));
            }
        }
    }
}

/// The error of a failed commit, for each batch it held: SQLite's own code is kept (a full disk
/// must still read as one), anything else becomes its message.
fn for_each_batch(error: &Error) -> Error {
    match error {
        Error::Sqlite(rusqlite::Error::SqliteFailure(code, message)) => {
            Error::Sqlite(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => Error::Task(format!("committing to the store: {other}")),
    }
}

/// Brings an older database to this version's schema, once, in one transaction:
/// 1. the `labels` table, which indexes every live object's labels for labelled listings.
fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version >= 1 {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS labels (
             kind TEXT NOT NULL,
             namespace TEXT NOT NULL,
             name TEXT NOT NULL,
             key TEXT NOT NULL,
             value TEXT NOT NULL,
             PRIMARY KEY (kind, namespace, name, key)
         );
         CREATE INDEX IF NOT EXISTS labels_by_value ON labels (kind, key, value, namespace);
         INSERT OR REPLACE INTO labels (kind, namespace, name, key, value)
             SELECT o.kind, o.namespace, o.name, l.key, l.value
             FROM objects o, json_each(o.body, '$.metadata.labels') l
             WHERE o.deleted = 0 AND l.type = 'text';
         PRAGMA user_version = 1;
         COMMIT;",
    )?;
    Ok(())
}

fn parse(body: &str) -> Result<Value> {
    serde_json::from_str(body).map_err(|e| Error::json("decoding a stored object", e))
}

// Statements on the hot paths are prepared once per connection and kept (`prepare_cached`):
// parsing SQL again for every read showed in profiles of resync passes.

/// The store's newest revision.
fn newest_revision(tx: &Connection) -> Result<i64> {
    Ok(tx
        .prepare_cached("SELECT value FROM revision WHERE id = 0")?
        .query_row([], |r| r.get(0))?)
}

/// The store's newest revision, told to the object cache: the one read last while the WAL-index
/// shows no commit since, otherwise read on a pool connection of the calling thread.
fn read_newest(pool: &Pool, commits: &CommitWatch, objects: &ObjectCache) -> Result<u64> {
    let newest = commits.newest(|| Ok(pool.with_connection(newest_revision)? as u64))?;
    objects.observe(newest);
    Ok(newest)
}

fn next_revision(tx: &Connection) -> Result<u64> {
    let value: i64 = tx
        .prepare_cached("UPDATE revision SET value = value + 1 WHERE id = 0 RETURNING value")?
        .query_row([], |r| r.get(0))?;
    Ok(value as u64)
}

fn load(tx: &Connection, kind: &str, namespace: &str, name: &str) -> Result<Option<Value>> {
    load_text(tx, kind, namespace, name)?
        .map(|body| parse(&body))
        .transpose()
}

/// The stored text of one object.
fn load_text(tx: &Connection, kind: &str, namespace: &str, name: &str) -> Result<Option<String>> {
    Ok(tx
        .prepare_cached(
            "SELECT body FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3 AND deleted = 0",
        )?
        .query_row(params![kind, namespace, name], |r| r.get::<_, String>(0))
        .optional()?)
}

fn save(
    tx: &Connection,
    kind: &str,
    namespace: &str,
    name: &str,
    revision: u64,
    deleted: bool,
    doc: &Value,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO objects (kind, namespace, name, revision, deleted, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (kind, namespace, name) DO UPDATE SET revision = ?4, deleted = ?5, body = ?6",
    )?
    .execute(params![kind, namespace, name, revision as i64, deleted, doc.to_string()])?;
    tx.prepare_cached("DELETE FROM labels WHERE kind = ?1 AND namespace = ?2 AND name = ?3")?
        .execute(params![kind, namespace, name])?;
    if let (false, Some(labels)) = (deleted, doc["metadata"]["labels"].as_object()) {
        let mut insert = tx.prepare_cached(
            "INSERT INTO labels (kind, namespace, name, key, value) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (key, value) in labels {
            if let Some(value) = value.as_str() {
                insert.execute(params![kind, namespace, name, key, value])?;
            }
        }
    }
    Ok(())
}

fn has_finalizers(doc: &Value) -> bool {
    doc["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn load_existing(tx: &Connection, kind: &str, namespace: &str, name: &str) -> Result<Value> {
    load(tx, kind, namespace, name)?.ok_or_else(|| Error::NotFound {
        kind: kind.to_owned(),
        name: name.to_owned(),
    })
}

/// Gives `doc` the next revision and saves it (as a tombstone when `deleted`).
fn store_revision(
    tx: &Connection,
    kind: &str,
    namespace: &str,
    name: &str,
    deleted: bool,
    doc: &mut Value,
) -> Result<()> {
    let revision = next_revision(tx)?;
    doc["metadata"]["resourceVersion"] = json!(revision.to_string());
    save(tx, kind, namespace, name, revision, deleted, doc)
}

fn apply_write(tx: &Connection, write: Write) -> Result<Option<Value>> {
    match write {
        Write::Create(mut doc) => {
            let (kind, namespace, name) = identity(&doc)?;
            if load(tx, &kind, &namespace, &name)?.is_some() {
                return Err(Error::AlreadyExists { kind, name });
            }
            let meta = &mut doc["metadata"];
            meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
            meta["generation"] = json!(1);
            meta["creationTimestamp"] = json!(jiff::Timestamp::now().to_string());
            store_revision(tx, &kind, &namespace, &name, false, &mut doc)?;
            Ok(Some(doc))
        }
        Write::Update(doc) => {
            let (kind, namespace, name) = identity(&doc)?;
            let mut stored = load_existing(tx, &kind, &namespace, &name)?;
            let expected = text(&doc, "/metadata/resourceVersion");
            if !expected.is_empty() && expected != text(&stored, "/metadata/resourceVersion") {
                return Err(Error::Conflict { kind, name });
            }
            if CONTENT_FIELDS.iter().any(|f| stored.get(f) != doc.get(f)) {
                let generation = stored["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                stored["metadata"]["generation"] = json!(generation);
                for field in CONTENT_FIELDS {
                    match doc.get(field) {
                        Some(value) => stored[field] = value.clone(),
                        None => {
                            if let Some(object) = stored.as_object_mut() {
                                object.remove(field);
                            }
                        }
                    }
                }
            }
            // deletionTimestamp is the store's to set (on a delete request), never the writer's.
            for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                match doc["metadata"].get(field) {
                    Some(value) => stored["metadata"][field] = value.clone(),
                    None => {
                        if let Some(meta) = stored["metadata"].as_object_mut() {
                            meta.remove(field);
                        }
                    }
                }
            }
            // As on Kubernetes: a deleted object goes once its last finalizer is removed.
            let gone =
                stored["metadata"].get("deletionTimestamp").is_some() && !has_finalizers(&stored);
            store_revision(tx, &kind, &namespace, &name, gone, &mut stored)?;
            Ok((!gone).then_some(stored))
        }
        Write::UpdateStatus(doc) => {
            let (kind, namespace, name) = identity(&doc)?;
            let mut stored = load_existing(tx, &kind, &namespace, &name)?;
            stored["status"] = doc.get("status").cloned().unwrap_or(Value::Null);
            store_revision(tx, &kind, &namespace, &name, false, &mut stored)?;
            Ok(Some(stored))
        }
        Write::Delete {
            kind,
            namespace,
            name,
        } => {
            let mut stored = load_existing(tx, &kind, &namespace, &name)?;
            // As on Kubernetes: an object with finalizers is only marked; its controller finishes.
            if has_finalizers(&stored) {
                if stored["metadata"].get("deletionTimestamp").is_none() {
                    stored["metadata"]["deletionTimestamp"] =
                        json!(jiff::Timestamp::now().to_string());
                    store_revision(tx, &kind, &namespace, &name, false, &mut stored)?;
                }
                return Ok(None);
            }
            store_revision(tx, &kind, &namespace, &name, true, &mut stored)?;
            Ok(None)
        }
    }
}

impl Store for SqliteStore {
    fn secrets_namespace(&self, _namespace: &str) -> String {
        String::new()
    }

    fn get_raw(
        &self,
        kind: String,
        namespace: String,
        name: String,
    ) -> BoxFuture<'_, Result<Option<Value>>> {
        std::future::ready(self.read_point(|conn| load(conn, &kind, &namespace, &name))).boxed()
    }

    fn get_stored(
        &self,
        kind: String,
        namespace: String,
        name: String,
    ) -> BoxFuture<'_, Result<Option<Stored>>> {
        let text = self.read_point(|conn| load_text(conn, &kind, &namespace, &name));
        std::future::ready(text.map(|text| text.map(Stored::Text))).boxed()
    }

    fn list_raw(
        &self,
        kind: String,
        namespace: Option<String>,
        label: Option<Label>,
    ) -> BoxFuture<'_, Result<Vec<Value>>> {
        self.read(move |conn| {
            let Some(label) = label else {
                let mut stmt = conn.prepare_cached(
                    "SELECT body FROM objects WHERE kind = ?1 AND deleted = 0 AND (?2 IS NULL OR namespace = ?2)
                     ORDER BY namespace, name",
                )?;
                let rows = stmt.query_map(params![kind, namespace], |r| r.get::<_, String>(0))?;
                return rows.map(|body| parse(&body?)).collect();
            };
            let mut stmt = conn.prepare_cached(
                "SELECT o.body FROM labels l JOIN objects o
                   ON o.kind = l.kind AND o.namespace = l.namespace AND o.name = l.name
                 WHERE l.kind = ?1 AND l.key = ?2 AND l.value = ?3 AND (?4 IS NULL OR l.namespace = ?4)
                   AND o.deleted = 0
                 ORDER BY o.namespace, o.name",
            )?;
            let rows = stmt.query_map(params![kind, label.key, label.value, namespace], |r| {
                r.get::<_, String>(0)
            })?;
            rows.map(|body| parse(&body?)).collect()
        })
    }

    fn names_raw(&self, kind: String) -> BoxFuture<'_, Result<Vec<String>>> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT name FROM objects WHERE kind = ?1 AND deleted = 0")?;
            let rows = stmt.query_map(params![kind], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn find_raw(&self, kind: String, name: String) -> BoxFuture<'_, Result<Option<Value>>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT body FROM objects WHERE kind = ?1 AND name = ?2 AND deleted = 0 LIMIT 1",
            )?;
            stmt.query_row(params![kind, name], |r| r.get::<_, String>(0))
                .optional()?
                .map(|body| parse(&body))
                .transpose()
        })
    }

    fn write(&self, writes: Vec<Write>) -> BoxFuture<'_, Result<Vec<Value>>> {
        if let Err(error) = check_writes(&writes) {
            return std::future::ready(Err(error)).boxed();
        }
        let written = self.written.clone();
        let full = self.full.clone();
        let (reply, answer) = oneshot::channel();
        let sent = self.writer.send(Job::Write { writes, reply });
        async move {
            sent.map_err(|_| Error::Task("the store's writer thread has stopped".into()))?;
            let result = answer
                .await
                .map_err(|_| Error::Task("the store's writer thread has stopped".into()))?;
            let (stored, revision) = result.inspect_err(|e| {
                if e.is_storage_full() {
                    full.store(true, Ordering::Release);
                }
            })?;
            full.store(false, Ordering::Release);
            written.send_replace(revision);
            Ok(stored)
        }
        .boxed()
    }

    /// The first listing and every later change are read a page at a time and handed over
    /// through a bounded channel, so a slow consumer holds the feed back instead of letting it
    /// pile up in memory.
    fn watch_raw(self: Arc<Self>, kind: String) -> BoxStream<'static, watcher::Event<Value>> {
        let (tx, rx) = tokio::sync::mpsc::channel(PAGE);
        tokio::spawn(async move {
            let mut wake = self.subscribe();
            let mut revision = 0;
            let mut listed = false;
            if tx.send(watcher::Event::Init).await.is_err() {
                return;
            }
            loop {
                match self.changes_since(kind.clone(), revision, PAGE).await {
                    Ok(page) => {
                        let more = page.changes.len() == PAGE;
                        for change in page.changes {
                            let event = match (listed, change.deleted) {
                                (false, true) => continue,
                                (false, false) => watcher::Event::InitApply(change.object),
                                (true, true) => watcher::Event::Delete(change.object),
                                (true, false) => watcher::Event::Apply(change.object),
                            };
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        revision = page.revision;
                        if more {
                            continue;
                        }
                        if !listed {
                            if tx.send(watcher::Event::InitDone).await.is_err() {
                                return;
                            }
                            listed = true;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, %kind, "reading the change feed failed; retrying")
                    }
                }
                if tx.is_closed() {
                    return;
                }
                if wake.changed().await.is_err() {
                    return;
                }
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        })
        .boxed()
    }

    /// Only while this process follows other processes' writes (once anything subscribed, as
    /// `rsgo serve` does): then it learns of each within about a second. A process that never
    /// subscribes, such as a CLI command waiting for a deletion, reads the database every time.
    fn objects(&self) -> Option<&ObjectCache> {
        self.polling
            .load(Ordering::Acquire)
            .then_some(&*self.objects)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.follow_other_writers();
        self.written.subscribe()
    }

    fn changes_raw(
        &self,
        kind: String,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Changes>>> {
        let changes = self.changes_since(kind, since, limit);
        async move { Ok(Some(changes.await?)) }.boxed()
    }

    /// After a write failed for lack of space, a probe write tells whether there is room again:
    /// a row of 64 KiB written and deleted in one committed transaction, which leaves nothing.
    fn writable(&self) -> BoxFuture<'_, Result<()>> {
        if !self.full.load(Ordering::Acquire) {
            return std::future::ready(Ok(())).boxed();
        }
        let full = self.full.clone();
        let probe = self.alone(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO objects (kind, namespace, name, revision, deleted, body) \
                 VALUES ('', '', 'probe', 0, 1, zeroblob(65536))",
                [],
            )?;
            tx.execute("DELETE FROM objects WHERE kind = '' AND name = 'probe'", [])?;
            tx.commit()?;
            Ok(())
        });
        async move {
            probe.await?;
            full.store(false, Ordering::Release);
            Ok(())
        }
        .boxed()
    }
}

impl SqliteStore {
    /// At most `limit` changes of a kind after `revision`, oldest first. The revision returned
    /// is the store's newest when fewer than `limit` came back, else the last one's: read again
    /// from there for the rest.
    fn changes_since(
        &self,
        kind: String,
        revision: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Changes>> {
        // Most calls find nothing new (a key lookup between writes, a watch woken for a write it
        // already read): a look at the WAL-index, and one row read after a commit, on the
        // calling thread tell, without the hand-off to a reader thread.
        match read_newest(&self.pool, &self.commits, &self.objects) {
            Ok(newest) if newest <= revision => {
                return std::future::ready(Ok(Changes {
                    changes: Vec::new(),
                    revision,
                }))
                .boxed();
            }
            Err(error) => return std::future::ready(Err(error)).boxed(),
            Ok(_) => {}
        }
        let objects = self.objects.clone();
        self.read(move |conn| {
            // One read transaction: the rows and the newest revision are of one snapshot.
            let tx = conn.unchecked_transaction()?;
            let newest = newest_revision(&tx)?;
            objects.observe(newest as u64);
            let mut stmt = tx.prepare_cached(
                "SELECT body, deleted, revision FROM objects
                 WHERE kind = ?1 AND revision > ?2 AND revision <= ?3
                 ORDER BY revision LIMIT ?4",
            )?;
            let rows =
                stmt.query_map(params![kind, revision as i64, newest, limit as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
            let mut changes = Vec::new();
            let mut last = newest;
            for row in rows {
                let (body, deleted, revision) = row?;
                changes.push(Change {
                    object: parse(&body)?,
                    deleted,
                });
                last = revision;
            }
            drop(stmt);
            let revision = if changes.len() < limit { newest } else { last };
            Ok(Changes {
                changes,
                revision: revision as u64,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_keep_their_query_plans() {
        let dir = tempfile::TempDir::new().unwrap();
        let conn = connect(&dir.path().join(DATABASE_FILE)).unwrap();
        assert!(
            conn.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG)
                .unwrap()
        );
    }
}
