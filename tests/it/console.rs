//! The web console in a real headless Chromium, driven by tests/console/drive.py (Selenium with
//! Debian's chromium and chromedriver, which `scripts/test.sh` installs). Screenshots of every
//! page are kept in `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{Server, build_and_push, curl, registry, unique};

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("the console run stopped before '{name}': {report:#}"))
}

#[test]
fn an_operator_manages_keys_and_watches_a_deployment_in_the_console() {
    // A service that becomes healthy after a few seconds, so each rollout is visibly Running.
    let image = format!("{}/{}/app:latest", registry(), unique("console"));
    build_and_push(&image, "v1");
    let product = unique("shop");
    let manifest = format!(
        "metadata:\n  name: {product}\n  productVersion: \"1.0.0\"\nservices:\n  web:\n    image: {image}\n\
         \x20   command: [sh, -c, \"sleep 3; touch /ready; trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
         \x20   healthCheck: {{test: [test, -f, /ready], interval: 1s, timeout: 1s, retries: 10}}\n"
    );
    let server = Server::start(&[("shop.yaml", manifest)]);
    let stack = unique("st");
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  environment: {}\n  product: {product}\n",
        server.environment
    ));
    server.wait_phase(&stack, "Running");
    let admin = server.key(&["Admin"]);
    let hooks_only = server.key(&["Hooks.*"]);

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let python =
        std::env::var("RSGO_TEST_PYTHON").expect("RSGO_TEST_PYTHON is set by scripts/test.sh");
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/console/drive.py"
        ))
        .args([
            &server.url,
            &admin,
            &hooks_only,
            &stack,
            &server.environment,
        ])
        .arg(&shots)
        .output()
        .expect("running the console driver");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "no report: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        output.status.success() && report["error"].is_null(),
        "{report:#}"
    );

    assert!(
        step(&report, "refused non-admin")["message"]
            .as_str()
            .unwrap()
            .contains("lacks the Admin permission")
    );
    let stacks = step(&report, "stacks");
    assert!(
        stacks["row"].as_str().unwrap().contains("Running"),
        "{stacks}"
    );
    assert_eq!(
        stacks["stored_in_session"], true,
        "the key stays in sessionStorage only"
    );

    let created = step(&report, "key created");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("rsgo_") && key.len() == 37, "{created}");
    let row = created["row"].as_str().unwrap();
    for part in [
        "Console CI",
        "Hooks.Redeploy, Hooks.Upgrade",
        "2099",
        "active",
        "Never",
    ] {
        assert!(row.contains(part), "{part} in {row}");
    }
    assert!(
        created["warning"]
            .as_str()
            .unwrap()
            .contains("shown only this once")
    );
    assert_eq!(step(&report, "key not shown again")["in_page"], false);

    let used = step(&report, "hook with the new key");
    assert_eq!(used["status"], 200, "{used}");
    let live = step(&report, "deployment live");
    let phases: Vec<&str> = live["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(phases.last(), Some(&"Succeeded"), "{live}");
    assert!(
        phases.contains(&"Running"),
        "the phase changed in place while the page stayed open: {live}"
    );
    assert_eq!(live["reloaded"], false);
    assert!(
        live["row"].as_str().unwrap().contains("web: recreated"),
        "{live}"
    );

    let refused = step(&report, "hook after revoke");
    assert_eq!(
        (
            refused["status"].clone(),
            refused["answer"]["message"].clone()
        ),
        (json!(401), json!("API key has been revoked."))
    );
    let audit_page = step(&report, "audit page")["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        audit_page.contains("apikey.create") && audit_page.contains("apikey.revoke"),
        "{audit_page}"
    );
    assert!(step(&report, "signed out")["key_kept"].is_null());

    // The audit trail holds every action of the run, with actors and no key material.
    let (_, audit) = curl(
        "GET",
        &format!("{}/api/v1/audit?limit=1000", server.url),
        Some(&admin),
        None,
    )
    .unwrap();
    let entries = audit["items"].as_array().unwrap();
    let find = |action: &str, actor: &str, outcome: &str| {
        entries.iter().any(|e| {
            e["spec"]["action"] == action
                && e["spec"]["actor"]["name"] == actor
                && e["spec"]["outcome"] == outcome
        })
    };
    let admin_name = entries
        .iter()
        .find(|e| e["spec"]["action"] == "apikey.create" && e["spec"]["target"] == "console-ci")
        .map(|e| e["spec"]["actor"]["name"].as_str().unwrap().to_owned())
        .expect("the console's key creation is audited");
    assert!(admin_name.starts_with("key"), "{admin_name}");
    assert!(find("apikey.revoke", &admin_name, "Succeeded"), "{audit:#}");
    assert!(
        find("hook.redeploy", "Console CI", "Succeeded"),
        "{audit:#}"
    );
    assert!(find("hook.redeploy", "unknown", "Refused"), "{audit:#}");
    assert!(
        entries
            .iter()
            .any(|e| e["spec"]["action"] == "apikey.read" && e["spec"]["statusCode"] == 403),
        "the sign-in with a key lacking Admin is audited: {audit:#}"
    );
    let everything = format!("{audit}{}", server.log());
    for secret in [&key, &admin, &hooks_only] {
        assert!(!everything.contains(secret.as_str()), "a key leaked");
    }

    // Every page was photographed.
    for name in [
        "01-sign-in",
        "02-stacks",
        "03-create-key-form",
        "04-key-shown-once",
        "05-deployment-running",
        "06-deployment-done",
        "07-revoke-confirm",
        "08-key-revoked",
        "09-audit",
    ] {
        let file = shots.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&file).is_ok_and(|m| m.len() > 1000),
            "{}",
            file.display()
        );
    }
}

#[test]
fn the_console_is_served_offline_with_a_strict_policy() {
    let server = Server::start(&[]);
    let output = Command::new("curl")
        .args(["-s", "-D", "-", &format!("{}/", server.url)])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&output.stdout).to_lowercase();
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(page.contains("x-content-type-options: nosniff"));
    // Everything it loads comes from rsgo itself.
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    for asset in ["/console/app.js", "/console/app.css"] {
        let (status, _) = curl("GET", &format!("{}{asset}", server.url), None, None).unwrap();
        assert_eq!(status, 200, "{asset}");
    }
    let script = Command::new("curl")
        .args(["-s", &format!("{}/console/app.js", server.url)])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&script.stdout);
    assert!(!script.contains("innerHTML") && !script.contains("localStorage.setItem"));
}
