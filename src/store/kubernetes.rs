//! [`Store`] on the Kubernetes API: rsgo's objects are custom resources. Environment = namespace
//! for Stacks and DeploymentRecords; ApiKeys, Environments and CatalogSources are cluster-scoped;
//! Secrets (credentials of git sources) are the cluster's own, in rsgo's namespace.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::watch;

use super::{Changes, Label, Store, Write, check_writes, identity, text};
use crate::model::{ApiKey, AuditEvent, CatalogSource, DeploymentRecord, Environment, Stack};
use crate::{Error, Result};

/// [`Store`] over a Kubernetes API server. Every write names the store's field manager, so
/// `managedFields` tell which of rsgo's writers (controller, hooks, CLI) set what.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    manager: &'static str,
    written: Arc<watch::Sender<u64>>,
}

/// The API resource of a kind, and whether it is namespaced.
fn resource(kind: &str) -> Result<(ApiResource, bool)> {
    Ok(match kind {
        "Stack" => (ApiResource::erase::<Stack>(&()), true),
        "DeploymentRecord" => (ApiResource::erase::<DeploymentRecord>(&()), true),
        "Environment" => (ApiResource::erase::<Environment>(&()), false),
        "CatalogSource" => (ApiResource::erase::<CatalogSource>(&()), false),
        "ApiKey" => (ApiResource::erase::<ApiKey>(&()), false),
        "AuditEvent" => (ApiResource::erase::<AuditEvent>(&()), false),
        // Credentials of git catalog sources, read from rsgo's namespace.
        "Secret" => (ApiResource::erase::<Secret>(&()), true),
        other => {
            return Err(Error::Invalid(format!(
                "kind '{other}' is not an rsgo kind"
            )));
        }
    })
}

/// Maps API errors onto the store's: 404 → NotFound, 409 → AlreadyExists or Conflict.
fn api_error(error: kube::Error, kind: &str, name: &str, creating: bool) -> Error {
    match &error {
        kube::Error::Api(status) if status.is_not_found() => Error::NotFound {
            kind: kind.into(),
            name: name.into(),
        },
        kube::Error::Api(status)
            if status.is_already_exists() || (creating && status.is_conflict()) =>
        {
            Error::AlreadyExists {
                kind: kind.into(),
                name: name.into(),
            }
        }
        kube::Error::Api(status) if status.is_conflict() => Error::Conflict {
            kind: kind.into(),
            name: name.into(),
        },
        _ => Error::kube(format!("{kind} '{name}'"), error),
    }
}

fn to_value(object: DynamicObject) -> Result<Value> {
    serde_json::to_value(object).map_err(|e| Error::json("encoding an API object", e))
}

fn to_object(value: &Value) -> Result<DynamicObject> {
    serde_json::from_value(value.clone())
        .map_err(|e| Error::json("decoding an object for the API", e))
}

impl KubeStore {
    /// A store over `client` whose writes are made as field manager `manager`.
    pub fn new(client: Client, manager: &'static str) -> Self {
        let (written, _) = watch::channel(0);
        Self {
            client,
            manager,
            written: Arc::new(written),
        }
    }

    fn api(&self, kind: &str, namespace: Option<&str>) -> Result<Api<DynamicObject>> {
        let (resource, namespaced) = resource(kind)?;
        Ok(match namespace.filter(|ns| namespaced && !ns.is_empty()) {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        })
    }

    async fn apply_one(&self, write: &Write) -> Result<Option<Value>> {
        let post = PostParams {
            field_manager: Some(self.manager.into()),
            ..Default::default()
        };
        match write {
            Write::Create(doc) => {
                let (kind, ns, name) = identity(doc)?;
                let api = self.api(&kind, Some(&ns))?;
                let created = api
                    .create(&post, &to_object(doc)?)
                    .await
                    .map_err(|e| api_error(e, &kind, &name, true))?;
                Ok(Some(to_value(created)?))
            }
            Write::Update(doc) => {
                let (kind, ns, name) = identity(doc)?;
                // A custom resource is only ever replaced conditionally: the API server refuses
                // an update without the resourceVersion that was read.
                if text(doc, "/metadata/resourceVersion").is_empty() {
                    return Err(Error::Task(format!(
                        "updating {kind} '{name}' without the resourceVersion it was read at"
                    )));
                }
                let api = self.api(&kind, Some(&ns))?;
                let replaced = api
                    .replace(&name, &post, &to_object(doc)?)
                    .await
                    .map_err(|e| api_error(e, &kind, &name, false))?;
                Ok(Some(to_value(replaced)?))
            }
            Write::UpdateStatus(doc) => {
                let (kind, ns, name) = identity(doc)?;
                let api = self.api(&kind, Some(&ns))?;
                // Status is applied server-side on the status subresource, as controllers write
                // it: the fields are this writer's, so it takes them over from any other.
                let mut metadata = serde_json::json!({ "name": name });
                if !ns.is_empty() {
                    metadata["namespace"] = ns.clone().into();
                }
                let applied = serde_json::json!({
                    "apiVersion": text(doc, "/apiVersion"),
                    "kind": kind,
                    "metadata": metadata,
                    "status": doc.get("status").cloned().unwrap_or(Value::Null),
                });
                let params = PatchParams::apply(self.manager).force();
                let patched = api
                    .patch_status(&name, &params, &Patch::Apply(applied))
                    .await
                    .map_err(|e| api_error(e, &kind, &name, false))?;
                Ok(Some(to_value(patched)?))
            }
            Write::Delete {
                kind,
                namespace,
                name,
            } => {
                let api = self.api(kind, Some(namespace))?;
                api.delete(name, &DeleteParams::default())
                    .await
                    .map_err(|e| api_error(e, kind, name, false))?;
                Ok(None)
            }
        }
    }
}

impl Store for KubeStore {
    fn get_raw(
        &self,
        kind: String,
        namespace: String,
        name: String,
    ) -> BoxFuture<'_, Result<Option<Value>>> {
        async move {
            let api = self.api(&kind, Some(&namespace))?;
            let found = api
                .get_opt(&name)
                .await
                .map_err(|e| api_error(e, &kind, &name, false))?;
            found.map(to_value).transpose()
        }
        .boxed()
    }

    fn list_raw(
        &self,
        kind: String,
        namespace: Option<String>,
        label: Option<Label>,
    ) -> BoxFuture<'_, Result<Vec<Value>>> {
        async move {
            let api = self.api(&kind, namespace.as_deref())?;
            let params = match &label {
                Some(label) => {
                    ListParams::default().labels(&format!("{}={}", label.key, label.value))
                }
                None => ListParams::default(),
            };
            let list = api
                .list(&params)
                .await
                .map_err(|e| api_error(e, &kind, "*", false))?;
            list.items.into_iter().map(to_value).collect()
        }
        .boxed()
    }

    /// A listing across namespaces that the API server filters by name: one request, whose
    /// answer holds at most the object sought.
    fn find_raw(&self, kind: String, name: String) -> BoxFuture<'_, Result<Option<Value>>> {
        async move {
            let api = self.api(&kind, None)?;
            let params = ListParams::default().fields(&format!("metadata.name={name}"));
            let list = api
                .list(&params)
                .await
                .map_err(|e| api_error(e, &kind, &name, false))?;
            list.items.into_iter().next().map(to_value).transpose()
        }
        .boxed()
    }

    /// Kubernetes has no transactions: writes go in order, and when one fails the objects this
    /// batch created are deleted again, so a refused request leaves nothing behind.
    fn write(&self, writes: Vec<Write>) -> BoxFuture<'_, Result<Vec<Value>>> {
        async move {
            check_writes(&writes)?;
            let mut stored = Vec::new();
            let mut created = Vec::new();
            for write in &writes {
                match self.apply_one(write).await {
                    Ok(result) => {
                        if let (Write::Create(doc), Some(_)) = (write, &result) {
                            created.push(doc.clone());
                        }
                        stored.extend(result);
                    }
                    Err(error) => {
                        for doc in created {
                            let undo = Write::Delete {
                                kind: text(&doc, "/kind"),
                                namespace: text(&doc, "/metadata/namespace"),
                                name: text(&doc, "/metadata/name"),
                            };
                            if let Err(undo_error) = self.apply_one(&undo).await {
                                tracing::error!(%undo_error, "could not undo part of a failed write");
                            }
                        }
                        return Err(error);
                    }
                }
            }
            self.written.send_modify(|n| *n += 1);
            Ok(stored)
        }
        .boxed()
    }

    fn watch_raw(self: Arc<Self>, kind: String) -> BoxStream<'static, watcher::Event<Value>> {
        let api = match self.api(&kind, None) {
            Ok(api) => api,
            Err(error) => {
                tracing::error!(%error, "cannot watch");
                return futures::stream::empty().boxed();
            }
        };
        watcher(api, watcher::Config::default())
            .default_backoff()
            .filter_map(move |event| {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, kind = %kind, "watch failed; retrying with backoff");
                        return std::future::ready(None);
                    }
                };
                let encode = |o: DynamicObject| {
                    to_value(o)
                        .inspect_err(|error| tracing::warn!(%error, "skipping an object"))
                        .ok()
                };
                std::future::ready(match event {
                    watcher::Event::Apply(o) => encode(o).map(watcher::Event::Apply),
                    watcher::Event::Delete(o) => encode(o).map(watcher::Event::Delete),
                    watcher::Event::InitApply(o) => encode(o).map(watcher::Event::InitApply),
                    watcher::Event::Init => Some(watcher::Event::Init),
                    watcher::Event::InitDone => Some(watcher::Event::InitDone),
                })
            })
            .boxed()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// The API server answers for itself; there is nothing local to fill up.
    /// Changes arrive by watch only.
    fn changes_raw(
        &self,
        _kind: String,
        _since: u64,
        _limit: usize,
    ) -> BoxFuture<'_, Result<Option<Changes>>> {
        std::future::ready(Ok(None)).boxed()
    }

    fn writable(&self) -> BoxFuture<'_, Result<()>> {
        std::future::ready(Ok(())).boxed()
    }
}
