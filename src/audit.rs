//! The audit trail: who changed what, and every refused call, as `AuditEvent` objects in the
//! store.
//!
//! A change and its audit entry are written in one store write, so an acknowledged change is
//! never missing from the trail. Refusals and other entries that change nothing go through a
//! bounded queue that one task writes in batches gathered over a second: a flood of bad keys
//! costs one write per second, identical calls from one address become one entry with a
//! count, and when the queue is full further entries are counted and reported in one entry
//! instead of growing memory. Past the retention count, the oldest entries are removed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use rand::RngExt;
use tokio::sync::{mpsc, oneshot};

use crate::model::{ApiKey, AuditActor, AuditEvent, AuditEventSpec, AuditOutcome};
use crate::store::{Object, Store, Write, encode};
use crate::{Error, Result};

/// Entries kept when `rsgo serve` is not told otherwise.
pub const DEFAULT_RETENTION: usize = 100_000;
/// Entries waiting to be written at most; beyond it they are counted, not kept.
const QUEUE: usize = 4096;
/// Most different entries written in one store write.
const BATCH: usize = 512;
/// How long the writer gathers queued entries before writing them, so that a flood of identical
/// calls costs one entry (with a count) and one store write per window.
const WINDOW: Duration = Duration::from_secs(1);
/// The kind of the trail's objects.
const KIND: &str = "AuditEvent";
/// When the first check for entries beyond the retention count runs after start.
const FIRST_TRIM: Duration = Duration::from_secs(60);
/// How often the oldest entries beyond the retention count are removed (the check lists every
/// entry's name, so it is not done often).
const TRIM_EVERY: Duration = Duration::from_secs(10 * 60);

/// The actor of the command line on the server itself.
pub fn cli_actor() -> AuditActor {
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
    AuditActor {
        name: user.map_or_else(|| "cli".to_owned(), |user| format!("cli ({user})")),
        ..Default::default()
    }
}

/// The actor of a request made with `key` (its name and display prefix, never more of it)
/// from `address`.
pub fn key_actor(key: &ApiKey, address: Option<IpAddr>) -> AuditActor {
    AuditActor {
        name: key.spec.display_name.clone(),
        key_prefix: Some(key.spec.prefix.clone()),
        address: address.map(|a| a.to_string()),
    }
}

/// An entry happening now. Its name sorts by time: nanoseconds since 1970, then random digits
/// so entries of the same instant differ.
pub fn event(actor: AuditActor, action: &str, target: Option<String>) -> AuditEvent {
    let now = Timestamp::now();
    let name = format!(
        "{:020}-{}",
        now.as_nanosecond().max(0),
        hex::encode(rand::rng().random::<[u8; 4]>())
    );
    AuditEvent {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        spec: AuditEventSpec {
            time: now,
            actor,
            action: action.to_owned(),
            target,
            outcome: AuditOutcome::Succeeded,
            status_code: None,
            detail: None,
            count: None,
        },
    }
}

/// The store write that adds `event` to the trail, for batches that must carry it with the
/// change it records.
pub fn write(event: &AuditEvent) -> Result<Write> {
    encode(event).map(Write::Create)
}

enum Message {
    Record(Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
}

/// The queue of entries that are written on their own, and its writer.
pub struct AuditLog {
    queue: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts the writer for `store`, keeping the newest `retention` entries (0 keeps all).
    pub fn start(store: Arc<dyn Store>, retention: usize) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_queue(store, receiver, dropped.clone(), retention));
        Arc::new(Self { queue, dropped })
    }

    /// Queues an entry; when the queue is full it is counted instead, and the count is recorded.
    pub fn record(&self, event: AuditEvent) {
        if self
            .queue
            .try_send(Message::Record(Box::new(event)))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every entry queued so far is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// What makes two queued entries the same call: actor (address included), action, target,
/// outcome, status and detail.
type Sameness = (
    AuditActor,
    String,
    Option<String>,
    AuditOutcome,
    Option<u16>,
    Option<String>,
);

/// Queued entries gathered for one write, identical calls merged into one entry with a count.
#[derive(Default)]
struct Gathered {
    entries: Vec<AuditEvent>,
    index: HashMap<Sameness, usize>,
}

impl Gathered {
    fn add(&mut self, event: AuditEvent) {
        let spec = &event.spec;
        let same = (
            spec.actor.clone(),
            spec.action.clone(),
            spec.target.clone(),
            spec.outcome,
            spec.status_code,
            spec.detail.clone(),
        );
        match self.index.get(&same) {
            Some(&at) => {
                let first = &mut self.entries[at].spec;
                first.count = Some(first.count.unwrap_or(1) + event.spec.count.unwrap_or(1));
            }
            None => {
                self.index.insert(same, self.entries.len());
                self.entries.push(event);
            }
        }
    }
}

async fn write_queue(
    store: Arc<dyn Store>,
    mut receiver: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
    retention: usize,
) {
    let first_trim = tokio::time::Instant::now() + FIRST_TRIM;
    let mut trim_tick = tokio::time::interval_at(first_trim, TRIM_EVERY);
    trim_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            message = receiver.recv() => match message {
                Some(message) => message,
                None => return,
            },
            _ = trim_tick.tick() => {
                if retention > 0
                    && let Err(error) = trim(&store, retention).await
                {
                    tracing::warn!(%error, "removing the oldest audit entries failed");
                }
                continue;
            }
        };
        write_batch(&store, &mut receiver, &dropped, first).await;
    }
}

/// Gathers `first` and what else arrives within [`WINDOW`] (until a flush is asked for or a
/// batch of different entries is full), writes it in one store write, then answers the flushes.
async fn write_batch(
    store: &Arc<dyn Store>,
    receiver: &mut mpsc::Receiver<Message>,
    dropped: &AtomicU64,
    first: Message,
) {
    let deadline = tokio::time::Instant::now() + WINDOW;
    let mut gathered = Gathered::default();
    let mut flushes = Vec::new();
    let mut next = Some(first);
    while let Some(message) = next {
        match message {
            Message::Record(event) => gathered.add(*event),
            Message::Flush(done) => flushes.push(done),
        }
        next = if flushes.is_empty() && gathered.entries.len() < BATCH {
            tokio::select! {
                message = receiver.recv() => message,
                _ = tokio::time::sleep_until(deadline) => None,
            }
        } else {
            None
        };
    }
    let lost = dropped.swap(0, Ordering::Relaxed);
    if lost > 0 {
        let mut summary = event(
            AuditActor {
                name: "rsgo".into(),
                ..Default::default()
            },
            "audit.overflow",
            None,
        );
        summary.spec.outcome = AuditOutcome::Failed;
        summary.spec.detail = Some(format!(
            "{lost} entries arrived faster than they could be written and were not recorded one by one"
        ));
        gathered.add(summary);
    }
    let entries = gathered.entries;
    if !entries.is_empty() {
        let written = match entries.iter().map(write).collect::<Result<Vec<_>>>() {
            Ok(writes) => store.write(writes).await.map(drop),
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::error!(%error, entries = entries.len(), "writing audit entries failed");
        }
    }
    for done in flushes {
        let _ = done.send(());
    }
}

/// Removes the oldest entries beyond `retention`. Only the entries' names are read.
pub async fn trim(store: &Arc<dyn Store>, retention: usize) -> Result<usize> {
    let mut names = store.names_raw(KIND.into()).await?;
    if names.len() <= retention {
        return Ok(0);
    }
    names.sort_unstable();
    let excess = names.len() - retention;
    for chunk in names[..excess].chunks(BATCH) {
        let deletes = chunk
            .iter()
            .map(|name| Write::Delete {
                kind: KIND.into(),
                namespace: String::new(),
                name: name.clone(),
            })
            .collect();
        store.write(deletes).await?;
    }
    Ok(excess)
}

/// Which entries to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Most entries returned.
    pub limit: usize,
    /// Only entries whose actor name is this.
    pub actor: Option<String>,
    /// Only entries whose action starts with this.
    pub action: Option<String>,
}

/// Entries newest first, filtered by `query`. Without a filter only the newest `limit` entries
/// are read; a filter reads them all.
pub async fn read(store: &Arc<dyn Store>, query: &Query) -> Result<Vec<AuditEvent>> {
    if query.actor.is_none() && query.action.is_none() {
        let mut names = store.names_raw(KIND.into()).await?;
        names.sort_unstable_by(|a, b| b.cmp(a));
        let mut events = Vec::with_capacity(query.limit.min(names.len()));
        for name in names.iter().take(query.limit) {
            // An entry trimmed since the names were read is simply left out.
            if let Some(event) = store.get::<AuditEvent>("", name).await? {
                events.push(event);
            }
        }
        return Ok(events);
    }
    let mut events = store.list::<AuditEvent>(None).await?;
    events.sort_unstable_by_key(|e| std::cmp::Reverse(e.name_any()));
    Ok(events
        .into_iter()
        .filter(|e| query.actor.as_ref().is_none_or(|a| *a == e.spec.actor.name))
        .filter(|e| {
            query
                .action
                .as_ref()
                .is_none_or(|a| e.spec.action.starts_with(a.as_str()))
        })
        .take(query.limit)
        .collect())
}

/// The writes that record `event` and make `changes`, in one store write. The entry goes first:
/// on Kubernetes, where a batch is applied in order and the objects it created are deleted again
/// when a later write fails, a change is never made without its entry.
pub fn with_entry(event: &AuditEvent, changes: Vec<Write>) -> Result<Vec<Write>> {
    let mut writes = vec![write(event)?];
    writes.extend(changes);
    Ok(writes)
}

/// Records `event` and applies `change` in one store write; returns the changed object.
pub async fn write_with<K: Object>(
    store: &Arc<dyn Store>,
    change: Write,
    event: &AuditEvent,
) -> Result<K> {
    let stored = store.write(with_entry(event, vec![change])?).await?;
    let object = stored
        .into_iter()
        .nth(1)
        .ok_or_else(|| Error::Task("the store returned no document".into()))?;
    serde_json::from_value(object).map_err(|e| Error::json("decoding a stored object", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(address: &str, detail: &str) -> AuditEvent {
        let mut event = event(
            AuditActor {
                name: "unknown".into(),
                key_prefix: None,
                address: Some(address.into()),
            },
            "hook.redeploy",
            None,
        );
        event.spec.outcome = AuditOutcome::Refused;
        event.spec.status_code = Some(401);
        event.spec.detail = Some(detail.into());
        event
    }

    #[test]
    fn identical_calls_gathered_together_are_counted_in_one_entry() {
        let mut gathered = Gathered::default();
        for _ in 0..3 {
            gathered.add(refusal("10.0.0.1", "unknown key"));
        }
        gathered.add(refusal("10.0.0.2", "unknown key"));
        gathered.add(refusal("10.0.0.1", "revoked key"));
        let joined = event(cli_actor(), "hook.redeploy", Some("prod/web".into()));
        gathered.add(joined.clone());
        gathered.add(joined);
        let mut failed = event(cli_actor(), "hook.redeploy", Some("prod/web".into()));
        failed.spec.outcome = AuditOutcome::Failed;
        gathered.add(failed);
        let merged = gathered.entries;
        assert_eq!(merged.len(), 5);
        assert_eq!(merged[0].spec.count, Some(3));
        assert_eq!(merged[1].spec.count, None);
        assert_eq!(merged[3].spec.count, Some(2));
        assert_eq!(merged[4].spec.outcome, AuditOutcome::Failed);
        assert_eq!(merged[4].spec.count, None);
    }

    #[test]
    fn entry_names_sort_by_time_and_are_object_names() {
        let first = event(cli_actor(), "a", None).name_any();
        std::thread::sleep(Duration::from_millis(2));
        let second = event(cli_actor(), "a", None).name_any();
        assert!(first < second, "{first} {second}");
        assert!(crate::model::is_dns_subdomain(&first), "{first}");
    }
}
