//! Against a real cluster, where `KUBECONFIG` points at one (kind, k3d or any other):
//! `scripts/test.sh cluster -- --ignored`. No API server can run on rsgo's CI machine, so these
//! are ignored by default; everything they need besides the cluster, they set up themselves.

use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::support::{curl, unique};

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn apply_json<K>(api: &Api<K>, name: &str, object: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply("rsgo-test").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and run with --ignored"]
async fn a_redeploy_hook_rolls_a_deployment_in_a_real_cluster() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG points at a cluster");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in rsgo::model::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("rsgo-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        eventually(&format!("CRD {name} established"), || {
            let (crds, name) = (crds.clone(), name.clone());
            async move {
                let crd = crds.get(&name).await.ok()?;
                let conditions = crd.status?.conditions?;
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
    let namespace = unique("rsgo-it-");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let catalog = tempfile::TempDir::new().unwrap();
    let image = std::env::var("RSGO_CLUSTER_TEST_IMAGE").unwrap_or_else(|_| "busybox:1.36".into());
    std::fs::write(
        catalog.path().join("sleeper.yaml"),
        format!("metadata: {{name: sleeper, productVersion: '1.0.0'}}\nservices:\n  app:\n    image: {image}\n    command: [sleep, '3600']\n"),
    )
    .unwrap();
    let dyn_api = |kind: &str| {
        let resource = match kind {
            "Environment" => kube::api::ApiResource::erase::<rsgo::model::Environment>(&()),
            "ApiKey" => kube::api::ApiResource::erase::<rsgo::model::ApiKey>(&()),
            _ => kube::api::ApiResource::erase::<rsgo::model::Stack>(&()),
        };
        match kind {
            "Stack" => Api::<kube::api::DynamicObject>::namespaced_with(
                client.clone(),
                &namespace,
                &resource,
            ),
            _ => Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource),
        }
    };
    let env_json = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Environment", "metadata": {"name": namespace},
                          "spec": {"kubernetes": {"namespace": namespace}}});
    apply_json(&dyn_api("Environment"), &namespace, env_json).await;
    let key = rsgo::auth::generate();
    let key_json = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "ApiKey", "metadata": {"name": namespace},
        "spec": {"displayName": "cluster test", "keyHash": key.hash, "prefix": key.prefix,
                 "permissions": ["Hooks.Redeploy"], "environment": namespace}});
    apply_json(&dyn_api("ApiKey"), &namespace, key_json).await;
    let stack_json = json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Stack", "metadata": {"name": "sleeper", "namespace": namespace},
        "spec": {"environment": namespace, "product": "sleeper"}});
    apply_json(&dyn_api("Stack"), "sleeper", stack_json).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_rsgo"))
        .args([
            "serve",
            "--store",
            "kubernetes",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--resync-seconds",
            "5",
        ])
        .arg("--catalog")
        .arg(catalog.path())
        .env("POD_NAMESPACE", &namespace)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let rolled_out = |d: &Deployment| {
        let status = d.status.clone().unwrap_or_default();
        status.available_replicas == Some(1)
            && status.updated_replicas == Some(1)
            && status.replicas == Some(1)
    };
    eventually("the sleeper Deployment to roll out", || {
        let deployments = deployments.clone();
        async move { deployments.get("sleeper-app").await.ok().filter(rolled_out) }
    })
    .await;

    let url = format!("http://127.0.0.1:{port}/api/hooks/redeploy");
    let (status, reply) = curl(
        "POST",
        &url,
        Some(&key.plaintext),
        Some(r#"{"stackName":"sleeper","wait":true}"#),
    )
    .unwrap();
    assert_eq!(status, 200, "{reply}");
    let restarted = deployments.get("sleeper-app").await.unwrap();
    let annotations = restarted
        .spec
        .template
        .metadata
        .clone()
        .unwrap()
        .annotations
        .unwrap();
    assert!(
        annotations.contains_key("rsgo.io/restarted-at"),
        "the redeploy rolled the pods"
    );
    assert!(rolled_out(&restarted));

    // The stack's status describes its current generation, the record says how the rollout
    // ended, and managedFields tell the hook's writes from the controller's.
    let stack = dyn_api("Stack").get("sleeper").await.unwrap();
    assert_eq!(stack.data["status"]["phase"], "Running", "{:?}", stack.data);
    assert_eq!(
        stack.data["status"]["observedGeneration"].as_i64(),
        stack.metadata.generation
    );
    let id = reply["deploymentId"].as_str().unwrap();
    let records = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &namespace,
        &kube::api::ApiResource::erase::<rsgo::model::DeploymentRecord>(&()),
    );
    let record = records.get(id).await.unwrap();
    assert_eq!(
        record.data["status"]["phase"], "Succeeded",
        "{:?}",
        record.data
    );
    let managers: Vec<String> = stack
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    for writer in [rsgo::model::HOOKS_MANAGER, rsgo::model::CONTROLLER_MANAGER] {
        assert!(managers.iter().any(|m| m == writer), "{managers:?}");
    }

    let _ = server.kill();
    let _ = server.wait();
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
    let _ = dyn_api("Environment")
        .delete(&namespace, &DeleteParams::default())
        .await;
    let _ = dyn_api("ApiKey")
        .delete(&namespace, &DeleteParams::default())
        .await;
}
