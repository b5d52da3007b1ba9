//! Conversations with a Kubernetes API server, checked request by request against kube's
//! tower-test mock: each expected call is matched by method and path, its body inspected, and
//! answered as the API server would. A missing call times out; an extra call fails the test.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::{Api, Client};
use rsgo::api::AppState;
use rsgo::catalog::Catalog;
use rsgo::catalog::sync::SharedCatalog;
use rsgo::model::CONTROLLER_MANAGER;
use rsgo::reconcile::leader::LeaseLock;
use rsgo::store::{KubeStore, Store};
use serde_json::{Value, json};

use crate::hooks::send;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Respond = tower_test::mock::SendResponse<Response<Body>>;

/// The API server side of the mock.
pub struct ApiServer(Handle);

fn mock() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "rsgo-system"), ApiServer(handle))
}

/// A Kubernetes `Status` error body.
fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (from the mock)"), "reason": reason, "code": code})
}

impl ApiServer {
    /// Expects `method path` next, answers `code` with `body`, and returns the request's JSON body.
    async fn expect(&mut self, method: &str, path: &str, code: u16, body: Value) -> Value {
        self.expect_with(method, path, |_| (code, body)).await
    }

    /// Takes the next request, which must be `method path`; returns its head and JSON body and
    /// the means to answer it.
    async fn receive(
        &mut self,
        method: &str,
        path: &str,
    ) -> (http::request::Parts, Value, Respond) {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("expected {method} {path}, but no request came"))
                .expect("the client is gone");
        assert_eq!(request.method().as_str(), method, "for {}", request.uri());
        assert_eq!(request.uri().path(), path);
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let sent = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (parts, sent, respond)
    }

    /// Like [`ApiServer::expect`], with the answer computed from the request body. Writes of
    /// rsgo's kinds must name a field manager, and replacements must carry the resourceVersion
    /// they read: a real API server refuses an unconditional update of a custom resource.
    async fn expect_with(
        &mut self,
        method: &str,
        path: &str,
        answer: impl FnOnce(&Value) -> (u16, Value),
    ) -> Value {
        let (parts, sent, respond) = self.receive(method, path).await;
        if path.starts_with(API) && matches!(method, "POST" | "PUT" | "PATCH") {
            let query = parts.uri.query().unwrap_or_default();
            assert!(
                query.contains("fieldManager=rsgo-"),
                "{method} {path}?{query} names no field manager"
            );
            if method == "PUT" {
                let version = sent["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                assert!(
                    !version.is_empty(),
                    "{method} {path} is an unconditional update"
                );
            }
        }
        let (code, body) = answer(&sent);
        respond.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(body.to_string().into_bytes()))
                .unwrap(),
        );
        sent
    }

    /// Expects a status write as controllers make it: a forced server-side apply on the status
    /// subresource by `manager`, holding only the object's identity and status. Answers with
    /// `current` carrying that status; returns what was applied.
    async fn expect_status(&mut self, path: &str, manager: &str, current: &Value) -> Value {
        let (parts, sent, respond) = self.receive("PATCH", path).await;
        let query = parts.uri.query().unwrap_or_default();
        assert!(
            query.contains(&format!("fieldManager={manager}")) && query.contains("force=true"),
            "{path}?{query}"
        );
        let content_type = parts.headers[http::header::CONTENT_TYPE].to_str().unwrap();
        assert_eq!(content_type, "application/apply-patch+yaml");
        assert!(
            sent.get("spec").is_none(),
            "a status apply holds no spec: {sent}"
        );
        assert!(
            sent["metadata"].get("resourceVersion").is_none(),
            "an apply needs no resourceVersion: {sent}"
        );
        let mut stored = current.clone();
        stored["status"] = sent["status"].clone();
        respond.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(stored.to_string().into_bytes()))
                .unwrap(),
        );
        sent
    }

    /// Asserts that no further request arrives.
    async fn done(mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await
        {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/rsgo-system/leases";

fn lease(holder: &str, renewed: Timestamp, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "rsgo-controller", "namespace": "rsgo-system", "resourceVersion": "41"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": renewed.to_string(), "renewTime": renewed.to_string(), "leaseTransitions": transitions}
    })
}

fn lock(client: Client, identity: &str) -> LeaseLock {
    LeaseLock::new(
        Api::namespaced(client, "rsgo-system"),
        "rsgo-controller",
        identity,
    )
}

/// Starts one acquire-or-renew attempt by `identity` at `now` and answers its read of the
/// Lease with `current` (absent: 404).
async fn attempt(
    identity: &'static str,
    now: Timestamp,
    current: Option<Value>,
) -> (tokio::task::JoinHandle<rsgo::Result<bool>>, ApiServer) {
    let (client, mut server) = mock();
    let attempt =
        tokio::spawn(async move { lock(client, identity).try_acquire_or_renew(now).await });
    let path = format!("{LEASES}/rsgo-controller");
    match current {
        Some(lease) => server.expect("GET", &path, 200, lease).await,
        None => {
            server
                .expect("GET", &path, 404, status(404, "NotFound"))
                .await
        }
    };
    (attempt, server)
}

#[tokio::test]
async fn a_free_lease_is_created_and_held() {
    let now = Timestamp::now();
    let (attempt, mut server) = attempt("pod-a", now, None).await;
    let created = server
        .expect("POST", LEASES, 201, lease("pod-a", now, 0))
        .await;
    assert_eq!(created["spec"]["holderIdentity"], "pod-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    assert!(attempt.await.unwrap().unwrap(), "pod-a leads");
    server.done().await;
}

#[tokio::test]
async fn a_lease_held_by_a_live_leader_is_left_alone() {
    let now = Timestamp::now();
    let fresh = lease("pod-a", now - SignedDuration::from_secs(3), 0);
    let (attempt, server) = attempt("pod-b", now, Some(fresh)).await;
    assert!(
        !attempt.await.unwrap().unwrap(),
        "pod-b must not lead while pod-a renews"
    );
    server.done().await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let now = Timestamp::now();
    let stale = lease("pod-a", now - SignedDuration::from_secs(20), 4);
    let (attempt, mut server) = attempt("pod-b", now, Some(stale)).await;
    let path = format!("{LEASES}/rsgo-controller");
    let replaced = server
        .expect("PUT", &path, 200, lease("pod-b", now, 5))
        .await;
    assert_eq!(
        replaced["metadata"]["resourceVersion"], "41",
        "the write is conditional"
    );
    assert_eq!(replaced["spec"]["holderIdentity"], "pod-b");
    assert_eq!(replaced["spec"]["leaseTransitions"], 5);
    assert!(attempt.await.unwrap().unwrap());
    server.done().await;
}

#[tokio::test]
async fn losing_the_race_for_a_lease_is_not_leading() {
    let now = Timestamp::now();
    let stale = lease("pod-a", now - SignedDuration::from_secs(20), 0);
    let (attempt, mut server) = attempt("pod-b", now, Some(stale)).await;
    let path = format!("{LEASES}/rsgo-controller");
    server
        .expect("PUT", &path, 409, status(409, "Conflict"))
        .await;
    assert!(!attempt.await.unwrap().unwrap());
    server.done().await;
}

const API: &str = "/apis/rsgo.io/v1alpha1";

fn api_key(key: &str) -> Value {
    json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "ApiKey",
           "metadata": {"name": "ci", "resourceVersion": "7"},
           "spec": {"displayName": "CI", "keyHash": rsgo::auth::hash(key), "prefix": &key[..9],
                    "permissions": ["Hooks.Redeploy"], "revoked": false},
           "status": {"lastUsedAt": Timestamp::now().to_string()}})
}

fn stack(resource_version: &str) -> Value {
    json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Stack",
           "metadata": {"name": "shop", "namespace": "prod", "resourceVersion": resource_version, "generation": 3, "uid": "u1"},
           "spec": {"environment": "prod", "product": "shop", "version": "6.4.0"},
           "status": {"deployedVersion": "6.4.0"}})
}

#[tokio::test]
async fn a_redeploy_over_the_kubernetes_store_retries_a_stale_write_and_undoes_its_record() {
    let (client, mut server) = mock();
    // Keys come from the in-memory index: checking one costs no API call.
    let key = rsgo::auth::generate().plaintext;
    let keys = rsgo::auth::KeyIndex::default();
    keys.apply(kube::runtime::watcher::Event::Init);
    keys.apply(kube::runtime::watcher::Event::InitApply(
        serde_json::from_value(api_key(&key)).unwrap(),
    ));
    keys.apply(kube::runtime::watcher::Event::InitDone);
    let state = AppState::new(
        Arc::new(KubeStore::new(client, rsgo::model::HOOKS_MANAGER)) as Arc<dyn Store>,
        Arc::new(SharedCatalog::default()),
        keys,
        "prod",
    );
    let call = {
        let key = key.clone();
        tokio::spawn(async move {
            let body = json!({"stackName": "shop"}).to_string().into_bytes();
            send(&state, "/api/hooks/redeploy", Some(&key), Some(body)).await
        })
    };
    expect_environment(&mut server).await;

    // First attempt: the stack changes under us, so the audit entry and the record created for
    // it are deleted again. The entry goes first, so no change is ever made without it.
    server
        .expect(
            "GET",
            &format!("{API}/namespaces/prod/stacks/shop"),
            200,
            stack("100"),
        )
        .await;
    let entries = format!("{API}/auditevents");
    let first_entry = server
        .expect_with("POST", &entries, |sent| (201, sent.clone()))
        .await;
    let first_entry = first_entry["metadata"]["name"].as_str().unwrap().to_owned();
    let records = format!("{API}/namespaces/prod/deploymentrecords");
    let record = server
        .expect_with("POST", &records, |sent| (201, sent.clone()))
        .await;
    let first_id = record["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(record["spec"]["action"], "Redeploy");
    assert_eq!(record["spec"]["requestedBy"], "CI");
    let put = server
        .expect(
            "PUT",
            &format!("{API}/namespaces/prod/stacks/shop"),
            409,
            status(409, "Conflict"),
        )
        .await;
    assert_eq!(
        put["metadata"]["resourceVersion"], "100",
        "the stack write is conditional"
    );
    assert_eq!(
        put["metadata"]["annotations"]["rsgo.io/deployment-id"],
        first_id.as_str()
    );
    assert!(put["metadata"]["annotations"]["rsgo.io/redeploy-requested-at"].is_string());
    assert_eq!(
        put["spec"],
        stack("100")["spec"],
        "a redeploy never edits the spec"
    );
    for undone in [
        format!("{entries}/{first_entry}"),
        format!("{API}/namespaces/prod/deploymentrecords/{first_id}"),
    ] {
        server
            .expect("DELETE", &undone, 200, status(200, "Success"))
            .await;
    }

    // Second attempt on the fresh stack succeeds.
    server
        .expect(
            "GET",
            &format!("{API}/namespaces/prod/stacks/shop"),
            200,
            stack("101"),
        )
        .await;
    // The audit entry is written with the change, naming the key by name and prefix only.
    let entry = server
        .expect_with("POST", &entries, |sent| (201, sent.clone()))
        .await;
    assert_eq!(entry["spec"]["action"], "hook.redeploy");
    assert_eq!(entry["spec"]["target"], "prod/shop");
    assert_eq!(entry["spec"]["actor"]["name"], "CI");
    assert!(!entry.to_string().contains(&key), "{entry}");
    let record = server
        .expect_with("POST", &records, |sent| (201, sent.clone()))
        .await;
    let id = record["metadata"]["name"].as_str().unwrap().to_owned();
    assert_ne!(id, first_id, "each attempt records its own deployment");
    let put = server
        .expect(
            "PUT",
            &format!("{API}/namespaces/prod/stacks/shop"),
            200,
            stack("102"),
        )
        .await;
    assert_eq!(put["metadata"]["resourceVersion"], "101");
    let (status_code, reply) = call.await.unwrap();
    assert_eq!(status_code, 200, "{reply}");
    assert_eq!(reply["deploymentId"], id.as_str());
    assert_eq!(reply["stackVersion"], "6.4.0");
    server.done().await;
}

const MANIFEST: &str = r#"
metadata: {name: Shop, productId: shop, productVersion: "6.5.0"}
services:
  web:
    image: registry.example.com/web:6.5.0
    ports: ["80"]
    volumes: ["data:/data"]
volumes:
  data: {}
"#;

fn kube_context(client: Client, with_product: bool) -> Arc<rsgo::reconcile::Context> {
    let mut catalog = Catalog::default();
    if with_product {
        let pv = rsgo::catalog::parse_manifest(std::path::Path::new("shop.yaml"), MANIFEST)
            .unwrap()
            .unwrap();
        catalog.replace_source("test", vec![pv]);
    }
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(
        client.clone(),
        rsgo::model::CONTROLLER_MANAGER,
    ));
    Arc::new(
        rsgo::reconcile::Context::new(store, Arc::new(SharedCatalog::new(catalog)))
            .with_kubernetes(client, "rsgo-0"),
    )
}

fn kube_stack(extra_metadata: Value) -> Value {
    let mut stack = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Stack",
        "metadata": {"name": "shop", "namespace": "prod", "resourceVersion": "200", "generation": 2, "uid": "stack-uid",
                     "annotations": {"rsgo.io/deployment-id": "d1"}, "finalizers": ["rsgo.io/cleanup"]},
        "spec": {"environment": "prod", "product": "shop", "version": "6.5.0"},
        "status": {"observedGeneration": 1, "deployedVersion": "6.4.0", "phase": "Running"}});
    if let (Some(meta), Value::Object(extra)) = (stack["metadata"].as_object_mut(), extra_metadata)
    {
        meta.extend(extra);
    }
    stack
}

fn kube_environment() -> Value {
    json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Environment", "metadata": {"name": "prod"},
           "spec": {"kubernetes": {"namespace": "prod"}}})
}

fn record(phase: Option<&str>) -> Value {
    let mut record = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "DeploymentRecord",
        "metadata": {"name": "d1", "namespace": "prod", "resourceVersion": "5"},
        "spec": {"stack": "shop", "environment": "prod", "action": "Upgrade", "fromVersion": "6.4.0",
                 "toVersion": "6.5.0", "requestedBy": "CI", "requestedAt": "2026-11-28T10:00:00Z"}});
    if let Some(phase) = phase {
        record["status"] = json!({"phase": phase});
    }
    record
}

/// Starts a reconcile of `stack` and answers its fresh read of the Stack. Returns the running
/// reconcile and the Stack's API path.
async fn begin(
    ctx: Arc<rsgo::reconcile::Context>,
    server: &mut ApiServer,
    stack: Value,
) -> (
    tokio::task::JoinHandle<rsgo::Result<kube::runtime::controller::Action>>,
    String,
) {
    let trigger: rsgo::model::Stack = serde_json::from_value(stack.clone()).unwrap();
    let run = tokio::spawn(rsgo::reconcile::reconcile(Arc::new(trigger), ctx));
    let path = format!("{API}/namespaces/prod/stacks/shop");
    server.expect("GET", &path, 200, stack).await;
    (run, path)
}

/// Answers the read of the `prod` Environment.
async fn expect_environment(server: &mut ApiServer) {
    server
        .expect(
            "GET",
            &format!("{API}/environments/prod"),
            200,
            kube_environment(),
        )
        .await;
}

/// Answers a status write by echoing the object back.
fn echo(sent: &Value) -> (u16, Value) {
    (200, sent.clone())
}

/// Expects the server-side applies and pruning of the test stack; the Deployment is answered by
/// `deployment` (given the applied object). Returns the applied Deployment.
async fn expect_apply(
    server: &mut ApiServer,
    deployment: impl FnOnce(&Value) -> (u16, Value),
) -> Value {
    let absent = || status(404, "NotFound");
    server
        .expect(
            "GET",
            "/api/v1/namespaces/prod/persistentvolumeclaims/shop-data",
            404,
            absent(),
        )
        .await;
    let claim = server
        .expect_with(
            "PATCH",
            "/api/v1/namespaces/prod/persistentvolumeclaims/shop-data",
            echo,
        )
        .await;
    assert!(
        claim["metadata"].get("ownerReferences").is_none(),
        "claims outlive the stack"
    );
    server
        .expect("GET", "/api/v1/namespaces/prod/services/web", 404, absent())
        .await;
    let service = server
        .expect_with("PATCH", "/api/v1/namespaces/prod/services/web", echo)
        .await;
    assert_eq!(
        service["metadata"]["ownerReferences"][0]["uid"],
        "stack-uid"
    );
    server
        .expect(
            "GET",
            "/apis/apps/v1/namespaces/prod/deployments/shop-web",
            404,
            absent(),
        )
        .await;
    let applied = server
        .expect_with(
            "PATCH",
            "/apis/apps/v1/namespaces/prod/deployments/shop-web",
            deployment,
        )
        .await;
    let services = json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "prod"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "admin", "namespace": "prod"}}]});
    server
        .expect("GET", "/api/v1/namespaces/prod/services", 200, services)
        .await;
    server
        .expect(
            "DELETE",
            "/api/v1/namespaces/prod/services/admin",
            200,
            status(200, "Success"),
        )
        .await;
    let deployments =
        json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": []});
    server
        .expect(
            "GET",
            "/apis/apps/v1/namespaces/prod/deployments",
            200,
            deployments,
        )
        .await;
    expect_no_jobs(server).await;
    applied
}

/// Answers the listing of the stack's Jobs: it has none.
async fn expect_no_jobs(server: &mut ApiServer) {
    let jobs = json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": []});
    server
        .expect("GET", "/apis/batch/v1/namespaces/prod/jobs", 200, jobs)
        .await;
}

#[tokio::test]
async fn an_upgrade_applies_workloads_and_its_record_ends_when_the_rollout_does() {
    let (client, mut server) = mock();
    let ctx = kube_context(client, true);
    let trigger: rsgo::model::Stack = serde_json::from_value(kube_stack(json!({}))).unwrap();
    let run = tokio::spawn(rsgo::reconcile::reconcile(
        Arc::new(trigger.clone()),
        ctx.clone(),
    ));

    let stacks = format!("{API}/namespaces/prod/stacks/shop");
    let records = format!("{API}/namespaces/prod/deploymentrecords");
    server
        .expect("GET", &stacks, 200, kube_stack(json!({})))
        .await;
    server
        .expect("GET", &format!("{records}/d1"), 200, record(None))
        .await;
    expect_environment(&mut server).await;
    let running = server
        .expect_status(
            &format!("{records}/d1/status"),
            CONTROLLER_MANAGER,
            &record(None),
        )
        .await;
    assert_eq!(running["status"]["phase"], "Running");
    let deploying = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(deploying["status"]["phase"], "Deploying");
    assert_eq!(deploying["status"]["observedGeneration"], 2);
    // The API server has not rolled the pods yet: the answer to the apply has no status.
    let applied = expect_apply(&mut server, echo).await;
    let container = &applied["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/web:6.5.0");
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(
        applied["metadata"]["labels"]["app.kubernetes.io/version"],
        "6.5.0"
    );
    let rolling = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(rolling["status"]["phase"], "Deploying");
    assert!(
        rolling["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Rolling out: shop-web")
    );
    let action = run.await.unwrap().unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );

    // The next look finds the rollout complete and finishes the same record.
    let mut stored = kube_stack(json!({}));
    stored["status"] = rolling["status"].clone();
    stored["metadata"]["resourceVersion"] = json!("201");
    let run = tokio::spawn(rsgo::reconcile::reconcile(Arc::new(trigger), ctx));
    server.expect("GET", &stacks, 200, stored).await;
    server
        .expect(
            "GET",
            &format!("{records}/d1"),
            200,
            record(Some("Running")),
        )
        .await;
    expect_environment(&mut server).await;
    expect_apply(&mut server, |sent| {
        let mut done = sent.clone();
        done["metadata"]["generation"] = json!(4);
        done["status"] = json!({"observedGeneration": 4, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1});
        (200, done)
    })
    .await;
    let done = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(done["status"]["phase"], "Running");
    assert_eq!(done["status"]["deployedVersion"], "6.5.0");
    assert_eq!(done["status"]["lastDeployment"], "d1");
    let ready = &done["status"]["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["status"].as_str()),
        (Some("Ready"), Some("True"))
    );
    assert_eq!(ready["reason"], "Deployed");
    assert_eq!(ready["observedGeneration"], 2);
    assert!(done["status"].get("message").is_none());
    let succeeded = server
        .expect_status(
            &format!("{records}/d1/status"),
            CONTROLLER_MANAGER,
            &record(None),
        )
        .await;
    assert_eq!(succeeded["status"]["phase"], "Succeeded");
    assert_eq!(
        succeeded["status"]["message"],
        "Upgraded 'shop' from 6.4.0 to 6.5.0."
    );
    let events = "/apis/events.k8s.io/v1/namespaces/prod/events";
    let event = server
        .expect_with("POST", events, |sent| (201, sent.clone()))
        .await;
    assert_eq!(event["reason"], "Deployed");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["note"], "Upgraded 'shop' from 6.4.0 to 6.5.0.");
    assert_eq!(event["regarding"]["kind"], "Stack");
    assert_eq!(event["regarding"]["name"], "shop");
    assert_eq!(event["reportingController"], "rsgo");
    let list = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "DeploymentRecordList", "metadata": {}, "items": [record(Some("Succeeded"))]});
    server.expect("GET", &records, 200, list).await;
    assert_eq!(
        run.await.unwrap().unwrap(),
        kube::runtime::controller::Action::await_change()
    );
    server.done().await;
}

#[tokio::test]
async fn an_invalid_stack_gets_a_status_message_instead_of_a_crash_loop() {
    let (client, mut server) = mock();
    let ctx = kube_context(client, false);
    // A stack applied with kubectl has no finalizer yet: rsgo adds its own first.
    let fresh = json!({"annotations": {}, "finalizers": []});
    let (run, stacks) = begin(ctx, &mut server, kube_stack(fresh)).await;
    let guarded = server.expect_with("PUT", &stacks, echo).await;
    assert_eq!(
        guarded["metadata"]["finalizers"],
        json!(["rsgo.io/cleanup"])
    );
    assert_eq!(guarded["metadata"]["resourceVersion"], "200");
    expect_environment(&mut server).await;
    // The product is missing, so the catalog is synced once before the stack is failed.
    let none = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "CatalogSourceList", "metadata": {}, "items": []});
    server
        .expect("GET", &format!("{API}/catalogsources"), 200, none)
        .await;
    let failed = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(failed["status"]["phase"], "Failed");
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("product 'shop' version '6.5.0' is not in the catalog"),
        "{message}"
    );
    let action = run
        .await
        .unwrap()
        .expect("an invalid spec is not an error to retry");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    server.done().await;
}

#[tokio::test]
async fn a_deleted_stack_loses_its_workloads_but_keeps_its_claims() {
    let (client, mut server) = mock();
    let ctx = kube_context(client, true);
    let deleting =
        json!({"deletionTimestamp": "2026-11-28T10:00:00Z", "finalizers": ["rsgo.io/cleanup"]});
    let (run, stacks) = begin(ctx, &mut server, kube_stack(deleting)).await;
    expect_environment(&mut server).await;
    let services = json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "prod"}}]});
    server
        .expect("GET", "/api/v1/namespaces/prod/services", 200, services)
        .await;
    server
        .expect(
            "DELETE",
            "/api/v1/namespaces/prod/services/web",
            200,
            status(200, "Success"),
        )
        .await;
    let deployments = json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop-web", "namespace": "prod"}, "spec": {"selector": {}, "template": {}}}]});
    server
        .expect(
            "GET",
            "/apis/apps/v1/namespaces/prod/deployments",
            200,
            deployments,
        )
        .await;
    server
        .expect(
            "DELETE",
            "/apis/apps/v1/namespaces/prod/deployments/shop-web",
            200,
            status(200, "Success"),
        )
        .await;
    expect_no_jobs(&mut server).await;
    let released = server.expect_with("PUT", &stacks, echo).await;
    assert_eq!(
        released["metadata"]["finalizers"],
        json!([]),
        "the finalizer is released last"
    );
    run.await.unwrap().unwrap();
    server.done().await;
}

#[tokio::test]
async fn an_upgrade_over_the_kubernetes_store_writes_version_variables_and_record() {
    let (client, mut server) = mock();
    let mut catalog = Catalog::default();
    let versions = ["6.4.0", "6.5.0"]
        .iter()
        .map(|v| {
            let text = format!("metadata: {{name: shop, productVersion: '{v}'}}\nvariables:\n  MODE: {{default: slow}}\nservices:\n  web: {{image: 'web:{v}'}}\n");
            rsgo::catalog::parse_manifest(std::path::Path::new("m.yaml"), &text).unwrap().unwrap()
        })
        .collect();
    catalog.replace_source("test", versions);
    let key = rsgo::auth::generate().plaintext;
    let keys = rsgo::auth::KeyIndex::default();
    let mut upgrader = api_key(&key);
    upgrader["spec"]["permissions"] = json!(["Hooks.Upgrade"]);
    keys.apply(kube::runtime::watcher::Event::Init);
    keys.apply(kube::runtime::watcher::Event::InitApply(
        serde_json::from_value(upgrader).unwrap(),
    ));
    keys.apply(kube::runtime::watcher::Event::InitDone);
    let state = AppState::new(
        Arc::new(KubeStore::new(client, rsgo::model::HOOKS_MANAGER)) as Arc<dyn Store>,
        Arc::new(SharedCatalog::new(catalog)),
        keys,
        "prod",
    );
    let call = tokio::spawn(async move {
        let body =
            json!({"stackName": "shop", "targetVersion": "6.5.0", "variables": {"MODE": "fast"}});
        send(
            &state,
            "/api/hooks/upgrade",
            Some(&key),
            Some(body.to_string().into_bytes()),
        )
        .await
    });
    expect_environment(&mut server).await;
    // The hook reads the stack to learn its product (present in the catalog: no sync), then
    // again for its conditional write.
    server
        .expect(
            "GET",
            &format!("{API}/namespaces/prod/stacks/shop"),
            200,
            stack("300"),
        )
        .await;
    server
        .expect(
            "GET",
            &format!("{API}/namespaces/prod/stacks/shop"),
            200,
            stack("300"),
        )
        .await;
    let entry = server
        .expect_with("POST", &format!("{API}/auditevents"), |sent| {
            (201, sent.clone())
        })
        .await;
    assert_eq!(entry["spec"]["action"], "hook.upgrade");
    let record = server
        .expect_with(
            "POST",
            &format!("{API}/namespaces/prod/deploymentrecords"),
            |sent| (201, sent.clone()),
        )
        .await;
    assert_eq!(record["spec"]["action"], "Upgrade");
    assert_eq!(
        (
            record["spec"]["fromVersion"].as_str(),
            record["spec"]["toVersion"].as_str()
        ),
        (Some("6.4.0"), Some("6.5.0"))
    );
    assert_eq!(record["metadata"]["ownerReferences"][0]["uid"], "u1");
    let put = server
        .expect_with(
            "PUT",
            &format!("{API}/namespaces/prod/stacks/shop"),
            |sent| (200, sent.clone()),
        )
        .await;
    assert_eq!(put["metadata"]["resourceVersion"], "300");
    assert_eq!(put["spec"]["version"], "6.5.0");
    assert_eq!(put["spec"]["variables"]["MODE"], "fast");
    let (code, reply) = call.await.unwrap();
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        reply["message"],
        "Successfully upgraded 'shop' from 6.4.0 to 6.5.0."
    );
    server.done().await;
}

#[tokio::test]
async fn a_stack_kubernetes_cannot_run_fails_with_a_message() {
    let (client, mut server) = mock();
    let mut catalog = Catalog::default();
    let text = "metadata: {name: shop, productVersion: '6.5.0'}\nservices:\n  web: {image: web, user: www-data}\n";
    catalog.replace_source(
        "t",
        vec![
            rsgo::catalog::parse_manifest(std::path::Path::new("m.yaml"), text)
                .unwrap()
                .unwrap(),
        ],
    );
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(
        client.clone(),
        rsgo::model::CONTROLLER_MANAGER,
    ));
    let ctx = Arc::new(
        rsgo::reconcile::Context::new(store, Arc::new(SharedCatalog::new(catalog)))
            .with_kubernetes(client, "rsgo-0"),
    );
    let plain = json!({"annotations": {}});
    let (run, stacks) = begin(ctx, &mut server, kube_stack(plain)).await;
    expect_environment(&mut server).await;
    let deploying = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(deploying["status"]["phase"], "Deploying");
    let failed = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(failed["status"]["phase"], "Failed");
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("user 'www-data' must be numeric"),
        "{message}"
    );
    assert_eq!(failed["status"]["conditions"][0]["reason"], "Failed");
    run.await
        .unwrap()
        .expect("an invalid spec waits for a change");
    server.done().await;
}

/// Sends on a channel when dropped: tells the test that leader work was stopped.
struct Stopped(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts leader election as `pod-a` against a free Lease and waits until it reconciles. Returns
/// the API server, the election, a signal sent when the work stops, and the Lease's path.
async fn leading() -> (
    ApiServer,
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
    String,
) {
    let (client, mut server) = mock();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
    let mut signals = Some((started_tx, stopped_tx));
    let election = tokio::spawn(rsgo::reconcile::leader::lead(
        lock(client, "pod-a"),
        move || {
            let (started_tx, stopped_tx) = signals.take().expect("work starts once in this test");
            async move {
                let _guard = Stopped(Some(stopped_tx));
                let _ = started_tx.send(());
                std::future::pending::<()>().await
            }
        },
    ));
    let path = format!("{LEASES}/rsgo-controller");
    server
        .expect("GET", &path, 404, status(404, "NotFound"))
        .await;
    server
        .expect_with("POST", LEASES, |sent| (201, sent.clone()))
        .await;
    started.await.expect("the leader starts reconciling");
    (server, election, stopped, path)
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_reconciling() {
    let (mut server, election, stopped, path) = leading().await;
    // At the next renewal another replica holds the Lease: the work must stop at once.
    let other = lease("pod-b", Timestamp::now(), 1);
    server.expect("GET", &path, 200, other.clone()).await;
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the work was stopped")
        .unwrap();
    // Still a follower: it keeps asking, and leaves a live Lease alone.
    server.expect("GET", &path, 200, other).await;
    election.abort();
}

/// A leader that cannot reach the API server stops acting once it has gone the renew deadline
/// without a renewal, before the Lease it last wrote can expire and pass to another replica.
#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_stops_before_its_lease_can_pass_on() {
    use rsgo::reconcile::leader::{LEASE_DURATION, RENEW_DEADLINE};
    let (mut server, election, mut stopped, path) = leading().await;
    let renewed = tokio::time::Instant::now();
    let mut failed_renewals = 0;
    let stopped_after = loop {
        server
            .expect("GET", &path, 500, status(500, "InternalError"))
            .await;
        failed_renewals += 1;
        if tokio::time::timeout(Duration::from_millis(10), &mut stopped)
            .await
            .is_ok()
        {
            break renewed.elapsed();
        }
        assert!(failed_renewals < 20, "the leader never stopped");
    };
    assert!(
        stopped_after >= RENEW_DEADLINE && stopped_after < LEASE_DURATION,
        "stopped {stopped_after:?} after its last renewal, after {failed_renewals} failed ones"
    );
    election.abort();
}

#[tokio::test]
async fn a_service_name_taken_by_another_stack_is_reported_not_stolen() {
    let (client, mut server) = mock();
    let ctx = kube_context(client, true);
    let plain = json!({"annotations": {}});
    let (run, stacks) = begin(ctx, &mut server, kube_stack(plain)).await;
    expect_environment(&mut server).await;
    server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    let claim = "/api/v1/namespaces/prod/persistentvolumeclaims/shop-data";
    server
        .expect("GET", claim, 404, status(404, "NotFound"))
        .await;
    server.expect_with("PATCH", claim, echo).await;
    let theirs = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "prod",
                     "labels": {"app.kubernetes.io/managed-by": "rsgo", "rsgo.io/stack": "blog"}},
        "spec": {"ports": [{"port": 80}]}});
    server
        .expect("GET", "/api/v1/namespaces/prod/services/web", 200, theirs)
        .await;
    let failed = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(failed["status"]["phase"], "Failed");
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("Service 'web' in namespace 'prod' belongs to stack 'blog'"),
        "{message}"
    );
    run.await.unwrap().expect("a name clash waits for a change");
    server.done().await;
}

#[tokio::test]
async fn a_redeploy_rolls_the_pods_through_the_restart_annotation_only() {
    let (client, mut server) = mock();
    let ctx = kube_context(client, true);
    let requested = "2026-11-28T12:00:00Z";
    let mut redeploying = kube_stack(json!({
        "annotations": {"rsgo.io/deployment-id": "d1", "rsgo.io/redeploy-requested-at": requested}
    }));
    redeploying["status"] = json!({"observedGeneration": 2, "deployedVersion": "6.5.0", "phase": "Running",
                                   "lastHandledRedeployAt": "2026-11-28T09:00:00Z"});
    let trigger: rsgo::model::Stack = serde_json::from_value(redeploying.clone()).unwrap();
    let run = tokio::spawn(rsgo::reconcile::reconcile(Arc::new(trigger), ctx));
    let stacks = format!("{API}/namespaces/prod/stacks/shop");
    let records = format!("{API}/namespaces/prod/deploymentrecords");
    let mut redeploy_record = record(None);
    redeploy_record["spec"]["action"] = json!("Redeploy");
    redeploy_record["spec"]["fromVersion"] = json!("6.5.0");
    server.expect("GET", &stacks, 200, redeploying).await;
    server
        .expect(
            "GET",
            &format!("{records}/d1"),
            200,
            redeploy_record.clone(),
        )
        .await;
    expect_environment(&mut server).await;
    server
        .expect_status(
            &format!("{records}/d1/status"),
            CONTROLLER_MANAGER,
            &record(None),
        )
        .await;
    let deploying = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(deploying["status"]["phase"], "Deploying");
    let applied = expect_apply(&mut server, |sent| {
        let mut done = sent.clone();
        done["metadata"]["generation"] = json!(7);
        done["status"] = json!({"observedGeneration": 7, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1});
        (200, done)
    })
    .await;
    let template = &applied["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["rsgo.io/restarted-at"],
        requested
    );
    assert_eq!(
        template["spec"]["containers"][0]["image"], "registry.example.com/web:6.5.0",
        "same spec, new pods"
    );
    assert_eq!(
        template["spec"]["containers"][0]["imagePullPolicy"], "Always",
        "new pods pull the image again"
    );
    let done = server
        .expect_status(
            &format!("{stacks}/status"),
            CONTROLLER_MANAGER,
            &kube_stack(json!({})),
        )
        .await;
    assert_eq!(done["status"]["lastHandledRedeployAt"], requested);
    assert_eq!(done["status"]["phase"], "Running");
    let succeeded = server
        .expect_status(
            &format!("{records}/d1/status"),
            CONTROLLER_MANAGER,
            &record(None),
        )
        .await;
    assert_eq!(
        succeeded["status"]["message"],
        "Redeployed 'shop' at 6.5.0."
    );
    let event = server
        .expect_with(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/prod/events",
            |sent| (201, sent.clone()),
        )
        .await;
    assert_eq!(event["reason"], "Deployed");
    let mut finished = redeploy_record;
    finished["status"] = json!({"phase": "Succeeded"});
    let list = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "DeploymentRecordList", "metadata": {}, "items": [finished]});
    server.expect("GET", &records, 200, list).await;
    run.await.unwrap().unwrap();
    server.done().await;
}

#[tokio::test]
async fn variables_from_read_the_secret_of_the_stack_namespace() {
    let (client, mut server) = mock();
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(client, CONTROLLER_MANAGER));
    let mut stack = kube_stack(json!({}));
    stack["spec"]["variablesFrom"] =
        json!({"DB_PASSWORD": {"secretKeyRef": {"name": "shop-db", "key": "password"}}});
    let stack: rsgo::model::Stack = serde_json::from_value(stack).unwrap();
    let read = {
        let (store, stack) = (store.clone(), stack.clone());
        tokio::spawn(async move { rsgo::reconcile::secret_values(&store, &stack).await })
    };
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shop-db", "namespace": "prod", "resourceVersion": "7"},
        "data": {"password": "czNjcjN0"}});
    server
        .expect(
            "GET",
            "/api/v1/namespaces/prod/secrets/shop-db",
            200,
            secret,
        )
        .await;
    let values = read.await.unwrap().unwrap();
    assert_eq!(values["DB_PASSWORD"], "s3cr3t");

    let read = tokio::spawn(async move { rsgo::reconcile::secret_values(&store, &stack).await });
    server
        .expect(
            "GET",
            "/api/v1/namespaces/prod/secrets/shop-db",
            404,
            status(404, "NotFound"),
        )
        .await;
    let err = read.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("takes its value from Secret 'shop-db', which does not exist"),
        "{err}"
    );
    server.done().await;
}
