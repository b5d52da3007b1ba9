//! Where desired state and status live. Hooks and the CLI only talk to a [`Store`];
//! the reconciler watches it.

mod cache;
mod kubernetes;
mod sqlite;
mod wal_index;

use std::fmt::Debug;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

pub use cache::{Lookup, ObjectCache};
pub use kubernetes::KubeStore;
pub use sqlite::SqliteStore;

use crate::{Error, Result};

/// What an update replaces besides metadata: the spec of rsgo's kinds, the data and type of a
/// Secret. Status is written on its own.
pub const CONTENT_FIELDS: [&str; 3] = ["spec", "data", "type"];

/// A resource type the store can hold.
pub trait Object:
    Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Object for K where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// One write in an atomic batch. Documents are whole objects (`apiVersion`, `kind`, `metadata`, ...).
#[derive(Debug, Clone)]
pub enum Write {
    /// Create a new object; fails when one of that kind, namespace and name exists.
    Create(Value),
    /// Replace spec, labels, annotations, finalizers and owner references of an existing object.
    /// When the document carries a `metadata.resourceVersion`, the write fails on a stale one.
    /// Status is kept. Removing the last finalizer of a deleted object removes the object.
    Update(Value),
    /// Replace only the status of an existing object.
    UpdateStatus(Value),
    /// Remove an object; one with finalizers is only marked (`deletionTimestamp`) for its controller.
    Delete {
        /// Kind of the object.
        kind: String,
        /// Namespace, empty for cluster-scoped kinds.
        namespace: String,
        /// Object name.
        name: String,
    },
}

/// Storage of rsgo's resources with optimistic concurrency and a change feed.
pub trait Store: Send + Sync + 'static {
    /// Reads one object.
    fn get_raw(
        &self,
        kind: String,
        namespace: String,
        name: String,
    ) -> BoxFuture<'_, Result<Option<Value>>>;
    /// Reads one object as the store holds it: the stored JSON text when the store keeps text
    /// (so it is parsed once, straight into its type), else the document.
    fn get_stored(
        &self,
        kind: String,
        namespace: String,
        name: String,
    ) -> BoxFuture<'_, Result<Option<Stored>>> {
        async move {
            Ok(self
                .get_raw(kind, namespace, name)
                .await?
                .map(Stored::Document))
        }
        .boxed()
    }
    /// Lists the objects of a kind, in one namespace or in all; with `label`, only those that
    /// carry that label with that value (an index lookup, not a scan).
    fn list_raw(
        &self,
        kind: String,
        namespace: Option<String>,
        label: Option<Label>,
    ) -> BoxFuture<'_, Result<Vec<Value>>>;
    /// The names of the objects of a kind in every namespace, without reading the objects
    /// themselves where the store can (for counting and trimming, such as the audit trail's
    /// retention).
    fn names_raw(&self, kind: String) -> BoxFuture<'_, Result<Vec<String>>> {
        async move {
            Ok(self
                .list_raw(kind, None, None)
                .await?
                .iter()
                .map(|doc| text(doc, "/metadata/name"))
                .collect())
        }
        .boxed()
    }
    /// The object of a kind with this name, in whichever namespace it is (names such as
    /// deployment ids are unique across namespaces). One lookup, never a listing.
    fn find_raw(&self, kind: String, name: String) -> BoxFuture<'_, Result<Option<Value>>>;
    /// Applies every write or none, and returns the stored documents (deletions, and updates
    /// that complete a deletion, return nothing).
    fn write(&self, writes: Vec<Write>) -> BoxFuture<'_, Result<Vec<Value>>>;
    /// Every object of a kind, then each change, as the raw documents of kube-runtime watcher
    /// events. The stream ends only when dropped; failures are retried inside it.
    fn watch_raw(self: Arc<Self>, kind: String) -> BoxStream<'static, watcher::Event<Value>>;
    /// Wakes when this process wrote something; other processes' writes are found by polling.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Where a stack in `namespace` finds the Secrets its variables name: that namespace on
    /// Kubernetes; the store keeps Secrets without a namespace in standalone mode.
    fn secrets_namespace(&self, namespace: &str) -> String {
        namespace.to_owned()
    }
    /// The decoded objects this store keeps at its newest known revision, if it keeps any
    /// (see [`ObjectCache`]).
    fn objects(&self) -> Option<&ObjectCache> {
        None
    }
    /// Whether the store can take writes now; readiness fails while it cannot.
    fn writable(&self) -> BoxFuture<'_, Result<()>>;
    /// At most `limit` changes of a kind after revision `since`, read now, oldest first (a full
    /// page means there may be more: read again from the revision it brings the reader to).
    /// `None` when the store keeps no change log to read on demand and changes arrive by watch
    /// only.
    fn changes_raw(
        &self,
        kind: String,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Changes>>>;
}

/// One stored object, as [`Store::get_stored`] returns it.
#[derive(Debug, Clone)]
pub enum Stored {
    /// The object's JSON text.
    Text(String),
    /// The object as a document.
    Document(Value),
}

/// A label and the value an object must carry for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The label's key, such as `rsgo.io/stack`.
    pub key: String,
    /// The value.
    pub value: String,
}

/// One entry of a store's change log.
#[derive(Debug, Clone)]
pub struct Change {
    /// The object as written; for a deletion, as it was last.
    pub object: Value,
    /// Whether the object was deleted.
    pub deleted: bool,
}

/// Changes of one kind, and the store revision they bring a reader up to.
#[derive(Debug, Clone)]
pub struct Changes {
    /// Oldest first.
    pub changes: Vec<Change>,
    /// The newest revision of the store when they were read.
    pub revision: u64,
}

/// The string at `pointer` in a document, or an empty string.
fn text(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Kind, namespace (empty for cluster-scoped kinds) and name of a document.
fn identity(doc: &Value) -> Result<(String, String, String)> {
    let kind = text(doc, "/kind");
    let name = text(doc, "/metadata/name");
    if kind.is_empty() || name.is_empty() {
        return Err(Error::Invalid(
            "an object needs a kind and metadata.name".into(),
        ));
    }
    Ok((kind, text(doc, "/metadata/namespace"), name))
}

/// Refuses writes whose documents break rsgo's rules (names, specs), before any of them is
/// applied. Both stores call it, so the rules hold in every mode and for every writer.
fn check_writes(writes: &[Write]) -> Result<()> {
    for write in writes {
        match write {
            Write::Create(doc) => crate::model::validate_document(doc, true)?,
            Write::Update(doc) => crate::model::validate_document(doc, false)?,
            Write::UpdateStatus(_) | Write::Delete { .. } => {}
        }
    }
    Ok(())
}

fn kind_of<K: Object>() -> String {
    K::kind(&()).into_owned()
}

fn decode<K: Object>(value: Value) -> Result<K> {
    serde_json::from_value(value)
        .map_err(|e| Error::json(format!("decoding a stored {}", kind_of::<K>()), e))
}

/// Parses an object's stored JSON text straight into its type.
fn decode_text<K: Object>(text: &str) -> Result<K> {
    serde_json::from_str(text)
        .map_err(|e| Error::json(format!("decoding a stored {}", kind_of::<K>()), e))
}

/// Serializes an object into a store document with `apiVersion` and `kind` set.
pub fn encode<K: Object>(object: &K) -> Result<Value> {
    let mut value = serde_json::to_value(object)
        .map_err(|e| Error::json(format!("encoding a {}", kind_of::<K>()), e))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into_owned().into());
        map.insert("kind".into(), kind_of::<K>().into());
    }
    Ok(value)
}

impl dyn Store {
    /// Reads one object of type `K`: from the store's [`ObjectCache`] when it keeps the object
    /// at the newest revision known, else from the store (and then kept).
    pub async fn get<K: Object>(&self, namespace: &str, name: &str) -> Result<Option<K>> {
        let cache = self.objects();
        let read_at = match cache.map(|c| c.lookup::<K>(namespace, name)) {
            Some(Lookup::Hit(object)) => return Ok(object),
            Some(Lookup::Miss(revision)) => Some(revision),
            None => None,
        };
        let object = match self
            .get_stored(kind_of::<K>(), namespace.into(), name.into())
            .await?
        {
            None => None,
            Some(Stored::Document(value)) => Some(decode(value)?),
            Some(Stored::Text(text)) => Some(decode_text(&text)?),
        };
        if let (Some(cache), Some(revision)) = (cache, read_at) {
            cache.keep(revision, namespace, name, object.as_ref());
        }
        Ok(object)
    }

    /// Reads one object of type `K`, failing with [`Error::NotFound`] when absent.
    pub async fn require<K: Object>(&self, namespace: &str, name: &str) -> Result<K> {
        self.get(namespace, name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: kind_of::<K>(),
                name: name.into(),
            })
    }

    /// Finds the object of type `K` named `name` in any namespace.
    pub async fn find<K: Object>(&self, name: &str) -> Result<Option<K>> {
        self.find_raw(kind_of::<K>(), name.into())
            .await?
            .map(decode)
            .transpose()
    }

    /// Lists objects of type `K`, in one namespace or in all.
    pub async fn list<K: Object>(&self, namespace: Option<&str>) -> Result<Vec<K>> {
        self.list_raw(kind_of::<K>(), namespace.map(Into::into), None)
            .await?
            .into_iter()
            .map(decode)
            .collect()
    }

    /// Lists the objects of type `K` in `namespace` that carry label `key` = `value`.
    pub async fn list_labelled<K: Object>(
        &self,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<K>> {
        let label = Label {
            key: key.into(),
            value: value.into(),
        };
        self.list_raw(kind_of::<K>(), Some(namespace.into()), Some(label))
            .await?
            .into_iter()
            .map(decode)
            .collect()
    }

    /// Creates an object and returns it as stored.
    pub async fn create<K: Object>(&self, object: &K) -> Result<K> {
        self.write_one(Write::Create(encode(object)?)).await
    }

    /// Updates spec and metadata; fails on a stale `resourceVersion` when the object has one.
    pub async fn update<K: Object>(&self, object: &K) -> Result<K> {
        self.write_one(Write::Update(encode(object)?)).await
    }

    /// Replaces the status of an object.
    pub async fn update_status<K: Object>(&self, object: &K) -> Result<K> {
        self.write_one(Write::UpdateStatus(encode(object)?)).await
    }

    /// Removes an object.
    pub async fn delete<K: Object>(&self, namespace: &str, name: &str) -> Result<()> {
        self.write(vec![Write::Delete {
            kind: kind_of::<K>(),
            namespace: namespace.into(),
            name: name.into(),
        }])
        .await
        .map(drop)
    }

    async fn write_one<K: Object>(&self, write: Write) -> Result<K> {
        let stored = self.write(vec![write]).await?;
        decode(
            stored
                .into_iter()
                .next()
                .ok_or_else(|| Error::Task("store returned no document".into()))?,
        )
    }

    /// Watches objects of type `K`: first every object, then each change, as the
    /// `watcher` events that kube-runtime's reflectors and controllers consume.
    pub fn watch<K: Object>(
        self: Arc<Self>,
    ) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send {
        let decode_logged = |value: Value| {
            decode::<K>(value)
                .inspect_err(
                    |error| tracing::warn!(%error, "skipping an undecodable stored object"),
                )
                .ok()
        };
        self.watch_raw(kind_of::<K>()).filter_map(move |event| {
            let event = match event {
                watcher::Event::Apply(v) => decode_logged(v).map(watcher::Event::Apply),
                watcher::Event::Delete(v) => decode_logged(v).map(watcher::Event::Delete),
                watcher::Event::InitApply(v) => decode_logged(v).map(watcher::Event::InitApply),
                watcher::Event::Init => Some(watcher::Event::Init),
                watcher::Event::InitDone => Some(watcher::Event::InitDone),
            };
            std::future::ready(event.map(Ok))
        })
    }
}
