//! The audit trail: who changed what, and every refused call, as `AuditEvent` objects in the
//! store.
//!
//! A change and its audit entry are written in one store write, so an acknowledged change is
//! never missing from the trail. Refusals and other entries that change nothing go through a
//! bounded queue that one task writes in batches: a flood of bad keys costs one write per
//! batch, identical refusals from one address in a batch become one entry with a count, and
//! when the queue is full further entries are counted and reported in one entry instead of
//! growing memory. Past the retention count, the oldest entries are removed.

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
/// Most entries written in one store write.
const BATCH: usize = 512;
/// When the first check for entries beyond the retention count runs after start.
const FIRST_TRIM: Duration = Duration::from_secs(60);
/// How often the oldest entries beyond the retention count are removed (the check lists every
/// entry, so it is not done often).
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

/// What makes two refusals the same: actor (address included), action, target, status, detail.
type Sameness = (
    AuditActor,
    String,
    Option<String>,
    Option<u16>,
    Option<String>,
);

/// Identical refusals from one address in one batch are one entry with a count.
fn merge_refusals(events: Vec<AuditEvent>) -> Vec<AuditEvent> {
    let mut merged: Vec<AuditEvent> = Vec::with_capacity(events.len());
    let mut index: HashMap<Sameness, usize> = HashMap::new();
    for event in events {
        if event.spec.outcome != AuditOutcome::Refused {
            merged.push(event);
            continue;
        }
        let spec = &event.spec;
        let same = (
            spec.actor.clone(),
            spec.action.clone(),
            spec.target.clone(),
            spec.status_code,
            spec.detail.clone(),
        );
        match index.get(&same) {
            Some(&at) => {
                let first = &mut merged[at].spec;
                first.count = Some(first.count.unwrap_or(1) + event.spec.count.unwrap_or(1));
            }
            None => {
                index.insert(same, merged.len());
                merged.push(event);
            }
        }
    }
    merged
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

/// Writes `first` and what else is queued (up to a batch), then answers the flushes among them.
async fn write_batch(
    store: &Arc<dyn Store>,
    receiver: &mut mpsc::Receiver<Message>,
    dropped: &AtomicU64,
    first: Message,
) {
    let mut events = Vec::new();
    let mut flushes = Vec::new();
    let mut next = Some(first);
    while let Some(message) = next {
        match message {
            Message::Record(event) => events.push(*event),
            Message::Flush(done) => flushes.push(done),
        }
        next = if events.len() < BATCH {
            receiver.try_recv().ok()
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
        events.push(summary);
    }
    let count = events.len();
    if count > 0 {
        let written = match merge_refusals(events)
            .iter()
            .map(write)
            .collect::<Result<Vec<_>>>()
        {
            Ok(writes) => store.write(writes).await.map(drop),
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::error!(%error, entries = count, "writing audit entries failed");
        }
    }
    for done in flushes {
        let _ = done.send(());
    }
}

/// Removes the oldest entries beyond `retention`.
pub async fn trim(store: &Arc<dyn Store>, retention: usize) -> Result<usize> {
    let mut names: Vec<String> = store
        .list::<AuditEvent>(None)
        .await?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    if names.len() <= retention {
        return Ok(0);
    }
    names.sort_unstable();
    let excess = names.len() - retention;
    for chunk in names[..excess].chunks(BATCH) {
        let deletes = chunk
            .iter()
            .map(|name| Write::Delete {
                kind: "AuditEvent".into(),
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

/// Entries newest first, filtered by `query`.
pub async fn read(store: &Arc<dyn Store>, query: &Query) -> Result<Vec<AuditEvent>> {
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
    fn identical_refusals_in_a_batch_are_counted_in_one_entry() {
        let mut batch = vec![refusal("10.0.0.1", "unknown key"); 3];
        batch.push(refusal("10.0.0.2", "unknown key"));
        batch.push(refusal("10.0.0.1", "revoked key"));
        batch.push(event(cli_actor(), "apikey.create", Some("ci".into())));
        let merged = merge_refusals(batch);
        assert_eq!(merged.len(), 4);
        assert_eq!(merged[0].spec.count, Some(3));
        assert_eq!(merged[1].spec.count, None);
        assert_eq!(merged[3].spec.action, "apikey.create");
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
