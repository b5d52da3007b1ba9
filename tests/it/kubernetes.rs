//! Kubernetes artefacts that can be checked without an API server: the CRDs and the Helm chart.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crds_match_the_types_and_the_chart_carries_the_same() {
    let files = rsgo::cli::crd_files().unwrap();
    assert_eq!(files.len(), 6);
    for dir in [root().join("crds"), root().join("charts/rsgo/crds")] {
        let on_disk = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(on_disk, files.len(), "{} holds other files", dir.display());
        for (name, yaml) in &files {
            let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                committed == *yaml,
                "{}/{name} drifted from the Rust types; run `cargo run -- crd --output-dir crds` \
                 and copy crds/ to charts/rsgo/crds/",
                dir.display()
            );
        }
    }
}

#[test]
fn crds_have_status_printer_columns_and_descriptions() {
    let stacks: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("crds/stacks.rsgo.io.yaml")).unwrap(),
    )
    .unwrap();
    let version = &stacks["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Environment", "Product", "Version", "Phase", "Age"]
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in ["environment", "product", "version", "variables"] {
        assert!(
            spec[field]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{field} lacks a description"
        );
    }
}

/// Runs tests/chart/check.py with the venv `scripts/test.sh` prepares.
fn chart_report() -> Value {
    let python =
        std::env::var("RSGO_TEST_PYTHON").expect("RSGO_TEST_PYTHON is set by scripts/test.sh");
    let output = Command::new(python)
        .arg(root().join("tests/chart/check.py"))
        .arg(root().join("charts/rsgo"))
        .output()
        .expect("running the chart check");
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&output.stderr)));
    assert!(
        output.status.success(),
        "chart problems: {:#}",
        report["problems"]
    );
    report
}

fn has(report: &Value, set: &str, object: &str) -> bool {
    report[set]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o == object)
}

#[test]
fn the_chart_lints_renders_and_validates_with_default_and_custom_values() {
    let report = chart_report();
    assert_eq!(report["problems"], serde_json::json!([]));
    for object in [
        "Deployment/rsgo",
        "Service/rsgo",
        "ServiceAccount/rsgo",
        "ClusterRole/rsgo",
        "Role/rsgo-leader",
    ] {
        assert!(
            has(&report, "default", object),
            "default values lack {object}"
        );
    }
    assert!(
        !has(&report, "default", "Ingress/rsgo"),
        "the Ingress is optional"
    );
    assert!(has(&report, "non-default", "Ingress/rsgo"));
    assert!(has(&report, "non-default", "ServiceAccount/deployer"));

    let pod = &report["default"]["deployment"]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The root is read-only, so git catalog clones go to a writable emptyDir.
    assert_eq!(
        container["env"][0],
        serde_json::json!({"name": "RSGO_DATA_DIR", "value": "/var/lib/rsgo"})
    );
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/var/lib/rsgo");
    assert_eq!(pod["volumes"][0]["emptyDir"]["sizeLimit"], "1Gi");
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--store=kubernetes")
    );

    // Reading Secrets of stack namespaces is an opt-in.
    let reads_secrets = |label: &str| {
        report[label]["clusterRole"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| rule["resources"] == serde_json::json!(["secrets"]))
    };
    assert!(!reads_secrets("default"));
    assert!(reads_secrets("non-default"));

    let custom = &report["non-default"]["deployment"]["spec"];
    let custom_args = &custom["template"]["spec"]["containers"][0]["args"];
    for arg in [
        "--log-format=json",
        "--auth-failures-per-minute=0",
        "--audit-retention=5000",
        "--tls-cert=/etc/rsgo/tls/tls.crt",
        "--tls-key=/etc/rsgo/tls/tls.key",
    ] {
        assert!(
            custom_args.as_array().unwrap().iter().any(|a| a == arg),
            "{arg} in {custom_args}"
        );
    }
    let container = &custom["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(
        custom["template"]["spec"]["volumes"][1]["secret"]["secretName"],
        "rsgo-serving-cert"
    );
    // The audit trail's kind is in the ClusterRole, without update: entries are never changed.
    let audit_rule = report["default"]["clusterRole"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["resources"] == serde_json::json!(["auditevents"]))
        .expect("a rule for auditevents")
        .clone();
    assert!(
        !audit_rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "update" || v == "patch"),
        "{audit_rule}"
    );
    // The ServiceMonitor is off by default and scrapes /metrics over HTTPS with TLS on.
    assert!(report["default"]["serviceMonitor"].is_null());
    let monitor = &report["non-default"]["serviceMonitor"];
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["scheme"], "https");
    assert_eq!(custom["replicas"], 3);
    assert_eq!(
        custom["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/rsgo:1.2.3"
    );
    assert_eq!(
        custom["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        9090
    );
    assert!(
        report["default"]["notes"]
            .as_str()
            .unwrap()
            .contains("rsgo apikey create")
    );
    assert_eq!(report["crds"].as_array().unwrap().len(), 6);
}

/// Whether the key at `index` has a `# --` comment right above it, or sits inside a value
/// (a map or list at lower indentation) that has one.
fn documented(lines: &[&str], index: usize) -> bool {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let own = lines[..index]
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with('#'));
    if own.into_iter().any(|l| l.trim_start().starts_with("# --")) {
        return true;
    }
    let parent = lines[..index].iter().rposition(|l| {
        !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent(l) < indent(lines[index])
    });
    parent.is_some_and(|p| documented(lines, p))
}

#[test]
fn every_chart_value_is_documented() {
    let values = std::fs::read_to_string(root().join("charts/rsgo/values.yaml")).unwrap();
    let lines: Vec<&str> = values.lines().collect();
    let mut keys = 0;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if !trimmed.is_empty() && !trimmed.starts_with('#') && trimmed.contains(':') {
            keys += 1;
            assert!(
                documented(&lines, i),
                "values.yaml line {}: `{trimmed}` is not documented",
                i + 1
            );
        }
    }
    assert!(keys > 20, "found only {keys} keys");
}

#[test]
fn the_kubernetes_examples_are_valid_objects() {
    let dir = root().join("examples/kubernetes");
    let data = tempfile::TempDir::new().unwrap();
    for file in [
        "environment.yaml",
        "catalogsource.yaml",
        "stack.yaml",
        "apikey.yaml",
    ] {
        let out = crate::support::rsgo_ok(
            data.path(),
            &["apply", "-f", dir.join(file).to_str().unwrap()],
        );
        assert!(out.ends_with("created"), "{file}: {out}");
    }
    let app: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("argocd-application.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(app["kind"], "Application");
    assert_eq!(app["spec"]["source"]["path"], "examples/kubernetes");
    let stack: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("stack.yaml")).unwrap()).unwrap();
    assert!(
        stack["spec"].get("version").is_none(),
        "the example leaves version to the upgrade hook"
    );
}

#[test]
fn the_image_runs_non_root_on_a_read_only_root() {
    let image = format!("{}:test", crate::support::unique("rsgo-image"));
    let built = Command::new(root().join("scripts/image.sh"))
        .args([&image, env!("CARGO_BIN_EXE_rsgo")])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = |args: &[&str]| {
        Command::new("docker")
            .args([
                "run",
                "--rm",
                "--read-only",
                "--user",
                "65532:65532",
                &image,
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let crds = run(&["crd"]);
    assert!(crds.status.success());
    assert!(String::from_utf8_lossy(&crds.stdout).contains("name: stacks.rsgo.io"));
    // The default command is the chart's: outside a cluster it says what is missing.
    let serve = run(&[]);
    assert!(!serve.status.success());
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(
        stderr.contains("connecting to the cluster (in-cluster config or KUBECONFIG)"),
        "{stderr}"
    );
    crate::support::docker(&["rmi", &image]);
}
