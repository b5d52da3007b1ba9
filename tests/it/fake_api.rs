//! An in-memory Kubernetes API server behind kube's tower-test mock. It keeps the rules a real
//! API server enforces on the requests rsgo makes, so a request a real server refuses is refused
//! here with the same status and reason. Each rule says where Kubernetes implements it (paths in
//! the kubernetes/kubernetes repository); `rules` below tests each one on the fake itself.
//!
//! It serves any resource path (rsgo's kinds, Deployments, Services, claims, Jobs, Events):
//! create, get, list (label and field selectors), watch (from a resourceVersion, with 410 Gone
//! once history is compacted), update, status update, server-side apply (field ownership,
//! conflicts, force), merge patch and delete (finalizers). It runs no controllers: a test plays
//! the Deployment or Job controller by writing status with [`FakeApi::set_status`], and there
//! is no garbage collector.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Where an object lives: API root (`api/v1`, `apis/apps/v1`), plural, namespace, name.
type Key = (String, String, String, String);
/// A path to a field: `["spec", "version"]`.
type FieldPath = Vec<String>;

/// Who owns which fields of an object, as `metadata.managedFields` shows it.
#[derive(Clone, Debug)]
struct Owner {
    manager: String,
    operation: &'static str,
    subresource: &'static str,
    fields: BTreeSet<FieldPath>,
}

struct WatchEvent {
    revision: u64,
    kind: &'static str,
    key: Key,
    object: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    owners: BTreeMap<Key, Vec<Owner>>,
    revision: u64,
    history: VecDeque<WatchEvent>,
    /// Watches from before this revision get 410 Gone.
    compacted: u64,
    requests: Vec<String>,
}

/// Who makes a write, and to which part of the object.
struct Writer<'a> {
    manager: &'a str,
    subresource: &'static str,
}

/// A parsed request path.
struct Target {
    root: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Target {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (root, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (format!("api/{version}"), rest.to_vec()),
        ["apis", group, version, rest @ ..] => (format!("apis/{group}/{version}"), rest.to_vec()),
        _ => panic!("the fake API server does not serve {path}"),
    };
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest.to_vec()),
        _ => (None, rest),
    };
    Target {
        root,
        plural: rest[0].to_owned(),
        namespace,
        name: rest.get(1).map(|n| n.to_string()),
        status: rest.get(2) == Some(&"status"),
    }
}

fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (code, body)
}

/// 404 for an object that does not exist.
fn not_found(t: &Target, name: &str) -> (u16, Value) {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", resource_name(t)),
    )
}

/// Kinds whose status is a subresource: writes to the object leave it alone, and writes to
/// `/status` change nothing else.
fn has_status(plural: &str) -> bool {
    !matches!(plural, "leases" | "events" | "secrets" | "configmaps")
}

/// Custom resources never allow an unconditional update.
fn is_custom(root: &str) -> bool {
    root.starts_with("apis/rsgo.io/")
}

fn resource_name(t: &Target) -> String {
    let group = t
        .root
        .split('/')
        .nth(1)
        .filter(|_| t.root.starts_with("apis/"));
    match group {
        Some(group) => format!("{}.{group}", t.plural),
        None => t.plural.clone(),
    }
}

/// Every leaf of a document with its path; lists and empty maps are leaves, as in a structural
/// schema without list keys.
fn leaves(value: &Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(k.clone());
                leaves(v, path, out);
                path.pop();
            }
        }
        other => {
            out.insert(path.clone(), other.clone());
        }
    }
}

/// The fields an applied configuration or update sets, without identity and server-set fields.
fn owned_leaves(doc: &Value, status_only: bool) -> BTreeMap<FieldPath, Value> {
    let mut all = BTreeMap::new();
    leaves(doc, &mut Vec::new(), &mut all);
    all.retain(|path, _| {
        let top = path[0].as_str();
        let server_meta = top == "metadata"
            && matches!(
                path.get(1).map(String::as_str),
                Some(
                    "name"
                        | "namespace"
                        | "uid"
                        | "resourceVersion"
                        | "generation"
                        | "creationTimestamp"
                        | "deletionTimestamp"
                        | "managedFields"
                )
            );
        let in_scope = if status_only {
            top == "status"
        } else {
            top != "status"
        };
        in_scope && !server_meta && top != "apiVersion" && top != "kind"
    });
    all
}

fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| v.get(k))
}

fn set_path(value: &mut Value, path: &[String], leaf: Value) {
    let mut node = value;
    for key in &path[..path.len() - 1] {
        if !node.get(key).is_some_and(Value::is_object) {
            node[key.as_str()] = json!({});
        }
        node = node.get_mut(key).expect("just made");
    }
    node[path[path.len() - 1].as_str()] = leaf;
}

fn remove_path(value: &mut Value, path: &[String]) {
    let mut node = value;
    for key in &path[..path.len() - 1] {
        match node.get_mut(key) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(&path[path.len() - 1]);
    }
}

/// The document without metadata and status: what `metadata.generation` counts changes of.
fn spec_part(value: &Value) -> Value {
    let mut copy = value.clone();
    if let Some(map) = copy.as_object_mut() {
        for key in ["metadata", "status", "apiVersion", "kind"] {
            map.remove(key);
        }
    }
    copy
}

fn fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut tree = json!({});
    for path in fields {
        let keys: Vec<String> = path.iter().map(|k| format!("f:{k}")).collect();
        set_path(&mut tree, &keys, json!({}));
    }
    tree
}

fn render_path(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

fn selector_matches(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, want) = term.split_once('=').unwrap_or((term, ""));
        let want = want.trim_start_matches('=');
        object["metadata"]["labels"][key].as_str() == Some(want)
    })
}

fn field_selector_matches(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, want) = term.split_once('=').unwrap_or((term, ""));
        let want = want.trim_start_matches('=');
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        get_path(object, &path).and_then(Value::as_str) == Some(want)
    })
}

impl State {
    fn next(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(&mut self, kind: &'static str, key: &Key, object: &Value) {
        let revision = self.revision;
        self.history.push_back(WatchEvent {
            revision,
            kind,
            key: key.clone(),
            object: object.clone(),
        });
    }

    /// The object as a client sees it, with its field owners.
    fn shown(&self, key: &Key) -> Option<Value> {
        let mut object = self.objects.get(key)?.clone();
        let owners = self.owners.get(key).cloned().unwrap_or_default();
        let entries: Vec<Value> = owners
            .iter()
            .filter(|o| !o.fields.is_empty())
            .map(|o| {
                let mut entry = json!({"manager": o.manager, "operation": o.operation,
                    "apiVersion": object["apiVersion"], "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&o.fields)});
                if !o.subresource.is_empty() {
                    entry["subresource"] = o.subresource.into();
                }
                entry
            })
            .collect();
        if !entries.is_empty() {
            object["metadata"]["managedFields"] = entries.into();
        }
        Some(object)
    }

    /// Gives `manager` the fields an update (a write that is not an apply) changed, taking them
    /// from whoever owned them.
    fn take_over(
        &mut self,
        key: &Key,
        manager: &str,
        subresource: &'static str,
        changed: BTreeSet<FieldPath>,
    ) {
        if changed.is_empty() {
            return;
        }
        let owners = self.owners.entry(key.clone()).or_default();
        for owner in owners.iter_mut() {
            owner.fields.retain(|f| !changed.contains(f));
        }
        match owners.iter_mut().find(|o| {
            o.manager == manager && o.operation == "Update" && o.subresource == subresource
        }) {
            Some(owner) => owner.fields.extend(changed),
            None => owners.push(Owner {
                manager: manager.to_owned(),
                operation: "Update",
                subresource,
                fields: changed,
            }),
        }
    }

    fn handle(
        &mut self,
        method: &str,
        path: &str,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let query_text: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.requests
            .push(format!("{method} {path}?{}", query_text.join("&")));
        let t = parse_path(path);
        let ns = t.namespace.clone().unwrap_or_default();
        let key = |name: &str| {
            (
                t.root.clone(),
                t.plural.clone(),
                ns.clone(),
                name.to_owned(),
            )
        };
        let manager = query.get("fieldManager").cloned();
        match (method, &t.name) {
            ("GET", None) => {
                let labels = query.get("labelSelector").cloned().unwrap_or_default();
                let fields = query.get("fieldSelector").cloned().unwrap_or_default();
                let keys: Vec<Key> = self
                    .objects
                    .iter()
                    .filter(|((root, plural, namespace, _), object)| {
                        *root == t.root
                            && *plural == t.plural
                            && t.namespace.as_ref().is_none_or(|n| n == namespace)
                            && selector_matches(object, &labels)
                            && field_selector_matches(object, &fields)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let items: Vec<Value> = keys.iter().filter_map(|k| self.shown(k)).collect();
                (
                    200,
                    json!({"apiVersion": t.root.trim_start_matches("apis/").trim_start_matches("api/"),
                             "kind": "List", "metadata": {"resourceVersion": self.revision.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name)) => match self.shown(&key(name)) {
                Some(object) => (200, object),
                None => not_found(&t, name),
            },
            ("POST", None) => self.create(&t, manager, "Update", body.expect("a body")),
            ("PUT", Some(name)) => {
                self.update(&t, &key(name), name, manager, body.expect("a body"))
            }
            ("PATCH", Some(name)) if content_type.starts_with("application/apply-patch") => {
                let force = query.get("force").is_some_and(|f| f == "true");
                self.apply(&t, &key(name), name, manager, force, body.expect("a body"))
            }
            ("PATCH", Some(name)) => {
                self.merge_patch(&t, &key(name), name, manager, body.expect("a body"))
            }
            ("DELETE", Some(name)) => self.delete(&t, &key(name), name),
            (method, name) => {
                panic!("the fake API server does not answer {method} {path} ({name:?})")
            }
        }
    }

    /// Creates an object; its fields are `manager`'s, as an update's or an apply's (`operation`).
    fn create(
        &mut self,
        t: &Target,
        manager: Option<String>,
        operation: &'static str,
        mut object: Value,
    ) -> (u16, Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (
            t.root.clone(),
            t.plural.clone(),
            t.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        if self.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", resource_name(t)),
            );
        }
        // staging/src/k8s.io/apiextensions-apiserver/pkg/registry/customresource/strategy.go,
        // customResourceStrategy.PrepareForCreate: with a status subresource, status is dropped.
        if has_status(&t.plural)
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        let revision = self.next();
        let meta = &mut object["metadata"];
        if let Some(ns) = &t.namespace {
            meta["namespace"] = json!(ns);
        }
        meta["resourceVersion"] = json!(revision.to_string());
        meta["uid"] = json!(format!("uid-{revision}"));
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!("2026-11-28T10:00:00Z");
        if let Some(map) = meta.as_object_mut() {
            map.remove("managedFields");
        }
        let fields = owned_leaves(&object, false).into_keys().collect();
        self.objects.insert(key.clone(), object.clone());
        self.owners.insert(
            key.clone(),
            vec![Owner {
                manager: manager.unwrap_or_else(|| "unknown".into()),
                operation,
                subresource: "",
                fields,
            }],
        );
        self.record("ADDED", &key, &object);
        (201, self.shown(&key).expect("just stored"))
    }

    /// The preconditions every write of an existing object meets.
    fn check_version(
        &self,
        t: &Target,
        name: &str,
        stored: &Value,
        sent: &Value,
    ) -> Result<(), (u16, Value)> {
        let expected = sent["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        // staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go, (*Store).Update:
        // without a resourceVersion, a strategy that does not AllowUnconditionalUpdate refuses
        // the write (customresource/strategy.go: customResourceStrategy.AllowUnconditionalUpdate
        // returns false, for the status subresource too).
        if expected.is_empty() && is_custom(&t.root) {
            return Err(status(
                422,
                "Invalid",
                format!(
                    "{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                    resource_name(t)
                ),
            ));
        }
        // Same function: a resourceVersion other than the stored one is an optimistic-lock
        // conflict (storage.GuaranteedUpdate), answered 409.
        if !expected.is_empty() && expected != stored["metadata"]["resourceVersion"] {
            return Err(status(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    resource_name(t)
                ),
            ));
        }
        Ok(())
    }

    /// The metadata rules of an update, then storage: no new finalizers once deleting
    /// (staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go, ValidateNoNewFinalizers),
    /// generation counts spec changes only (customresource/strategy.go, PrepareForUpdate), and an
    /// object being deleted goes when its last finalizer does (registry/store.go, (*Store).Update
    /// via ShouldDeleteDuringUpdate).
    fn store_update(
        &mut self,
        t: &Target,
        key: &Key,
        name: &str,
        stored: &Value,
        mut next: Value,
        by: &Writer,
    ) -> (u16, Value) {
        let finalizers = |v: &Value| -> BTreeSet<String> {
            v["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        };
        if !stored["metadata"]["deletionTimestamp"].is_null() {
            let added: Vec<String> = finalizers(&next)
                .difference(&finalizers(stored))
                .cloned()
                .collect();
            if !added.is_empty() {
                return status(
                    422,
                    "Invalid",
                    format!(
                        "{} \"{name}\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}",
                        resource_name(t)
                    ),
                );
            }
        }
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "namespace",
            "name",
        ] {
            next["metadata"][field] = stored["metadata"][field].clone();
        }
        if let Some(map) = next["metadata"].as_object_mut() {
            map.retain(|_, v| !v.is_null());
            map.remove("managedFields");
        }
        if spec_part(&next) != spec_part(stored) {
            next["metadata"]["generation"] =
                json!(stored["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
        }
        let before = owned_leaves(stored, by.subresource == "status");
        let changed: BTreeSet<FieldPath> = owned_leaves(&next, by.subresource == "status")
            .into_iter()
            .filter(|(path, value)| before.get(path) != Some(value))
            .map(|(path, _)| path)
            .collect();
        let revision = self.next();
        next["metadata"]["resourceVersion"] = json!(revision.to_string());
        if !next["metadata"]["deletionTimestamp"].is_null() && finalizers(&next).is_empty() {
            self.objects.remove(key);
            self.owners.remove(key);
            self.record("DELETED", key, &next);
            return (200, next);
        }
        self.objects.insert(key.clone(), next.clone());
        self.take_over(key, by.manager, by.subresource, changed);
        self.record("MODIFIED", key, &next);
        (200, self.shown(key).expect("just stored"))
    }

    fn update(
        &mut self,
        t: &Target,
        key: &Key,
        name: &str,
        manager: Option<String>,
        sent: Value,
    ) -> (u16, Value) {
        let Some(stored) = self.objects.get(key).cloned() else {
            return not_found(t, name);
        };
        if let Err(refused) = self.check_version(t, name, &stored, &sent) {
            return refused;
        }
        // customresource/strategy.go, PrepareForUpdate: a write to the object keeps the stored
        // status; customresource/status_strategy.go, statusStrategy.PrepareForUpdate: a write to
        // /status keeps everything but status.
        let next = if t.status {
            let mut next = stored.clone();
            next["status"] = sent["status"].clone();
            next["metadata"]["resourceVersion"] = sent["metadata"]["resourceVersion"].clone();
            next
        } else {
            let mut next = sent;
            if has_status(&t.plural) {
                next["status"] = stored["status"].clone();
            }
            next
        };
        let by = Writer {
            manager: manager.as_deref().unwrap_or("unknown"),
            subresource: if t.status { "status" } else { "" },
        };
        self.store_update(t, key, name, &stored, next, &by)
    }

    /// Server-side apply: the fields in `applied` become `manager`'s; fields it applied before and
    /// left out now are removed unless someone else owns them; a field another manager owns with
    /// a different value is a conflict unless forced.
    fn apply(
        &mut self,
        t: &Target,
        key: &Key,
        name: &str,
        manager: Option<String>,
        force: bool,
        applied: Value,
    ) -> (u16, Value) {
        // staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go,
        // ValidatePatchOptions (called by apiserver/pkg/endpoints/handlers/patch.go): an apply
        // needs a field manager; the error is Invalid, 422.
        let Some(manager) = manager.filter(|m| !m.is_empty()) else {
            return status(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into());
        };
        let subresource = if t.status { "status" } else { "" };
        let stored = match self.objects.get(key).cloned() {
            Some(stored) => stored,
            None if t.status => {
                return not_found(t, name);
            }
            None => {
                let mut object = applied;
                object["metadata"]["name"] = json!(name);
                return self.create(t, Some(manager), "Apply", object);
            }
        };
        let wanted = owned_leaves(&applied, t.status);
        let owners = self.owners.get(key).cloned().unwrap_or_default();
        // k8s.io/apimachinery/pkg/util/managedfields/internal/conflict.go, NewConflictError, and
        // api/errors/errors.go, NewApplyConflict: 409 Conflict naming each manager and field.
        let mut conflicts = Vec::new();
        for (path, value) in &wanted {
            if get_path(&stored, path) == Some(value) {
                continue;
            }
            for other in owners.iter().filter(|o| {
                !(o.manager == manager && o.operation == "Apply" && o.subresource == subresource)
            }) {
                if other.fields.contains(path) {
                    conflicts.push(format!(
                        "conflict with \"{}\": {}",
                        other.manager,
                        render_path(path)
                    ));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let count = conflicts.len();
            let plural = if count == 1 { "conflict" } else { "conflicts" };
            return status(
                409,
                "Conflict",
                format!(
                    "Apply failed with {count} {plural}: {}",
                    conflicts.join("\n")
                ),
            );
        }
        let mut next = stored.clone();
        for (path, value) in &wanted {
            set_path(&mut next, path, value.clone());
        }
        let before: BTreeSet<FieldPath> = owners
            .iter()
            .find(|o| {
                o.manager == manager && o.operation == "Apply" && o.subresource == subresource
            })
            .map(|o| o.fields.clone())
            .unwrap_or_default();
        for dropped in before.iter().filter(|p| !wanted.contains_key(*p)) {
            let shared = owners.iter().any(|o| {
                !(o.manager == manager && o.operation == "Apply") && o.fields.contains(dropped)
            });
            if !shared {
                remove_path(&mut next, dropped);
            }
        }
        next["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
        let by = Writer {
            manager: &manager,
            subresource,
        };
        let (code, answer) = self.store_update(t, key, name, &stored, next, &by);
        if code != 200 || !self.objects.contains_key(key) {
            return (code, answer);
        }
        self.own_applied(
            key,
            &manager,
            subresource,
            wanted.into_keys().collect(),
            force,
        );
        (200, self.shown(key).expect("just stored"))
    }

    /// Records an apply's fields as `manager`'s; forced, they are taken from every other owner.
    fn own_applied(
        &mut self,
        key: &Key,
        manager: &str,
        subresource: &'static str,
        fields: BTreeSet<FieldPath>,
        force: bool,
    ) {
        let owners = self.owners.entry(key.clone()).or_default();
        for owner in owners.iter_mut() {
            if owner.manager == manager
                && owner.operation == "Apply"
                && owner.subresource == subresource
            {
                continue;
            }
            // An update by the applier itself, and with force every other claim, goes.
            if owner.manager == manager || force {
                owner.fields.retain(|f| !fields.contains(f));
            }
        }
        match owners.iter_mut().find(|o| {
            o.manager == manager && o.operation == "Apply" && o.subresource == subresource
        }) {
            Some(owner) => owner.fields = fields,
            None => owners.push(Owner {
                manager: manager.to_owned(),
                operation: "Apply",
                subresource,
                fields,
            }),
        }
    }

    fn merge_patch(
        &mut self,
        t: &Target,
        key: &Key,
        name: &str,
        manager: Option<String>,
        patch: Value,
    ) -> (u16, Value) {
        let Some(stored) = self.objects.get(key).cloned() else {
            return not_found(t, name);
        };
        fn merge(target: &mut Value, patch: &Value) {
            match (target.as_object_mut(), patch) {
                (Some(map), Value::Object(changes)) => {
                    for (k, v) in changes {
                        if v.is_null() {
                            map.remove(k);
                        } else {
                            merge(map.entry(k.clone()).or_insert(Value::Null), v);
                        }
                    }
                }
                _ => *target = patch.clone(),
            }
        }
        let mut next = stored.clone();
        merge(&mut next, &patch);
        // A merge patch is conditional only when it carries a resourceVersion.
        if !patch["metadata"]["resourceVersion"].is_null()
            && let Err(refused) = self.check_version(t, name, &stored, &patch)
        {
            return refused;
        }
        let by = Writer {
            manager: manager.as_deref().unwrap_or("unknown"),
            subresource: if t.status { "status" } else { "" },
        };
        self.store_update(t, key, name, &stored, next, &by)
    }

    /// registry/store.go, (*Store).Delete: an object with finalizers is only marked
    /// (deletionTimestamp); the last finalizer's removal deletes it.
    fn delete(&mut self, t: &Target, key: &Key, name: &str) -> (u16, Value) {
        let Some(mut stored) = self.objects.get(key).cloned() else {
            return not_found(t, name);
        };
        if stored["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            if stored["metadata"]["deletionTimestamp"].is_null() {
                stored["metadata"]["deletionTimestamp"] = json!("2026-11-28T10:00:00Z");
                let revision = self.next();
                stored["metadata"]["resourceVersion"] = json!(revision.to_string());
                self.objects.insert(key.clone(), stored.clone());
                self.record("MODIFIED", key, &stored);
            }
            return (200, self.shown(key).expect("stored"));
        }
        self.objects.remove(key);
        self.owners.remove(key);
        self.next();
        self.record("DELETED", key, &stored);
        (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
        )
    }

    /// The watch events of a collection after `from`, or 410 Gone when history no longer
    /// reaches back that far (staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go,
    /// getAllEventsSinceLocked: errors.NewResourceExpired, sent as an ERROR event).
    fn events_since(&self, t: &Target, from: u64, labels: &str) -> Result<Vec<Value>, Value> {
        if from < self.compacted {
            let (_, gone) = status(
                410,
                "Expired",
                format!("too old resource version: {from} ({})", self.compacted),
            );
            return Err(json!({"type": "ERROR", "object": gone}));
        }
        Ok(self
            .history
            .iter()
            .filter(|e| {
                e.revision > from
                    && e.key.0 == t.root
                    && e.key.1 == t.plural
                    && t.namespace.as_ref().is_none_or(|n| *n == e.key.2)
                    && selector_matches(&e.object, labels)
            })
            .map(|e| json!({"type": e.kind, "object": e.object}))
            .collect())
    }
}

/// The fake server: its client, and handles to look at and change its state as a controller
/// would.
#[derive(Clone)]
pub struct FakeApi {
    /// A client whose requests this server answers.
    pub client: Client,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl FakeApi {
    /// A new, empty server.
    pub fn new() -> Self {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let fake = FakeApi {
            client: Client::new(service, "default"),
            state: state.clone(),
            changed: changed.clone(),
        };
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (state, changed) = (state.clone(), changed.clone());
                // Watches wait for changes, so each request is answered on its own task.
                tokio::spawn(async move {
                    let response = answer(&state, &changed, request).await;
                    respond.send_response(response);
                });
            }
        });
        fake
    }

    /// An object as the server holds it, by request path.
    pub fn get(&self, path: &str) -> Option<Value> {
        let t = parse_path(path);
        let key = (
            t.root,
            t.plural,
            t.namespace.unwrap_or_default(),
            t.name.expect("a name"),
        );
        self.state.lock().unwrap().shown(&key)
    }

    /// Writes an object's status as its controller would (the Deployment or Job controller).
    pub fn set_status(&self, path: &str, status: Value) {
        let t = parse_path(path);
        let key = (
            t.root.clone(),
            t.plural.clone(),
            t.namespace.clone().unwrap_or_default(),
            t.name.clone().expect("a name"),
        );
        let mut state = self.state.lock().unwrap();
        let mut object = state.objects.get(&key).cloned().expect("the object exists");
        object["status"] = status;
        let revision = state.next();
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        state.objects.insert(key.clone(), object.clone());
        state.record("MODIFIED", &key, &object);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Forgets the watch history, so watches from any earlier resourceVersion get 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted = state.revision;
        state.history.clear();
    }

    /// Every request so far, as `METHOD path?query` (query parameters sorted).
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

async fn answer(state: &Mutex<State>, changed: &Notify, request: Request<Body>) -> Response<Body> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("a JSON body"));
    if method == "GET" && query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(state, changed, &path, &query).await;
    }
    let (code, value) = state
        .lock()
        .unwrap()
        .handle(&method, &path, &query, &content_type, body);
    changed.notify_waiters();
    Response::builder()
        .status(code)
        .body(Body::from(value.to_string().into_bytes()))
        .unwrap()
}

/// Answers a watch with the events since its resourceVersion: at once when there are some,
/// else after the next change or a second. The stream then ends and the client watches again
/// from where it got to, as it does when a real server closes a watch.
async fn watch(
    state: &Mutex<State>,
    changed: &Notify,
    path: &str,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let t = parse_path(path);
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let labels = query.get("labelSelector").cloned().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let lines = loop {
        let wait = changed.notified();
        let events = state.lock().unwrap().events_since(&t, from, &labels);
        match events {
            Err(gone) => break vec![gone],
            Ok(events) if !events.is_empty() => break events,
            Ok(_) if tokio::time::Instant::now() >= deadline => break Vec::new(),
            Ok(_) => {
                let _ = tokio::time::timeout_at(deadline, wait).await;
            }
        }
    };
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    Response::builder()
        .status(200)
        .body(Body::from(text.into_bytes()))
        .unwrap()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A client of a new fake server, for tests that only need the client.
pub fn client() -> Client {
    FakeApi::new().client
}
