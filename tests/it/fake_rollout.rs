//! Whole rollouts on the faithful fake API server: the reconciler and the hooks over the
//! Kubernetes store, with the test playing the Job and Deployment controllers.

use std::sync::Arc;

use kube::api::ObjectMeta;
use kube::runtime::controller::Action;
use rsgo::api::AppState;
use rsgo::catalog::Catalog;
use rsgo::catalog::sync::SharedCatalog;
use rsgo::model::{
    ApiKey, ApiKeySpec, CONTROLLER_MANAGER, Environment, EnvironmentSpec, HOOKS_MANAGER,
    KubernetesTarget, Permission, Stack, StackSpec,
};
use rsgo::reconcile::{Context, reconcile};
use rsgo::store::{KubeStore, Store};
use serde_json::{Value, json};

use crate::fake_api::FakeApi;

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/prod/deployments";
const JOBS: &str = "/apis/batch/v1/namespaces/prod/jobs";
const STACK: &str = "/apis/rsgo.io/v1alpha1/namespaces/prod/stacks/shop";

fn manifest(version: &str) -> String {
    format!(
        "metadata: {{name: shop, productVersion: '{version}'}}\nservices:\n  \
         migrate: {{image: 'registry.example.com/migrate:{version}', lifecycle: init}}\n  \
         web: {{image: 'registry.example.com/web:{version}', dependsOn: [migrate]}}\n"
    )
}

struct Cluster {
    fake: FakeApi,
    ctx: Arc<Context>,
    hooks: AppState,
}

async fn cluster() -> Cluster {
    let fake = FakeApi::new();
    let controller: Arc<dyn Store> =
        Arc::new(KubeStore::new(fake.client.clone(), CONTROLLER_MANAGER));
    let hooks: Arc<dyn Store> = Arc::new(KubeStore::new(fake.client.clone(), HOOKS_MANAGER));
    let env = Environment::new(
        "prod",
        EnvironmentSpec {
            docker: None,
            kubernetes: Some(KubernetesTarget {
                namespace: "prod".into(),
                ..Default::default()
            }),
        },
    );
    hooks.create(&env).await.unwrap();
    let mut catalog = Catalog::default();
    let versions = ["1.0.0", "2.0.0"]
        .iter()
        .map(|v| {
            rsgo::catalog::parse_manifest(std::path::Path::new("shop.yaml"), &manifest(v))
                .unwrap()
                .unwrap()
        })
        .collect();
    catalog.replace_source("test", versions);
    let catalog = Arc::new(SharedCatalog::new(catalog));
    let ctx = Arc::new(
        Context::new(controller, catalog.clone()).with_kubernetes(fake.client.clone(), "rsgo-0"),
    );
    let keys = crate::support::key_index(&hooks).await;
    let hooks = AppState::new(hooks, catalog, keys, "prod");
    Cluster { fake, ctx, hooks }
}

impl Cluster {
    /// Creates the Stack `shop` at 1.0.0, as `kubectl apply` would.
    async fn create_stack(&self) {
        let stack = Stack {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                namespace: Some("prod".into()),
                ..Default::default()
            },
            spec: StackSpec {
                environment: "prod".into(),
                product: "shop".into(),
                stack: None,
                version: Some("1.0.0".into()),
                variables: Default::default(),
                variables_from: Default::default(),
            },
            status: None,
        };
        self.hooks.store.create(&stack).await.unwrap();
    }

    async fn reconcile(&self) -> rsgo::Result<Action> {
        let stack = self
            .hooks
            .store
            .require::<Stack>("prod", "shop")
            .await
            .unwrap();
        reconcile(Arc::new(stack), self.ctx.clone()).await
    }

    fn jobs(&self) -> Vec<String> {
        self.fake
            .requests()
            .iter()
            .filter_map(|r| r.strip_prefix(&format!("PATCH {JOBS}/")))
            .map(|rest| rest.split('?').next().unwrap_or_default().to_owned())
            .collect()
    }

    fn stack(&self) -> Value {
        self.fake.get(STACK).unwrap()
    }

    /// Plays the Deployment controller: the Deployment has rolled out.
    fn roll_out(&self, name: &str) {
        let path = format!("{DEPLOYMENTS}/{name}");
        let generation = self.fake.get(&path).unwrap()["metadata"]["generation"].clone();
        self.fake.set_status(
            &path,
            json!({"observedGeneration": generation, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
        );
    }
}

/// Who manages which top-level field of an object, from its managedFields.
fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|entry| {
            let manager = entry["manager"].as_str().unwrap().to_owned();
            entry["fieldsV1"]
                .as_object()
                .unwrap()
                .keys()
                .map(move |field| (manager.clone(), field.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn a_one_shot_service_runs_as_a_job_before_the_deployment_that_needs_it() {
    let c = cluster().await;
    c.create_stack().await;

    let action = c.reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
    let jobs = c.jobs();
    assert_eq!(jobs.len(), 1, "{:?}", c.fake.requests());
    let job = format!("{JOBS}/{}", jobs[0]);
    assert!(c.fake.get(&job).is_some());
    assert!(
        c.fake.get(&format!("{DEPLOYMENTS}/shop-web")).is_none(),
        "web waits for its one-shot dependency"
    );
    assert_eq!(c.stack()["status"]["phase"], "Deploying");
    assert!(
        c.stack()["status"]["message"]
            .as_str()
            .unwrap()
            .contains("waiting for one-shot service job"),
        "{}",
        c.stack()
    );

    // The Job controller reports success; the Deployment follows, then rolls out.
    c.fake.set_status(
        &job,
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    );
    c.reconcile().await.unwrap();
    assert!(c.fake.get(&format!("{DEPLOYMENTS}/shop-web")).is_some());
    c.roll_out("shop-web");
    assert_eq!(c.reconcile().await.unwrap(), Action::await_change());
    let shown = c.stack();
    assert_eq!(shown["status"]["phase"], "Running", "{shown}");
    assert_eq!(
        shown["status"]["observedGeneration"],
        shown["metadata"]["generation"]
    );
    let requests = c.fake.requests();
    let first = |prefix: &str| requests.iter().position(|r| r.starts_with(prefix)).unwrap();
    assert!(first(&format!("PATCH {JOBS}/")) < first(&format!("PATCH {DEPLOYMENTS}/")));
    let applied = c.jobs();
    assert_eq!(applied.len(), 3, "each look applies the Job again");
    assert!(
        applied.iter().all(|name| *name == applied[0]),
        "under the same name, so it is not run again: {applied:?}"
    );
    assert!(
        managers(&shown).contains(&(CONTROLLER_MANAGER.into(), "f:status".into())),
        "{shown}"
    );
}

#[tokio::test]
async fn a_failing_one_shot_service_rolls_an_upgrade_back() {
    let c = cluster().await;
    c.create_stack().await;
    c.reconcile().await.unwrap();
    let first_job = format!("{JOBS}/{}", c.jobs()[0]);
    c.fake.set_status(&first_job, json!({"succeeded": 1}));
    c.reconcile().await.unwrap();
    c.roll_out("shop-web");
    c.reconcile().await.unwrap();
    assert_eq!(c.stack()["status"]["deployedVersion"], "1.0.0");

    let key = rsgo::auth::generate();
    let record = ApiKey::new(
        "ci",
        ApiKeySpec {
            display_name: "CI".into(),
            key_hash: key.hash.clone(),
            prefix: key.prefix.clone(),
            permissions: vec![Permission::Upgrade],
            ..Default::default()
        },
    );
    c.hooks.store.create(&record).await.unwrap();
    let body = json!({"stackName": "shop", "targetVersion": "2.0.0"}).to_string();
    let (status, reply) = crate::hooks::send(
        &c.hooks,
        "/api/hooks/upgrade",
        Some(&key.plaintext),
        Some(body.into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let id = reply["deploymentId"].as_str().unwrap().to_owned();
    let upgraded = c.stack();
    assert!(
        managers(&upgraded).contains(&(HOOKS_MANAGER.into(), "f:spec".into())),
        "the hook's change is the hook's: {upgraded}"
    );

    c.reconcile().await.unwrap();
    let new_job = c.jobs().last().unwrap().clone();
    assert_ne!(
        format!("{JOBS}/{new_job}"),
        first_job,
        "a new spec runs a new Job"
    );
    c.fake.set_status(
        &format!("{JOBS}/{new_job}"),
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
    );
    let failure = c.reconcile().await.unwrap_err().to_string();
    assert!(
        failure.contains("Job has reached the specified backoff limit"),
        "{failure}"
    );
    let record = c
        .fake
        .get(&format!(
            "/apis/rsgo.io/v1alpha1/namespaces/prod/deploymentrecords/{id}"
        ))
        .unwrap();
    assert_eq!(record["status"]["phase"], "RolledBack", "{record}");
    let message = record["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "one-shot service job {new_job} failed: Job has reached the specified backoff limit"
        )) && message.ends_with("Rolled back to 1.0.0."),
        "{message}"
    );
    assert_eq!(c.stack()["spec"]["version"], "1.0.0", "the spec went back");
    // The status URL reads the record by name: one filtered request, not a listing of all.
    let request = axum::http::Request::get(format!("/api/deployments/{id}"))
        .header("X-Api-Key", &key.plaintext)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(rsgo::api::router(c.hooks.clone()), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lookup =
        format!("GET /apis/rsgo.io/v1alpha1/deploymentrecords?fieldSelector=metadata.name={id}");
    assert!(
        c.fake.requests().iter().any(|r| r.starts_with(&lookup)),
        "{:?}",
        c.fake.requests()
    );
    assert_eq!(
        c.fake.get(&format!("{DEPLOYMENTS}/shop-web")).unwrap()["spec"]["template"]["spec"]["containers"]
            [0]["image"],
        "registry.example.com/web:1.0.0",
        "the web Deployment never moved to 2.0.0"
    );
}
