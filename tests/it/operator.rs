//! The operator's side, end to end: the admin API and who may use it, the audit trail, metrics,
//! HTTPS, and `rsgo hook` following a rollout from a pipeline.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Server, build_and_push, curl, free_port, registry, rsgo_ok, unique, wait_for,
};

fn manifest(product: &str, version: &str, image: &str) -> String {
    format!(
        "metadata:\n  name: {product}\n  productVersion: \"{version}\"\nservices:\n  web:\n    image: {image}\n"
    )
}

fn stack_yaml(name: &str, env: &str, product: &str) -> String {
    format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec:\n  environment: {env}\n  product: {product}\n"
    )
}

/// A server with one product whose 1.0.0 runs and whose 2.0.0 names an image that does not
/// exist, and one stack of it running 1.0.0.
fn server_with_stack() -> (Server, String) {
    let good = format!("{}/{}/app:latest", registry(), unique("op"));
    build_and_push(&good, "v1");
    let missing = format!("{}/{}/absent:latest", registry(), unique("op"));
    let product = unique("shop");
    let server = Server::start(&[
        ("a.yaml", manifest(&product, "1.0.0", &good)),
        ("b.yaml", manifest(&product, "2.0.0", &missing)),
    ]);
    let stack = unique("st");
    server.apply(&format!(
        "{}  version: \"1.0.0\"\n",
        stack_yaml(&stack, &server.environment, &product)
    ));
    server.wait_phase(&stack, "Running");
    (server, stack)
}

fn get(server: &Server, path: &str, key: Option<&str>) -> (u16, Value) {
    curl("GET", &format!("{}{path}", server.url), key, None).expect("curl runs")
}

fn send(server: &Server, method: &str, path: &str, key: &str, body: Option<&str>) -> (u16, Value) {
    curl(method, &format!("{}{path}", server.url), Some(key), body).expect("curl runs")
}

#[test]
fn every_admin_route_needs_an_admin_key_and_keys_are_managed_through_it() {
    let (server, stack) = server_with_stack();
    let env = server.environment.clone();
    let admin = server.key(&["Admin"]);
    let hooks = server.key(&["Hooks.*"]);
    let everything = server.key(&["*"]);
    let id = {
        let body = json!({"stackName": stack, "environmentId": env}).to_string();
        let (status, reply) = server.hook("/api/hooks/redeploy", &hooks, Some(&body));
        assert_eq!(status, 200, "{reply}");
        reply["deploymentId"].as_str().unwrap().to_owned()
    };
    server.wait_deployment(&hooks, &id);
    let reads = [
        "/api/v1/apikeys".to_owned(),
        "/api/v1/stacks".to_owned(),
        format!("/api/v1/stacks/{env}/{stack}"),
        "/api/v1/environments".to_owned(),
        "/api/v1/catalogsources".to_owned(),
        format!("/api/v1/deployments?stack={stack}"),
        format!("/api/v1/deployments/{id}"),
        "/api/v1/audit".to_owned(),
    ];
    let changes = [
        (
            "POST",
            "/api/v1/apikeys",
            Some(r#"{"name":"x","permissions":["Hooks.Redeploy"]}"#),
        ),
        ("POST", "/api/v1/apikeys/x/revoke", None),
        ("DELETE", "/api/v1/apikeys/x", None),
    ];
    for path in &reads {
        let (status, body) = get(&server, path, None);
        assert_eq!(
            (status, body["success"].clone()),
            (401, json!(false)),
            "{path}: {body}"
        );
        for key in [&hooks, &everything] {
            let (status, body) = get(&server, path, Some(key));
            assert_eq!(status, 403, "{path}: {body}");
            assert!(
                body["message"].as_str().unwrap().contains("'Admin'"),
                "{body}"
            );
        }
        let (status, body) = get(&server, path, Some(&admin));
        assert_eq!(
            (status, body["success"].clone()),
            (200, json!(true)),
            "{path}: {body}"
        );
    }
    for (method, path, body) in changes {
        assert_eq!(send(&server, method, path, "rsgo_", body).0, 401, "{path}");
        assert_eq!(
            send(&server, method, path, &everything, body).0,
            403,
            "{path}"
        );
    }

    // What the reads say.
    let (_, stacks) = get(&server, "/api/v1/stacks", Some(&admin));
    assert!(
        stacks["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metadata"]["name"] == stack.as_str() && s["status"]["phase"] == "Running"),
        "{stacks}"
    );
    let (_, one) = get(
        &server,
        &format!("/api/v1/stacks/{env}/{stack}"),
        Some(&admin),
    );
    assert_eq!(
        one["deployments"][0]["metadata"]["name"],
        id.as_str(),
        "{one}"
    );
    assert_eq!(
        get(&server, &format!("/api/v1/stacks/{env}/nope"), Some(&admin)).0,
        404
    );
    let (_, records) = get(
        &server,
        &format!("/api/v1/deployments?stack={stack}&limit=1"),
        Some(&admin),
    );
    assert_eq!(records["items"].as_array().unwrap().len(), 1, "{records}");
    assert_eq!(
        get(&server, "/api/v1/deployments?limit=0", Some(&admin)).0,
        400
    );
    assert_eq!(
        get(&server, "/api/v1/deployments?color=red", Some(&admin)).0,
        400
    );
    let (_, record) = get(&server, &format!("/api/v1/deployments/{id}"), Some(&admin));
    assert_eq!(
        record["deployment"]["status"]["phase"], "Succeeded",
        "{record}"
    );
    let (_, envs) = get(&server, "/api/v1/environments", Some(&admin));
    assert!(
        envs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["metadata"]["name"] == env.as_str())
    );
    let (_, sources) = get(&server, "/api/v1/catalogsources", Some(&admin));
    assert!(
        !sources["items"].as_array().unwrap().is_empty(),
        "{sources}"
    );

    // Creating a key: shown once, refused when invalid, never listed with its secret.
    let create = |body: Value| {
        send(
            &server,
            "POST",
            "/api/v1/apikeys",
            &admin,
            Some(&body.to_string()),
        )
    };
    let (status, created) = create(json!({
        "name": "Release pipeline", "permissions": ["Hooks.Redeploy", "Hooks.Upgrade"],
        "expiresAt": "2099-01-01T00:00:00Z", "environment": env,
    }));
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("rsgo_") && key.len() == 37, "{created}");
    assert_eq!(created["name"], "release-pipeline");
    assert_eq!(created["prefix"], &key[..9]);
    for (body, status, says) in [
        (
            json!({"name": "Release pipeline", "permissions": ["Hooks.Redeploy"]}),
            409,
            "already exists",
        ),
        (
            json!({"name": "p", "permissions": ["Hooks.Deploy"]}),
            400,
            "Hooks.Deploy",
        ),
        (
            json!({"name": "p", "permissions": []}),
            400,
            "at least one permission",
        ),
        (
            json!({"name": "p", "permissions": ["Admin"], "environment": env}),
            400,
            "cannot be limited",
        ),
        (
            json!({"name": "p", "permissions": ["Hooks.Redeploy"], "environment": "nowhere"}),
            400,
            "does not exist",
        ),
        (
            json!({"name": "p", "permissions": ["Hooks.Redeploy"], "expiresAt": "2001-01-01T00:00:00Z"}),
            400,
            "in the past",
        ),
        (
            json!({"name": "***", "permissions": ["Hooks.Redeploy"]}),
            400,
            "letter or digit",
        ),
        (
            json!({"name": "p", "permissions": ["Hooks.Redeploy"], "owner": "me"}),
            400,
            "owner",
        ),
    ] {
        let (code, reply) = create(body.clone());
        assert_eq!(code, status, "{body}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(says),
            "{body}: {reply}"
        );
    }
    let (_, listed) = get(&server, "/api/v1/apikeys", Some(&admin));
    let text = listed.to_string();
    assert!(
        !text.contains(&key) && !text.contains("keyHash"),
        "{listed}"
    );
    let mine = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "release-pipeline")
        .unwrap();
    assert_eq!(mine["state"], "active");
    assert_eq!(
        mine["permissions"],
        json!(["Hooks.Redeploy", "Hooks.Upgrade"])
    );

    // The new key works on a hook, until it is revoked.
    let body = json!({"stackName": stack, "environmentId": env}).to_string();
    assert_eq!(server.hook("/api/hooks/redeploy", &key, Some(&body)).0, 200);
    let (status, reply) = send(
        &server,
        "POST",
        "/api/v1/apikeys/release-pipeline/revoke",
        &admin,
        Some(r#"{"reason":"rotated"}"#),
    );
    assert_eq!(
        (status, reply["state"].clone()),
        (200, json!("revoked")),
        "{reply}"
    );
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 401);
    assert_eq!(reply["message"], "API key has been revoked.");
    for (method, path, status) in [
        ("POST", "/api/v1/apikeys/release-pipeline/revoke", 200),
        ("DELETE", "/api/v1/apikeys/release-pipeline", 200),
        ("DELETE", "/api/v1/apikeys/release-pipeline", 404),
        ("POST", "/api/v1/apikeys/Bad%20Name/revoke", 404),
    ] {
        assert_eq!(
            send(&server, method, path, &admin, None).0,
            status,
            "{method} {path}"
        );
    }

    // The audit trail has every change and refusal, with actors, and no key material.
    let (_, audit) = get(&server, "/api/v1/audit?limit=1000", Some(&admin));
    let entries = audit["items"].as_array().unwrap();
    let has = |action: &str, actor: &str, outcome: &str| {
        entries.iter().any(|e| {
            e["spec"]["action"] == action
                && e["spec"]["actor"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with(actor)
                && e["spec"]["outcome"] == outcome
        })
    };
    for (action, actor, outcome) in [
        ("apikey.create", "cli", "Succeeded"),
        ("apikey.create", "key", "Succeeded"),
        ("apikey.create", "key", "Refused"),
        ("apikey.revoke", "key", "Succeeded"),
        ("apikey.delete", "key", "Succeeded"),
        ("hook.redeploy", "key", "Succeeded"),
        ("hook.redeploy", "Release pipeline", "Succeeded"),
        ("hook.redeploy", "unknown", "Refused"),
        ("apikey.read", "unknown", "Refused"),
        ("apikey.read", "key", "Refused"),
    ] {
        assert!(
            has(action, actor, outcome),
            "no {action} by {actor} {outcome} in {audit:#}"
        );
    }
    let redeploy = entries
        .iter()
        .find(|e| e["spec"]["actor"]["name"] == "Release pipeline")
        .unwrap();
    assert_eq!(redeploy["spec"]["target"], format!("{env}/{stack}"));
    assert_eq!(redeploy["spec"]["actor"]["keyPrefix"], &key[..9]);
    assert_eq!(redeploy["spec"]["actor"]["address"], "127.0.0.1");
    let everything_logged = format!("{audit}{}", server.log());
    for secret in [&key, &admin, &hooks, &everything] {
        assert!(!everything_logged.contains(secret.as_str()), "a key leaked");
    }
    // The same trail on the command line, and filtered.
    let table = server.cli(&["audit", "--action", "apikey.", "--limit", "100"]);
    assert!(
        table.contains("apikey.revoke") && !table.contains("hook.redeploy"),
        "{table}"
    );
    // Entries are never changed, not even by applying one.
    let first = entries.last().unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = server.data.path().join("audit.yaml");
    std::fs::write(&file, format!("apiVersion: rsgo.io/v1alpha1\nkind: AuditEvent\nmetadata: {{name: \"{first}\"}}\nspec: {{}}\n")).unwrap();
    let refused = crate::support::rsgo(server.data_dir(), &["apply", "-f", file.to_str().unwrap()]);
    assert!(!refused.status.success());
}

/// The value of the sample `name` with `labels`, or 0 when absent.
fn sample(metrics: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.last().map_or(0.0, |b| b.count)
            }
            _ => 0.0,
        })
        .sum()
}

fn scrape(server: &Server) -> prometheus_parse::Scrape {
    let output = Command::new("curl")
        .args(["-sf", &format!("{}/metrics", server.url)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format")
}

#[test]
fn metrics_parse_and_count_hooks_refusals_reconciles_and_rollouts() {
    let (server, stack) = server_with_stack();
    let before = scrape(&server);
    let hooks = server.key(&["Hooks.Redeploy"]);
    let route = [("route", "/api/hooks/redeploy"), ("status", "401")];
    for _ in 0..3 {
        assert_eq!(
            server.hook("/api/hooks/redeploy", "rsgo_", Some("{}")).0,
            401
        );
    }
    let body = json!({"stackName": stack, "environmentId": server.environment}).to_string();
    let (_, reply) = server.hook("/api/hooks/redeploy", &hooks, Some(&body));
    server.wait_deployment(&hooks, reply["deploymentId"].as_str().unwrap());
    let after = wait_for("the rollout to be counted", Duration::from_secs(30), || {
        let after = scrape(&server);
        let done = [("action", "Redeploy"), ("outcome", "Succeeded")];
        (sample(&after, "rsgo_rollouts_total", &done)
            > sample(&before, "rsgo_rollouts_total", &done))
        .then_some(after)
    });
    assert_eq!(
        sample(&after, "rsgo_hook_requests_total", &route)
            - sample(&before, "rsgo_hook_requests_total", &route),
        3.0
    );
    let ok = [("route", "/api/hooks/redeploy"), ("status", "200")];
    assert_eq!(sample(&after, "rsgo_hook_requests_total", &ok), 1.0);
    let malformed = [("reason", "malformed key")];
    assert_eq!(
        sample(&after, "rsgo_auth_failures_total", &malformed)
            - sample(&before, "rsgo_auth_failures_total", &malformed),
        3.0
    );
    assert!(
        sample(&after, "rsgo_reconciles_total", &[("result", "ok")])
            > sample(&before, "rsgo_reconciles_total", &[("result", "ok")])
    );
    assert!(
        sample(
            &after,
            "rsgo_hook_request_duration_seconds",
            &[("route", "/api/hooks/redeploy")]
        ) >= 4.0
    );
    assert_eq!(sample(&after, "rsgo_leader", &[]), 1.0);
    assert!(sample(&after, "rsgo_catalog_syncs_total", &[("result", "ok")]) >= 1.0);
}

/// `rsgo hook` with the server and key in its environment.
fn hook_cli(server: &Server, key: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rsgo"))
        .arg("hook")
        .args(args)
        .env("RSGO_URL", &server.url)
        .env("RSGO_API_KEY", key)
        .env("RSGO_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn rsgo_hook_follows_the_rollout_and_fails_with_it() {
    let (server, stack) = server_with_stack();
    let key = server.key(&["Hooks.*"]);
    let env = server.environment.clone();
    let ok = hook_cli(
        &server,
        &key,
        &["redeploy", "--stack", &stack, "--environment", &env],
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.contains(": Running") && out.contains(": Succeeded"),
        "{out}"
    );
    assert!(out.contains("  web: recreated"), "{out}");

    // An upgrade whose image cannot be pulled fails, and so does the pipeline step.
    let failed = hook_cli(
        &server,
        &key,
        &[
            "upgrade",
            "--stack",
            &stack,
            "--environment",
            &env,
            "--version",
            "2.0.0",
        ],
    );
    let (out, err) = (
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr),
    );
    assert!(!failed.status.success(), "{out}");
    assert!(
        err.contains("ended RolledBack") && err.contains("absent"),
        "{out}{err}"
    );

    // Refusals fail at once with the server's reason; the key is never an argument.
    let refused = hook_cli(
        &server,
        &server.key(&["Hooks.SyncSources"]),
        &["redeploy", "--stack", &stack],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("lacks the permission 'Hooks.Redeploy'")
    );
    let unset = Command::new(env!("CARGO_BIN_EXE_rsgo"))
        .args(["hook", "sync-sources"])
        .env_remove("RSGO_URL")
        .env_remove("RSGO_API_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unset.stderr).contains("RSGO_URL is not set"));
    let synced = hook_cli(&server, &key, &["sync-sources"]);
    assert!(
        synced.status.success(),
        "{}",
        String::from_utf8_lossy(&synced.stderr)
    );

    // The events themselves: a stream that ends with the final phase.
    let body = json!({"stackName": stack, "environmentId": env}).to_string();
    let (_, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    let id = reply["deploymentId"].as_str().unwrap();
    let stream = Command::new("curl")
        .args([
            "-sN",
            "-D",
            "-",
            "--max-time",
            "120",
            "-H",
            &format!("X-Api-Key: {key}"),
        ])
        .arg(format!("{}/api/v1/deployments/{id}/events", server.url))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stream.stdout);
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    let last = text.lines().rfind(|l| l.starts_with("data:")).unwrap();
    let last: Value = serde_json::from_str(last.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(last["phase"], "Succeeded", "{text}");
    assert_eq!(
        curl(
            "GET",
            &format!("{}/api/v1/deployments/{id}/events", server.url),
            None,
            None
        )
        .unwrap()
        .0,
        401
    );
}

#[test]
fn https_is_served_with_a_certificate_made_here_and_a_renewed_one_is_picked_up() {
    use rcgen::{CertificateParams, KeyPair};
    /// A self-signed certificate for 127.0.0.1 and its key, as PEM.
    fn self_signed() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
    /// Kills the server however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dir = tempfile::TempDir::new().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (first_cert, first_key) = self_signed();
    std::fs::write(&cert_file, &first_cert).unwrap();
    std::fs::write(&key_file, &first_key).unwrap();
    let first_ca = dir.path().join("first.pem");
    std::fs::write(&first_ca, &first_cert).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let api_key = rsgo_ok(
        &data,
        &[
            "apikey",
            "create",
            "--name",
            "sync",
            "--permission",
            "Hooks.SyncSources",
        ],
    );
    let port = free_port();
    let _server = Running(
        Command::new(env!("CARGO_BIN_EXE_rsgo"))
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(&cert_file)
            .arg("--tls-key")
            .arg(&key_file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}");
    let trusted_by = |ca: &std::path::Path| {
        Command::new("curl")
            .args([
                "-s",
                "--cacert",
                ca.to_str().unwrap(),
                &format!("{url}/readyz"),
            ])
            .output()
            .is_ok_and(|out| out.status.success() && out.stdout == b"ready")
    };
    wait_for("rsgo to serve HTTPS", Duration::from_secs(30), || {
        trusted_by(&first_ca).then_some(())
    });
    // Plain HTTP to the HTTPS port gets no answer; an unknown CA is refused by the client.
    let plain = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/healthz")])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    let untrusted = Command::new("curl")
        .args(["-s", &format!("{url}/healthz")])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    // `rsgo hook` trusts the certificate through SSL_CERT_FILE.
    let synced = Command::new(env!("CARGO_BIN_EXE_rsgo"))
        .args(["hook", "sync-sources"])
        .env("RSGO_URL", &url)
        .env("RSGO_API_KEY", &api_key)
        .env("SSL_CERT_FILE", &first_ca)
        .output()
        .unwrap();
    assert!(
        synced.status.success(),
        "{}",
        String::from_utf8_lossy(&synced.stderr)
    );

    // A renewed pair is served without a restart.
    let (second_cert, second_key) = self_signed();
    let second_ca = dir.path().join("second.pem");
    std::fs::write(&second_ca, &second_cert).unwrap();
    std::fs::write(&key_file, &second_key).unwrap();
    std::fs::write(&cert_file, &second_cert).unwrap();
    wait_for("the renewed certificate", Duration::from_secs(30), || {
        trusted_by(&second_ca).then_some(())
    });
    assert!(!trusted_by(&first_ca), "the old certificate is gone");
    // A broken file keeps the last good pair serving.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    std::thread::sleep(Duration::from_secs(7));
    assert!(trusted_by(&second_ca));
}

#[test]
fn the_ci_examples_follow_rollouts_with_rsgo_hook_and_keep_the_key_in_secrets() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(yaml.is_mapping(), "{}", path.display());
        assert!(
            text.contains("rsgo:0.1.0") && text.contains(" hook "),
            "{}",
            path.display()
        );
        assert!(
            text.contains("-e RSGO_API_KEY"),
            "the key goes in by name: {}",
            path.display()
        );
        assert!(!text.contains("rsgo_"), "no key in {}", path.display());
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    seen.sort();
    assert_eq!(
        seen,
        ["azure-pipelines.yml", "github-actions.yml", "gitlab-ci.yml"]
    );
}
