//! The fake API server's rules, each tested on the fake itself: a request a real API server
//! refuses is refused with the same status and reason. `fake_api.rs` names, beside each rule,
//! where Kubernetes implements it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use rsgo::model::{CONTROLLER_MANAGER, HOOKS_MANAGER, Stack};
use rsgo::store::{KubeStore, Store};
use serde_json::{Value, json};

use crate::fake_api::FakeApi;

const STACKS: &str = "/apis/rsgo.io/v1alpha1/namespaces/local/stacks";

fn stacks(fake: &FakeApi) -> Api<DynamicObject> {
    Api::namespaced_with(
        fake.client.clone(),
        "local",
        &ApiResource::erase::<Stack>(&()),
    )
}

fn stack(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "rsgo.io/v1alpha1", "kind": "Stack",
        "metadata": {"name": name, "namespace": "local"},
        "spec": {"environment": "local", "product": "shop", "version": "1.0.0"},
        "status": {"phase": "Running"},
    }))
    .unwrap()
}

fn post() -> PostParams {
    PostParams {
        field_manager: Some("test".into()),
        ..Default::default()
    }
}

/// The status code and reason of a refused request.
fn refusal(error: kube::Error) -> (u16, String, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason, status.message),
        other => panic!("not an API refusal: {other}"),
    }
}

async fn created(fake: &FakeApi, name: &str) -> DynamicObject {
    stacks(fake).create(&post(), &stack(name)).await.unwrap()
}

#[tokio::test]
async fn updates_of_custom_resources_need_a_resource_version_and_a_current_one() {
    let fake = FakeApi::new();
    let api = stacks(&fake);
    let stored = created(&fake, "a").await;
    assert!(
        stored.data.get("status").is_none(),
        "status is not set on create"
    );
    let mut blind = stored.clone();
    blind.metadata.resource_version = None;
    let (code, reason, message) = refusal(api.replace("a", &post(), &blind).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.contains(
            "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
        ),
        "{message}"
    );
    let (code, reason, _) = refusal(api.replace_status("a", &post(), &blind).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str()),
        (422, "Invalid"),
        "the status subresource too"
    );

    let mut changed = stored.clone();
    changed.data["spec"]["version"] = json!("2.0.0");
    api.replace("a", &post(), &changed).await.unwrap();
    let (code, reason, message) = refusal(api.replace("a", &post(), &changed).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        message.contains("the object has been modified"),
        "{message}"
    );
}

#[tokio::test]
async fn object_writes_keep_status_and_status_writes_keep_the_rest() {
    let fake = FakeApi::new();
    let api = stacks(&fake);
    let stored = created(&fake, "a").await;
    let mut with_status = stored.clone();
    with_status.data["status"] = json!({"phase": "Failed"});
    with_status.data["spec"]["version"] = json!("9.9.9");
    let after_status = api
        .replace_status("a", &post(), &with_status)
        .await
        .unwrap();
    assert_eq!(after_status.data["status"]["phase"], "Failed");
    assert_eq!(
        after_status.data["spec"]["version"], "1.0.0",
        "a status write changes only status"
    );
    let mut with_spec = after_status.clone();
    with_spec.data["status"] = json!({"phase": "Running"});
    with_spec.data["spec"]["version"] = json!("2.0.0");
    let after_spec = api.replace("a", &post(), &with_spec).await.unwrap();
    assert_eq!(after_spec.data["spec"]["version"], "2.0.0");
    assert_eq!(
        after_spec.data["status"]["phase"], "Failed",
        "an object write keeps status"
    );
}

#[tokio::test]
async fn generation_counts_spec_changes_only() {
    let fake = FakeApi::new();
    let api = stacks(&fake);
    let stored = created(&fake, "a").await;
    assert_eq!(stored.metadata.generation, Some(1));
    let mut labelled = stored.clone();
    labelled.metadata.labels = Some([("team".to_owned(), "a".to_owned())].into());
    labelled.metadata.annotations = Some([("note".to_owned(), "b".to_owned())].into());
    let labelled = api.replace("a", &post(), &labelled).await.unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "labels and annotations are metadata"
    );
    let status = api
        .patch_status("a", &PatchParams::apply("test").force(), &Patch::Apply(json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Stack", "status": {"phase": "Failed"}})))
        .await
        .unwrap();
    assert_eq!(status.metadata.generation, Some(1), "status is not spec");
    let mut changed = status.clone();
    changed.data["spec"]["version"] = json!("2.0.0");
    assert_eq!(
        api.replace("a", &post(), &changed)
            .await
            .unwrap()
            .metadata
            .generation,
        Some(2)
    );
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_and_none_may_be_added_then() {
    let fake = FakeApi::new();
    let api = stacks(&fake);
    let mut guarded = created(&fake, "a").await;
    guarded.metadata.finalizers = Some(vec!["rsgo.io/cleanup".into()]);
    api.replace("a", &post(), &guarded).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let deleting = api.get("a").await.unwrap();
    assert!(
        deleting.metadata.deletion_timestamp.is_some(),
        "marked, not gone"
    );
    let mut more = deleting.clone();
    more.metadata.finalizers = Some(vec!["rsgo.io/cleanup".into(), "other".into()]);
    let (code, reason, message) = refusal(api.replace("a", &post(), &more).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.contains("no new finalizers can be added if the object is being deleted"),
        "{message}"
    );
    let mut released = deleting.clone();
    released.metadata.finalizers = Some(vec![]);
    api.replace("a", &post(), &released).await.unwrap();
    assert!(
        api.get_opt("a").await.unwrap().is_none(),
        "gone with its last finalizer"
    );
}

#[tokio::test]
async fn server_side_apply_needs_a_manager_and_reports_conflicts_unless_forced() {
    let fake = FakeApi::new();
    let api = stacks(&fake);
    created(&fake, "a").await;
    let request = http::Request::patch(format!("{STACKS}/a"))
        .header(http::header::CONTENT_TYPE, "application/apply-patch+yaml")
        .body(serde_json::to_vec(&json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Stack", "spec": {"version": "3.0.0"}})).unwrap())
        .unwrap();
    let (code, reason, message) = refusal(fake.client.request::<Value>(request).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.contains("fieldManager: Required value: is required for apply patch"),
        "{message}"
    );

    let apply = |version: &str| {
        Patch::Apply(json!({"apiVersion": "rsgo.io/v1alpha1", "kind": "Stack",
            "metadata": {"name": "a"}, "spec": {"version": version}}))
    };
    // The creator owns spec.version by its update, so the first apply must take it over.
    let (code, _, message) = refusal(
        api.patch("a", &PatchParams::apply(HOOKS_MANAGER), &apply("2.0.0"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    assert!(
        message.contains("conflict with \"test\""),
        "an update's fields count too: {message}"
    );
    api.patch(
        "a",
        &PatchParams::apply(HOOKS_MANAGER).force(),
        &apply("2.0.0"),
    )
    .await
    .unwrap();
    let (code, reason, message) = refusal(
        api.patch(
            "a",
            &PatchParams::apply(CONTROLLER_MANAGER),
            &apply("1.5.0"),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        message
            .contains("Apply failed with 1 conflict: conflict with \"rsgo-hooks\": .spec.version"),
        "{message}"
    );
    let same = api
        .patch(
            "a",
            &PatchParams::apply(CONTROLLER_MANAGER),
            &apply("2.0.0"),
        )
        .await;
    assert!(same.is_ok(), "the same value is shared, not a conflict");
    let forced = api
        .patch(
            "a",
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &apply("1.5.0"),
        )
        .await
        .unwrap();
    assert_eq!(forced.data["spec"]["version"], "1.5.0");
    let managers: Vec<(String, String)> = forced
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("f:version"))
        })
        .map(|m| (m.manager.clone().unwrap(), m.operation.clone().unwrap()))
        .collect();
    assert_eq!(
        managers,
        [(CONTROLLER_MANAGER.to_owned(), "Apply".to_owned())],
        "forced, the field changed hands"
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_is_gone_and_the_watcher_lists_again() {
    let fake = FakeApi::new();
    created(&fake, "a").await;
    let old = created(&fake, "b").await.metadata.resource_version.unwrap();
    created(&fake, "c").await;
    fake.compact();
    let request = http::Request::get(format!("{STACKS}?watch=true&resourceVersion={old}"))
        .body(Vec::new())
        .unwrap();
    let text = fake.client.request_text(request).await.unwrap();
    let event: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(
        (
            event["object"]["code"].as_u64(),
            event["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired"))
    );

    // rsgo's watch over the Kubernetes store starts with a listing, and lists again after 410.
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(fake.client.clone(), CONTROLLER_MANAGER));
    let mut events = Box::pin(store.watch::<Stack>());
    let mut listed = 0;
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_secs(5), events.next()).await
    {
        if let watcher::Event::InitApply(_) = event {
            listed += 1;
        }
        if let watcher::Event::InitDone = event {
            break;
        }
    }
    assert_eq!(listed, 3);
    // The watch is lazy: it asks again only when polled, by then from a compacted version.
    created(&fake, "d").await;
    fake.compact();
    let mut relisted = 0;
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_secs(10), events.next()).await
    {
        match event {
            watcher::Event::InitApply(_) => relisted += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(
        relisted, 4,
        "after 410 the watcher listed every object again"
    );
}
