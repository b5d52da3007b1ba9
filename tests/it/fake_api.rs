//! A small in-memory Kubernetes API server for rsgo's own kinds, behind kube's tower-test mock:
//! get, list, create, replace (with resourceVersion checks), status replace and delete (with
//! finalizers), as the real one answers them. It lets the hook tests that run on SQLite run
//! unchanged against the Kubernetes store.

use std::collections::BTreeMap;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

#[derive(Default)]
struct State {
    objects: BTreeMap<(String, String, String), Value>,
    revision: u64,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (code, body)
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "stacks" => "Stack",
        "deploymentrecords" => "DeploymentRecord",
        "environments" => "Environment",
        "catalogsources" => "CatalogSource",
        "apikeys" => "ApiKey",
        other => panic!("the fake API server does not serve {other}"),
    }
}

impl State {
    fn next(&mut self) -> String {
        self.revision += 1;
        self.revision.to_string()
    }

    fn handle(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let rest = path
            .strip_prefix("/apis/rsgo.io/v1alpha1/")
            .expect("an rsgo.io path");
        let parts: Vec<&str> = rest.split('/').collect();
        let (namespace, parts) = match parts.as_slice() {
            ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest.to_vec()),
            _ => (None, parts.clone()),
        };
        let plural = parts[0].to_owned();
        let name = parts.get(1).map(|n| n.to_string());
        let status_only = parts.get(2) == Some(&"status");
        let key = |name: &str| {
            (
                plural.clone(),
                namespace.clone().unwrap_or_default(),
                name.to_owned(),
            )
        };
        match (method, name) {
            ("GET", None) => {
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|((p, ns, _), _)| {
                        *p == plural && namespace.as_ref().is_none_or(|n| n == ns)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                let list_kind = format!("{}List", kind_of(&plural));
                (
                    200,
                    json!({"apiVersion": "rsgo.io/v1alpha1", "kind": list_kind,
                             "metadata": {"resourceVersion": self.revision.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name)) => match self.objects.get(&key(&name)) {
                Some(object) => (200, object.clone()),
                None => status(404, "NotFound", "not found"),
            },
            ("POST", None) => {
                let mut object = body.expect("a body");
                let name = object["metadata"]["name"].as_str().unwrap().to_owned();
                if self.objects.contains_key(&key(&name)) {
                    return status(409, "AlreadyExists", "already exists");
                }
                let revision = self.next();
                let meta = &mut object["metadata"];
                meta["resourceVersion"] = json!(revision);
                meta["uid"] = json!(format!("uid-{revision}"));
                meta["generation"] = json!(1);
                meta["creationTimestamp"] = json!("2026-11-28T10:00:00Z");
                self.objects.insert(key(&name), object.clone());
                (201, object)
            }
            ("PUT", Some(name)) => {
                let Some(stored) = self.objects.get(&key(&name)).cloned() else {
                    return status(404, "NotFound", "not found");
                };
                let sent = body.expect("a body");
                let expected = sent["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                if !status_only
                    && !expected.is_empty()
                    && expected != stored["metadata"]["resourceVersion"]
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                let mut next = if status_only {
                    let mut next = stored.clone();
                    next["status"] = sent["status"].clone();
                    next
                } else {
                    let mut next = sent.clone();
                    next["status"] = stored["status"].clone();
                    for field in [
                        "uid",
                        "creationTimestamp",
                        "deletionTimestamp",
                        "generation",
                    ] {
                        next["metadata"][field] = stored["metadata"][field].clone();
                    }
                    if sent["spec"] != stored["spec"] {
                        next["metadata"]["generation"] =
                            json!(stored["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
                    }
                    next
                };
                next["metadata"]["resourceVersion"] = json!(self.next());
                let finalizers_left = next["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if !next["metadata"]["deletionTimestamp"].is_null() && !finalizers_left {
                    self.objects.remove(&key(&name));
                } else {
                    self.objects.insert(key(&name), next.clone());
                }
                (200, next)
            }
            ("DELETE", Some(name)) => {
                let Some(mut stored) = self.objects.get(&key(&name)).cloned() else {
                    return status(404, "NotFound", "not found");
                };
                if stored["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
                {
                    stored["metadata"]["deletionTimestamp"] = json!("2026-11-28T10:00:00Z");
                    stored["metadata"]["resourceVersion"] = json!(self.next());
                    self.objects.insert(key(&name), stored.clone());
                    return (200, stored);
                }
                self.objects.remove(&key(&name));
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
                )
            }
            (method, name) => {
                panic!("the fake API server does not answer {method} {path} ({name:?})")
            }
        }
    }
}

/// A client whose requests the fake server answers until the client is dropped.
pub fn client() -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut state = State::default();
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().as_str().to_owned();
            let path = request.uri().path().to_owned();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
            let (code, answer) = state.handle(&method, &path, body);
            let response = Response::builder()
                .status(code)
                .body(Body::from(answer.to_string().into_bytes()));
            respond.send_response(response.unwrap());
        }
    });
    Client::new(service, "default")
}
