//! The hook contract in-process: the real router over a real SQLite store, no rollout.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use jiff::{SignedDuration, Timestamp};
use kube::api::ObjectMeta;
use rsgo::api::{AppState, router};
use rsgo::auth;
use rsgo::catalog::sync::SharedCatalog;
use rsgo::model::{
    ApiKey, ApiKeySpec, CatalogSource, CatalogSourceSpec, DEPLOYMENT_ANNOTATION, DeploymentRecord,
    DirectorySource, DockerEndpoint, Environment, EnvironmentSpec, Permission, REDEPLOY_ANNOTATION,
    Stack, StackSpec,
};
use rsgo::store::{KubeStore, SqliteStore, Store, Write, encode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

pub struct Fixture {
    pub state: AppState,
    /// The directory of the catalog source the fixture loaded.
    pub catalog_dir: std::path::PathBuf,
    _dir: TempDir,
}

fn manifest(version: &str, extra_variable: bool) -> String {
    let variable = if extra_variable {
        "  GREETING: {required: true}\n"
    } else {
        ""
    };
    format!(
        "metadata: {{name: Shop, productId: shop, productVersion: '{version}'}}\nvariables:\n  TAG: {{default: '1'}}\n{variable}services:\n  web: {{image: 'registry.invalid/web:${{TAG}}'}}\n"
    )
}

fn env(name: &str) -> Environment {
    Environment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: EnvironmentSpec {
            docker: Some(DockerEndpoint {
                host: "unix:///var/run/docker.sock".into(),
                ..Default::default()
            }),
            kubernetes: None,
        },
        status: None,
    }
}

/// Which store a hook test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// The embedded SQLite store, in a temp dir.
    Sqlite,
    /// The Kubernetes store, against the in-memory fake API server.
    Kubernetes,
}

pub async fn fixture(backend: Backend) -> Fixture {
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn Store> = match backend {
        Backend::Sqlite => Arc::new(SqliteStore::open(dir.path()).unwrap()),
        Backend::Kubernetes => Arc::new(KubeStore::new(
            crate::fake_api::client(),
            rsgo::model::HOOKS_MANAGER,
        )),
    };
    for name in ["local", "other"] {
        store.create(&env(name)).await.unwrap();
    }
    let stack = Stack {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            namespace: Some("local".into()),
            ..Default::default()
        },
        spec: StackSpec {
            environment: "local".into(),
            product: "shop".into(),
            stack: None,
            version: Some("6.4.0".into()),
            variables: BTreeMap::from([("TAG".into(), "2".into())]),
            variables_from: Default::default(),
        },
        status: None,
    };
    store.create(&stack).await.unwrap();
    // The catalog comes from a real directory source, as a server would load it.
    let manifests = dir.path().join("catalog");
    std::fs::create_dir(&manifests).unwrap();
    for version in ["6.4.0", "6.5.0"] {
        std::fs::write(
            manifests.join(format!("shop-{version}.yaml")),
            manifest(version, version == "6.5.0"),
        )
        .unwrap();
    }
    let source = CatalogSource {
        metadata: ObjectMeta {
            name: Some("shop-catalog".into()),
            ..Default::default()
        },
        spec: CatalogSourceSpec {
            directory: Some(DirectorySource {
                path: manifests.to_string_lossy().into_owned(),
            }),
            git: None,
        },
        status: None,
    };
    store.create(&source).await.unwrap();
    let catalog = Arc::new(SharedCatalog::default());
    let report = rsgo::catalog::sync::sync_all(&store, &catalog)
        .await
        .unwrap();
    assert_eq!(
        (report.sources_synced, report.versions_loaded),
        (1, 2),
        "{:?}",
        report.errors
    );
    let keys = crate::support::key_index(&store).await;
    Fixture {
        state: AppState::new(store, catalog, keys, "local"),
        catalog_dir: manifests,
        _dir: dir,
    }
}

impl Fixture {
    /// Adds a manifest to the catalog directory; the next lookup of its version syncs it.
    pub fn add_manifest(&self, file: &str, text: &str) {
        std::fs::write(self.catalog_dir.join(file), text).unwrap();
    }

    pub async fn key_with(
        &self,
        permissions: &[&str],
        customize: impl FnOnce(&mut ApiKeySpec),
    ) -> String {
        let key = auth::generate();
        let mut spec = ApiKeySpec {
            display_name: format!("key {}", key.prefix),
            key_hash: key.hash.clone(),
            prefix: key.prefix.clone(),
            permissions: permissions.iter().map(|p| p.parse().unwrap()).collect(),
            ..Default::default()
        };
        customize(&mut spec);
        let record = ApiKey {
            metadata: ObjectMeta {
                name: Some(key.prefix.to_lowercase().replace('_', "-")),
                ..Default::default()
            },
            spec,
            status: None,
        };
        self.state.store.create(&record).await.unwrap();
        // On Kubernetes the index learns of the key from its watch.
        let start = std::time::Instant::now();
        while self.state.keys.lookup(&key.hash).await.unwrap().is_none() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        key.plaintext
    }

    pub async fn key(&self, permissions: &[&str]) -> String {
        self.key_with(permissions, |_| {}).await
    }

    pub async fn call(
        &self,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        send(&self.state, path, key, body).await
    }

    pub async fn json(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(path, Some(key), Some(body.to_string().into_bytes()))
            .await
    }
}

/// Sends one request through the real router.
pub async fn send(
    state: &AppState,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    {
        let mut request = Request::post(path);
        if let Some(key) = key {
            request = request.header("X-Api-Key", key);
        }
        let request = match body {
            Some(body) => request
                .header("Content-Type", "application/json")
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("non-JSON body: {bytes:?}"));
        (status, value)
    }
}

fn assert_error(result: &(StatusCode, Value), status: StatusCode, needle: &str) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["success"], false, "{}", result.1);
    let message = result.1["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} lacks {needle:?}"
    );
}

async fn redeploy_records_a_deployment_and_the_annotation(backend: Backend) {
    let f = fixture(backend).await;
    let key = f.key(&["Hooks.Redeploy"]).await;
    let (status, body) = f
        .json("/api/hooks/redeploy", &key, json!({"stackName": "shop"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(
        body["message"],
        "Successfully triggered redeploy of 'shop'."
    );
    assert_eq!(body["stackName"], "shop");
    assert_eq!(body["stackVersion"], "6.4.0");
    let id = body["deploymentId"].as_str().unwrap();
    assert_eq!(body["statusUrl"], format!("/api/deployments/{id}"));
    let stack = f
        .state
        .store
        .require::<Stack>("local", "shop")
        .await
        .unwrap();
    let annotations = stack.metadata.annotations.unwrap();
    assert!(annotations.contains_key(REDEPLOY_ANNOTATION));
    assert_eq!(annotations[DEPLOYMENT_ANNOTATION], id);
    assert_eq!(
        stack.metadata.generation,
        Some(1),
        "a redeploy never edits the spec"
    );
    let record = f
        .state
        .store
        .require::<DeploymentRecord>("local", id)
        .await
        .unwrap();
    assert_eq!(record.spec.stack, "shop");
    let owner = &record.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Stack", "shop")
    );
    assert_eq!(Some(&owner.uid), stack.metadata.uid.as_ref());
    assert!(record.spec.requested_by.starts_with("key rsgo_"));
}

async fn upgrade_validates_versions_and_merges_variables(backend: Backend) {
    let f = fixture(backend).await;
    let key = f.key(&["Hooks.Upgrade"]).await;
    let unknown = f
        .json(
            "/api/hooks/upgrade",
            &key,
            json!({"stackName": "shop", "targetVersion": "9.9.9"}),
        )
        .await;
    assert_error(
        &unknown,
        StatusCode::BAD_REQUEST,
        "Available versions: 6.5.0, 6.4.0",
    );
    let same = f
        .json(
            "/api/hooks/upgrade",
            &key,
            json!({"stackName": "shop", "targetVersion": "6.4.0"}),
        )
        .await;
    assert_error(&same, StatusCode::BAD_REQUEST, "not newer");
    let not_semver = f
        .json(
            "/api/hooks/upgrade",
            &key,
            json!({"stackName": "shop", "targetVersion": "latest"}),
        )
        .await;
    assert_error(&not_semver, StatusCode::BAD_REQUEST, "not a SemVer version");
    let missing_var = f
        .json(
            "/api/hooks/upgrade",
            &key,
            json!({"stackName": "shop", "targetVersion": "6.5.0"}),
        )
        .await;
    assert_error(
        &missing_var,
        StatusCode::BAD_REQUEST,
        "'GREETING' is required",
    );

    let request =
        json!({"stackName": "shop", "targetVersion": "6.5.0", "variables": {"GREETING": "hi"}});
    let (status, body) = f.json("/api/hooks/upgrade", &key, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["message"],
        "Successfully upgraded 'shop' from 6.4.0 to 6.5.0."
    );
    assert_eq!(body["previousVersion"], "6.4.0");
    assert_eq!(body["newVersion"], "6.5.0");
    let stack = f
        .state
        .store
        .require::<Stack>("local", "shop")
        .await
        .unwrap();
    assert_eq!(stack.spec.version.as_deref(), Some("6.5.0"));
    assert_eq!(stack.spec.variables["TAG"], "2", "stored values are kept");
    assert_eq!(
        stack.spec.variables["GREETING"], "hi",
        "request values are added"
    );
    assert_eq!(stack.metadata.generation, Some(2));
    let id = body["deploymentId"].as_str().unwrap();
    let record = f
        .state
        .store
        .require::<DeploymentRecord>("local", id)
        .await
        .unwrap();
    assert_eq!(record.spec.from_version.as_deref(), Some("6.4.0"));
    assert_eq!(record.spec.previous_variables.unwrap()["TAG"], "2");
}

async fn unauthenticated_requests_get_401_with_the_reason(backend: Backend) {
    let f = fixture(backend).await;
    let body = Some(br#"{"stackName":"shop"}"#.to_vec());
    let path = "/api/hooks/redeploy";
    assert_error(
        &f.call(path, None, body.clone()).await,
        StatusCode::UNAUTHORIZED,
        "Missing API key",
    );
    assert_error(
        &f.call(path, Some("secret"), body.clone()).await,
        StatusCode::UNAUTHORIZED,
        "Malformed API key",
    );
    let stranger = auth::generate().plaintext;
    assert_error(
        &f.call(path, Some(&stranger), body.clone()).await,
        StatusCode::UNAUTHORIZED,
        "no such key",
    );

    let revoked = f.key_with(&["*"], |s| s.revoked = true).await;
    assert_error(
        &f.call(path, Some(&revoked), body.clone()).await,
        StatusCode::UNAUTHORIZED,
        "revoked",
    );
    let expired = f
        .key_with(&["*"], |s| {
            s.expires_at = Some(Timestamp::now() - SignedDuration::from_secs(1))
        })
        .await;
    assert_error(
        &f.call(path, Some(&expired), body.clone()).await,
        StatusCode::UNAUTHORIZED,
        "expired",
    );
    let future = f
        .key_with(&["*"], |s| {
            s.expires_at = Some(Timestamp::now() + SignedDuration::from_secs(3600))
        })
        .await;
    assert_eq!(f.call(path, Some(&future), body).await.0, StatusCode::OK);
}

async fn missing_permissions_and_foreign_environments_get_403(backend: Backend) {
    let f = fixture(backend).await;
    let redeploy_only = f.key(&["Hooks.Redeploy"]).await;
    let upgrade = json!({"stackName": "shop", "targetVersion": "6.5.0"});
    assert_error(
        &f.json("/api/hooks/upgrade", &redeploy_only, upgrade).await,
        StatusCode::FORBIDDEN,
        "Hooks.Upgrade",
    );
    assert_error(
        &f.call("/api/hooks/sync-sources", Some(&redeploy_only), None)
            .await,
        StatusCode::FORBIDDEN,
        "Hooks.SyncSources",
    );
    let scoped = f
        .key_with(&["Hooks.*"], |s| s.environment = Some("other".into()))
        .await;
    let foreign = json!({"stackName": "shop", "environmentId": "local"});
    assert_error(
        &f.json("/api/hooks/redeploy", &scoped, foreign).await,
        StatusCode::FORBIDDEN,
        "limited to environment 'other'",
    );
    // The scope is also the default: a scoped key naming no environment acts in its own.
    let own = f
        .json("/api/hooks/redeploy", &scoped, json!({"stackName": "shop"}))
        .await;
    assert_error(
        &own,
        StatusCode::BAD_REQUEST,
        "Stack 'shop' not found in environment 'other'",
    );
}

async fn bad_requests_get_400_and_oversized_bodies_413(backend: Backend) {
    let f = fixture(backend).await;
    let key = f.key(&["*"]).await;
    let path = "/api/hooks/redeploy";
    assert_error(
        &f.call(path, Some(&key), Some(b"{not json".to_vec())).await,
        StatusCode::BAD_REQUEST,
        "Invalid request body",
    );
    assert_error(
        &f.call(path, Some(&key), Some(b"{}".to_vec())).await,
        StatusCode::BAD_REQUEST,
        "missing field `stackName`",
    );
    assert_error(
        &f.call(path, Some(&key), None).await,
        StatusCode::BAD_REQUEST,
        "empty",
    );
    assert_error(
        &f.json(path, &key, json!({"stackName": "shop", "stack": "x"}))
            .await,
        StatusCode::BAD_REQUEST,
        "unknown field `stack`",
    );
    assert_error(
        &f.json(path, &key, json!({"stackName": "nope"})).await,
        StatusCode::BAD_REQUEST,
        "Stack 'nope' not found",
    );
    assert_error(
        &f.json(
            path,
            &key,
            json!({"stackName": "shop", "environmentId": "mars"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "Environment 'mars' not found",
    );
    let huge = format!("{{\"stackName\":\"{}\"}}", "x".repeat(1024 * 1024 + 1));
    assert_error(
        &f.call(path, Some(&key), Some(huge.into_bytes())).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "limit",
    );
}

/// Fifty redeploys at once: each is answered, and with no rollout started meanwhile they all
/// join one waiting deployment, whose id every answer carries.
async fn fifty_concurrent_redeploys_join_one_waiting_deployment(backend: Backend) {
    let f = fixture(backend).await;
    let key = f.key(&["Hooks.Redeploy"]).await;
    let calls = (0..50).map(|_| {
        let (state, key) = (f.state.clone(), key.clone());
        tokio::spawn(async move {
            let body = json!({"stackName": "shop"}).to_string().into_bytes();
            send(&state, "/api/hooks/redeploy", Some(&key), Some(body)).await
        })
    });
    let mut ids = Vec::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["deploymentId"].as_str().unwrap().to_owned());
    }
    let stored = f
        .state
        .store
        .list::<DeploymentRecord>(Some("local"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "one deployment serves them all");
    for id in &ids {
        assert!(
            stored
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(id.as_str())),
            "{id} missing"
        );
    }
    let stack = f
        .state
        .store
        .require::<Stack>("local", "shop")
        .await
        .unwrap();
    let last = &stack.metadata.annotations.unwrap()[DEPLOYMENT_ANNOTATION];
    assert!(
        ids.contains(last),
        "the stack names one of the recorded deployments"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let f = fixture(Backend::Sqlite).await;
    let (status, body) = f.call("/api/hooks/redeplyo", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["success"], false);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("/api/hooks/redeploy"),
        "{body}"
    );
    let request = Request::get("/api/hooks/redeploy")
        .body(Body::empty())
        .unwrap();
    let response = router(f.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["success"], false);
}

/// A narrow key can only set what a manifest declares, only as its type allows, and never
/// reach the host through a mount.
async fn upgrades_set_only_declared_and_valid_variables(backend: Backend) {
    let f = fixture(backend).await;
    let key = f.key(&["Hooks.Upgrade"]).await;
    let upgrade = |variables: Value| json!({"stackName": "shop", "targetVersion": "6.5.0", "variables": variables});
    let undeclared = f
        .json(
            "/api/hooks/upgrade",
            &key,
            upgrade(json!({"GREETING": "hi", "IMAGE": "evil/image", "DATA_DIR": "/"})),
        )
        .await;
    assert_error(
        &undeclared,
        StatusCode::BAD_REQUEST,
        "variable(s) DATA_DIR, IMAGE are not declared by shop 6.5.0",
    );
    f.add_manifest(
        "shop-6.6.0.yaml",
        "metadata: {name: Shop, productId: shop, productVersion: '6.6.0'}\nvariables:\n  \
         DATA_DIR: {type: Path, default: /srv/shop}\n  ADMIN: {type: Email, default: ops@example.com}\n\
         services:\n  web: {image: 'registry.invalid/web:1', volumes: ['${DATA_DIR}:/data']}\n",
    );
    let to_666 = |variables: Value| json!({"stackName": "shop", "targetVersion": "6.6.0", "variables": variables});
    let root = f
        .json("/api/hooks/upgrade", &key, to_666(json!({"DATA_DIR": "/"})))
        .await;
    assert_error(
        &root,
        StatusCode::BAD_REQUEST,
        "variable 'DATA_DIR' must name something below /",
    );
    let climb = f
        .json(
            "/api/hooks/upgrade",
            &key,
            to_666(json!({"DATA_DIR": "/srv/shop/../../etc"})),
        )
        .await;
    assert_error(&climb, StatusCode::BAD_REQUEST, "must not climb with '..'");
    let email = f
        .json(
            "/api/hooks/upgrade",
            &key,
            to_666(json!({"ADMIN": "nobody"})),
        )
        .await;
    assert_error(&email, StatusCode::BAD_REQUEST, "must be an e-mail address");
    let mount = f.json("/api/hooks/upgrade", &key, to_666(json!({}))).await;
    assert_error(
        &mount,
        StatusCode::BAD_REQUEST,
        "service 'web' mounts host path '/srv/shop', outside the host paths environment 'local' allows (none); add it to spec.docker.allowedHostPaths",
    );
    let stack = f
        .state
        .store
        .require::<Stack>("local", "shop")
        .await
        .unwrap();
    assert_eq!(
        stack.spec.version.as_deref(),
        Some("6.4.0"),
        "nothing refused was stored"
    );
    assert!(
        f.state
            .store
            .list::<DeploymentRecord>(None)
            .await
            .unwrap()
            .is_empty()
    );
}

/// "Newer" means newer than what the stack is asked to run, even while an earlier upgrade is
/// still rolling out.
async fn upgrades_never_go_below_the_desired_version(backend: Backend) {
    let f = fixture(backend).await;
    let key = f.key(&["Hooks.Upgrade"]).await;
    let mut stack = f
        .state
        .store
        .require::<Stack>("local", "shop")
        .await
        .unwrap();
    stack.status = Some(rsgo::model::StackStatus {
        deployed_version: Some("6.4.0".into()),
        ..Default::default()
    });
    f.state.store.update_status(&stack).await.unwrap();
    let first = f
        .json(
            "/api/hooks/upgrade",
            &key,
            json!({"stackName": "shop", "targetVersion": "6.5.0", "variables": {"GREETING": "hi"}}),
        )
        .await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    f.add_manifest("shop-6.4.5.yaml", &manifest("6.4.5", false));
    let back = f
        .json(
            "/api/hooks/upgrade",
            &key,
            json!({"stackName": "shop", "targetVersion": "6.4.5"}),
        )
        .await;
    assert_error(
        &back,
        StatusCode::BAD_REQUEST,
        "is at 6.5.0; targetVersion 6.4.5 is not newer",
    );
    let doubled = f
        .json(
            "/api/hooks/upgrade",
            &key,
            json!({"stackName": "shop", "targetVersion": "vv6.6.0"}),
        )
        .await;
    assert_error(&doubled, StatusCode::BAD_REQUEST, "is not a SemVer version");
}

/// Names that become container, network or workload names, and specs rsgo acts on, are checked
/// wherever they are written.
async fn names_and_specs_are_checked_at_the_store_boundary(backend: Backend) {
    let f = fixture(backend).await;
    let store = &f.state.store;
    let mut evil = store.require::<Stack>("local", "shop").await.unwrap();
    evil.metadata = ObjectMeta {
        name: Some("../../etc/evil".into()),
        namespace: Some("local".into()),
        ..Default::default()
    };
    let refused = store.create(&evil).await.unwrap_err().to_string();
    assert!(
        refused.contains("Stack '../../etc/evil' is not a valid name"),
        "{refused}"
    );
    for bad in ["Shop", "shop_1", "-shop", &"s".repeat(64)] {
        evil.metadata.name = Some(bad.to_owned());
        assert!(store.create(&evil).await.is_err(), "{bad}");
    }
    let mut ftp = env("staging");
    ftp.spec.docker.as_mut().unwrap().host = "ftp://example.com:21".into();
    let refused = store.create(&ftp).await.unwrap_err().to_string();
    assert!(refused.contains("not an engine address"), "{refused}");
    let mut key = ApiKey::new(
        "weak",
        ApiKeySpec {
            display_name: "weak".into(),
            key_hash: "not-a-hash".into(),
            prefix: "rsgo_abcd".into(),
            permissions: vec![Permission::Redeploy],
            ..Default::default()
        },
    );
    let refused = store.create(&key).await.unwrap_err().to_string();
    assert!(refused.contains("SHA-256"), "{refused}");
    key.spec.key_hash = auth::hash("rsgo_x");
    let mut unknown = encode(&key).unwrap();
    unknown["spec"]["permissions"] = json!(["Hooks.Everything"]);
    let refused = store
        .write(vec![Write::Create(unknown)])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("Hooks.Everything"), "{refused}");
    assert_eq!(
        store.list::<Stack>(None).await.unwrap().len(),
        1,
        "nothing was stored"
    );
}

/// Bodies must be JSON objects; an id in a path that does not decode, an over-long target and an
/// over-large head all get JSON errors; an unknown environment is only listed to keys that may
/// act on every environment.
async fn malformed_requests_get_json_errors_that_leak_nothing(backend: Backend) {
    let f = fixture(backend).await;
    let key = f.key(&["*"]).await;
    let array = f
        .call(
            "/api/hooks/redeploy",
            Some(&key),
            Some(br#"["shop"]"#.to_vec()),
        )
        .await;
    assert_error(&array, StatusCode::BAD_REQUEST, "send a JSON object");
    let scoped = f
        .key_with(&["Hooks.*"], |s| s.environment = Some("gone".into()))
        .await;
    let unknown = f
        .json("/api/hooks/redeploy", &scoped, json!({"stackName": "shop"}))
        .await;
    assert_error(
        &unknown,
        StatusCode::BAD_REQUEST,
        "Environment 'gone' not found.",
    );
    let message = unknown.1["message"].as_str().unwrap();
    assert!(
        !message.contains("local") && !message.contains("other"),
        "{message}"
    );
    for (uri, status, needle) in [
        (
            "/api/deployments/%FF%FE".to_owned(),
            StatusCode::BAD_REQUEST,
            "not valid",
        ),
        (
            format!("/api/deployments/{}", "x".repeat(9000)),
            StatusCode::URI_TOO_LONG,
            "longer than",
        ),
    ] {
        let request = Request::get(uri.as_str())
            .header("X-Api-Key", &key)
            .body(Body::empty())
            .unwrap();
        let response = router(f.state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{uri}");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).expect("a JSON body");
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
    }
    let request = Request::post("/api/hooks/sync-sources")
        .header("X-Api-Key", &key)
        .header("X-Padding", "p".repeat(40 * 1024))
        .body(Body::empty())
        .unwrap();
    let response = router(f.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

/// A returned id is looked up by name, not by listing every record; keys see only the records
/// of environments they may act on.
async fn deployment_records_are_found_by_id(backend: Backend) {
    let f = fixture(backend).await;
    let key = f.key(&["Hooks.Redeploy"]).await;
    let (status, body) = f
        .json("/api/hooks/redeploy", &key, json!({"stackName": "shop"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["deploymentId"].as_str().unwrap();
    let get = |key: String, id: String| {
        let state = f.state.clone();
        async move {
            let request = Request::get(format!("/api/deployments/{id}"))
                .header("X-Api-Key", key)
                .body(Body::empty())
                .unwrap();
            let response = router(state).oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let (status, record) = get(key.clone(), id.to_owned()).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(
        (record["stackName"].as_str(), record["action"].as_str()),
        (Some("shop"), Some("Redeploy"))
    );
    let elsewhere = f
        .key_with(&["Hooks.Redeploy"], |s| {
            s.environment = Some("other".into())
        })
        .await;
    assert_eq!(get(elsewhere, id.to_owned()).await.0, StatusCode::NOT_FOUND);
    for missing in [
        "0123456789abcdef01234567",
        "a,metadata.namespace=local",
        "UPPER",
    ] {
        assert_eq!(
            get(key.clone(), missing.to_owned()).await.0,
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }
}

/// Runs each hook test on both stores.
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn sqlite() {
                super::$test(super::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn kubernetes() {
                super::$test(super::Backend::Kubernetes).await
            }
        }
    )*};
}

on_both_stores!(
    redeploy_records_a_deployment_and_the_annotation,
    upgrade_validates_versions_and_merges_variables,
    unauthenticated_requests_get_401_with_the_reason,
    missing_permissions_and_foreign_environments_get_403,
    bad_requests_get_400_and_oversized_bodies_413,
    fifty_concurrent_redeploys_join_one_waiting_deployment,
    upgrades_set_only_declared_and_valid_variables,
    upgrades_never_go_below_the_desired_version,
    names_and_specs_are_checked_at_the_store_boundary,
    malformed_requests_get_json_errors_that_leak_nothing,
    deployment_records_are_found_by_id
);

/// The top-level keys of a JSON object, in the order they were written.
fn keys_in_order(raw: &[u8]) -> Vec<String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                keys.push(key);
            }
            Ok(keys)
        }
    }
    let mut reader = serde_json::Deserializer::from_slice(raw);
    serde::Deserializer::deserialize_map(&mut reader, Keys).unwrap()
}

/// Sends a request and returns the raw body.
async fn raw(
    state: &AppState,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> Vec<u8> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("X-Api-Key", key)
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = router(state.clone()).oneshot(request).await.unwrap();
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn responses_list_their_fields_in_the_documented_order() {
    let f = fixture(Backend::Sqlite).await;
    let key = f.key(&["*"]).await;
    let redeploy = raw(
        &f.state,
        "POST",
        "/api/hooks/redeploy",
        &key,
        Some(json!({"stackName": "shop"})),
    )
    .await;
    assert_eq!(
        keys_in_order(&redeploy),
        [
            "success",
            "message",
            "deploymentId",
            "stackName",
            "stackVersion",
            "statusUrl"
        ]
    );
    let upgrade = raw(
        &f.state,
        "POST",
        "/api/hooks/upgrade",
        &key,
        Some(
            json!({"stackName": "shop", "targetVersion": "6.5.0", "variables": {"GREETING": "hi"}}),
        ),
    )
    .await;
    assert_eq!(
        keys_in_order(&upgrade),
        [
            "success",
            "message",
            "deploymentId",
            "previousVersion",
            "newVersion",
            "statusUrl"
        ]
    );
    let sync = raw(&f.state, "POST", "/api/hooks/sync-sources", &key, None).await;
    assert_eq!(
        keys_in_order(&sync),
        ["success", "stacksLoaded", "sourcesSynced", "message"],
        "as the contract lists them"
    );
    let id: Value = serde_json::from_slice(&redeploy).unwrap();
    let record = raw(
        &f.state,
        "GET",
        &format!("/api/deployments/{}", id["deploymentId"].as_str().unwrap()),
        &key,
        None,
    )
    .await;
    let keys = keys_in_order(&record);
    assert_eq!(
        &keys[..4],
        ["success", "message", "deploymentId", "stackName"]
    );
    let error = raw(
        &f.state,
        "POST",
        "/api/hooks/redeploy",
        &key,
        Some(json!({"stackName": "nope"})),
    )
    .await;
    assert_eq!(keys_in_order(&error), ["success", "message"]);
}
