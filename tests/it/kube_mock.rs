//! Conversations with a Kubernetes API server, checked request by request against kube's
//! tower-test mock: each expected call is matched by method and path, its body inspected, and
//! answered as the API server would. A missing call times out; an extra call fails the test.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{Request, Response};
use jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::{Api, Client};
use rsgo::api::AppState;
use rsgo::catalog::Catalog;
use rsgo::reconcile::leader::LeaseLock;
use rsgo::store::{KubeStore, Store};
use serde_json::{Value, json};

use crate::hooks::send;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

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

    /// Like [`ApiServer::expect`], with the answer computed from the request body.
    async fn expect_with(
        &mut self,
        method: &str,
        path: &str,
        answer: impl FnOnce(&Value) -> (u16, Value),
    ) -> Value {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("expected {method} {path}, but no request came"))
                .expect("the client is gone");
        assert_eq!(request.method().as_str(), method, "for {}", request.uri());
        assert_eq!(request.uri().path(), path);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let sent = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let (code, body) = answer(&sent);
        respond.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(body.to_string().into_bytes()))
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

#[tokio::test]
async fn a_free_lease_is_created_and_held() {
    let (client, mut server) = mock();
    let now = Timestamp::now();
    let attempt =
        tokio::spawn(async move { lock(client, "pod-a").try_acquire_or_renew(now).await });
    server
        .expect(
            "GET",
            &format!("{LEASES}/rsgo-controller"),
            404,
            status(404, "NotFound"),
        )
        .await;
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
    let (client, mut server) = mock();
    let now = Timestamp::now();
    let attempt =
        tokio::spawn(async move { lock(client, "pod-b").try_acquire_or_renew(now).await });
    let fresh = lease("pod-a", now - SignedDuration::from_secs(3), 0);
    server
        .expect("GET", &format!("{LEASES}/rsgo-controller"), 200, fresh)
        .await;
    assert!(
        !attempt.await.unwrap().unwrap(),
        "pod-b must not lead while pod-a renews"
    );
    server.done().await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (client, mut server) = mock();
    let now = Timestamp::now();
    let attempt =
        tokio::spawn(async move { lock(client, "pod-b").try_acquire_or_renew(now).await });
    let stale = lease("pod-a", now - SignedDuration::from_secs(20), 4);
    server
        .expect("GET", &format!("{LEASES}/rsgo-controller"), 200, stale)
        .await;
    let replaced = server
        .expect(
            "PUT",
            &format!("{LEASES}/rsgo-controller"),
            200,
            lease("pod-b", now, 5),
        )
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
    let (client, mut server) = mock();
    let now = Timestamp::now();
    let attempt =
        tokio::spawn(async move { lock(client, "pod-b").try_acquire_or_renew(now).await });
    let stale = lease("pod-a", now - SignedDuration::from_secs(20), 0);
    server
        .expect("GET", &format!("{LEASES}/rsgo-controller"), 200, stale)
        .await;
    server
        .expect(
            "PUT",
            &format!("{LEASES}/rsgo-controller"),
            409,
            status(409, "Conflict"),
        )
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
    let state = AppState {
        store: Arc::new(KubeStore::new(client)) as Arc<dyn Store>,
        catalog: Arc::new(RwLock::new(Catalog::default())),
        default_environment: "prod".into(),
        catalog_synced: Default::default(),
    };
    let key = rsgo::auth::generate().plaintext;
    let call = {
        let key = key.clone();
        tokio::spawn(async move {
            let body = json!({"stackName": "shop"}).to_string().into_bytes();
            send(&state, "/api/hooks/redeploy", Some(&key), Some(body)).await
        })
    };
    let list = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "ApiKeyList", "metadata": {}, "items": [api_key(&key)]});
    server
        .expect("GET", &format!("{API}/apikeys"), 200, list)
        .await;
    let environment = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Environment",
                             "metadata": {"name": "prod"}, "spec": {"kubernetes": {"namespace": "prod"}}});
    server
        .expect("GET", &format!("{API}/environments/prod"), 200, environment)
        .await;

    // First attempt: the stack changes under us, so the record created for it is deleted again.
    server
        .expect(
            "GET",
            &format!("{API}/namespaces/prod/stacks/shop"),
            200,
            stack("100"),
        )
        .await;
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
    server
        .expect(
            "DELETE",
            &format!("{API}/namespaces/prod/deploymentrecords/{first_id}"),
            200,
            status(200, "Success"),
        )
        .await;

    // Second attempt on the fresh stack succeeds.
    server
        .expect(
            "GET",
            &format!("{API}/namespaces/prod/stacks/shop"),
            200,
            stack("101"),
        )
        .await;
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
