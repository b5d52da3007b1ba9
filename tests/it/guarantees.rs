//! What a key, a catalog, a name, a crash or a hostile client may cause, end to end on the real
//! engine. Each test covers a class of attack or fault, not one example.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Options, Server, build_and_push, curl, docker, inspect, registry, rsgo, try_inspect, unique,
    wait_for,
};

fn manifest(product: &str, version: &str, services: &str) -> String {
    format!(
        "metadata:\n  name: {product}\n  productVersion: \"{version}\"\nservices:\n{services}\nvolumes:\n  data: {{}}\n"
    )
}

fn stack_yaml(name: &str, env: &str, product: &str) -> String {
    format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec:\n  environment: {env}\n  product: {product}\n"
    )
}

fn containers_of(stack: &str) -> String {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.rsgo.stack={stack}"),
    ])
}

fn image(label: &str) -> String {
    let image = format!("{}/{}/app:latest", registry(), unique(label));
    build_and_push(&image, "v1");
    image
}

#[test]
fn host_mounts_and_the_engine_socket_need_the_environment_to_allow_them() {
    let image = image("hostaccess");
    let product = unique("app");
    let services = format!(
        "  app:\n    image: {image}\n    volumes: [\"/var/run/docker.sock:/engine.sock\"]\n"
    );
    let server = Server::start(&[("app.yaml", manifest(&product, "1.0.0", &services))]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product));
    let status = server.wait_phase(&stack, "Failed");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("service 'app' mounts host path '/var/run/docker.sock'")
            && message.contains(&format!(
                "set spec.docker.allowEngineSocket: true on environment '{}'",
                server.environment
            )),
        "{message}"
    );
    assert!(containers_of(&stack).is_empty(), "nothing ran");

    // The operator opts in on the Environment; the next resync deploys.
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {{name: {}}}\nspec:\n  docker:\n    host: unix:///var/run/docker.sock\n    allowEngineSocket: true\n",
        server.environment
    ));
    server.wait_phase(&stack, "Running");
    assert_eq!(
        inspect(
            &server.name(&stack, "app"),
            "{{range .Mounts}}{{.Source}}{{end}}"
        ),
        "/var/run/docker.sock"
    );
}

#[test]
fn catalog_links_out_of_the_source_are_not_followed_and_nothing_is_echoed() {
    let outside = tempfile::TempDir::new().unwrap();
    let secret = format!("token: {}\n", unique("s3cret"));
    std::fs::write(outside.path().join("credentials.yaml"), &secret).unwrap();
    let product = unique("app");
    let server = Server::start(&[(
        "app.yaml",
        manifest(&product, "1.0.0", "  app:\n    image: x\n"),
    )]);
    std::os::unix::fs::symlink(
        outside.path().join("credentials.yaml"),
        server.catalog.join("linked.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", server.catalog.join("passwd.yaml")).unwrap();
    std::fs::write(
        server.catalog.join("broken.yaml"),
        "metadata: {name: [\"s3cret-inline\"]}\n",
    )
    .unwrap();
    let key = server.key(&["Hooks.SyncSources"]);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 500, "{reply}");
    assert_eq!(reply["stacksLoaded"], 1, "the good manifest still loads");
    let errors: Vec<&str> = reply["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().any(|e| {
        e.ends_with("linked.yaml: is a symbolic link that leads out of the source; not read")
    }));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("broken.yaml: line 1, column"))
    );
    let token = secret.trim().trim_start_matches("token: ");
    let stored = server.cli(&["get", "environments", "-o", "json"]);
    for (what, text) in [
        ("the response", reply.to_string()),
        ("the server log", server.log()),
        ("the store", stored),
    ] {
        for leaked in [
            token,
            "root:x:0",
            "s3cret-inline",
            outside.path().to_str().unwrap(),
        ] {
            assert!(!text.contains(leaked), "{what} holds {leaked}: {text}");
        }
    }
    let db = std::fs::read(server.data_dir().join("rsgo.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(token),
        "the CatalogSource status does not hold the linked file"
    );
}

#[test]
fn bad_names_are_refused_and_retries_never_pile_up_networks() {
    let image = image("names");
    let product = unique("app");
    let services = format!(
        "  migrate:\n    image: {image}\n    lifecycle: init\n    command: [sh, -c, \"exit 3\"]\n"
    );
    let server = Server::start(&[("app.yaml", manifest(&product, "1.0.0", &services))]);
    for bad in ["../../etc/evil", "Evil", "evil_stack"] {
        let file = server.data.path().join("bad.yaml");
        std::fs::write(
            &file,
            stack_yaml(bad, &server.environment, &product)
                .replace(&format!("name: {bad}"), &format!("name: \"{bad}\"")),
        )
        .unwrap();
        let out = rsgo(server.data_dir(), &["apply", "-f", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{bad} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is not a valid name"), "{stderr}");
    }
    assert_eq!(
        server
            .cli(&["get", "stacks", "--environment", &server.environment])
            .lines()
            .count(),
        1
    );

    // A stack that keeps failing is retried every resync (2 s here), with one network throughout.
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product));
    server.wait_phase(&stack, "Failed");
    std::thread::sleep(Duration::from_secs(6));
    let networks = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.rsgo.stack={stack}"),
    ]);
    assert_eq!(networks.lines().count(), 1, "{networks}");
}

#[test]
fn a_redeploy_cut_short_by_a_crash_is_finished_after_a_restart() {
    let image = image("crash");
    let product = unique("app");
    // Each service takes a couple of seconds to turn healthy, so the rollout is slow enough to
    // be killed in the middle.
    let service = |name: &str| {
        format!(
            "  {name}:\n    image: {image}\n    command: [sh, -c, \"sleep 2; touch /ready; trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             \x20   healthCheck: {{test: [test, -f, /ready], interval: 1s, timeout: 1s, retries: 10}}\n"
        )
    };
    let services = format!(
        "{}{}    dependsOn: [a]\n{}    dependsOn: [b]\n",
        service("a"),
        service("b"),
        service("c")
    );
    let mut server = Server::start(&[("app.yaml", manifest(&product, "1.0.0", &services))]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product));
    server.wait_phase(&stack, "Running");
    let ids = |server: &Server| -> Vec<String> {
        ["a", "b", "c"]
            .iter()
            .map(|s| inspect(&server.name(&stack, s), "{{.Id}}"))
            .collect()
    };
    let before = ids(&server);

    let key = server.key(&["Hooks.Redeploy"]);
    let body = format!(
        "{{\"stackName\": \"{stack}\", \"environmentId\": \"{}\"}}",
        server.environment
    );
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 200, "{reply}");
    let id = reply["deploymentId"].as_str().unwrap().to_owned();
    // Kill the server once the first service was recreated and before the last one was.
    wait_for(
        "the first service to be recreated",
        Duration::from_secs(60),
        || {
            let a = docker(&[
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                &format!("name=^{}$", server.name(&stack, "a")),
            ]);
            (!a.is_empty() && a != before[0]).then_some(())
        },
    );
    server.kill();
    let c_now = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("name=^{}$", server.name(&stack, "c")),
    ]);
    assert_eq!(c_now, before[2], "killed before the rollout reached c");

    server.restart();
    let record = server.wait_deployment(&key, &id);
    assert_eq!(record["phase"], "Succeeded", "{record}\n{}", server.log());
    let after = ids(&server);
    for (i, service) in ["a", "b", "c"].iter().enumerate() {
        assert_ne!(
            after[i], before[i],
            "service {service} runs a new container"
        );
    }
    let actions = crate::support::service_actions(&record);
    assert_eq!(actions, ["recreated", "recreated", "recreated"], "{record}");
}

#[test]
fn coalesced_waiters_get_the_outcome_of_the_rollout_that_served_them_and_ids_keep_resolving() {
    let image = image("coalesce");
    let product = unique("app");
    let server = Server::start(&[(
        "app.yaml",
        manifest(&product, "1.0.0", &format!("  app:\n    image: {image}\n")),
    )]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product));
    server.wait_phase(&stack, "Running");
    let key = server.key(&["Hooks.Redeploy"]);
    let body = format!(
        "{{\"stackName\": \"{stack}\", \"environmentId\": \"{}\", \"wait\": true}}",
        server.environment
    );
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let (url, key, body) = (server.url.clone(), key.clone(), body.clone());
            std::thread::spawn(move || {
                curl(
                    "POST",
                    &format!("{url}/api/hooks/redeploy"),
                    Some(&key),
                    Some(&body),
                )
                .unwrap()
            })
        })
        .collect();
    let replies: Vec<(u16, Value)> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let mut ids = std::collections::BTreeSet::new();
    for (status, reply) in &replies {
        assert_eq!(*status, 200, "{reply}");
        assert_eq!(reply["success"], true);
        if let Some(carrier) = reply["servedBy"].as_str() {
            assert_ne!(carrier, reply["deploymentId"]);
        }
        ids.insert(reply["deploymentId"].as_str().unwrap().to_owned());
    }
    // Requests that found one waiting joined it: far fewer deployments than requests.
    assert!(
        ids.len() < replies.len() / 2,
        "{} deployments for {} requests",
        ids.len(),
        replies.len()
    );
    // One more rollout; every id returned before still resolves, and a superseded one names
    // the deployment that carried it.
    let (status, last) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 200, "{last}");
    for (_, reply) in &replies {
        let id = reply["deploymentId"].as_str().unwrap();
        let (status, record) = curl(
            "GET",
            &format!("{}/api/deployments/{id}", server.url),
            Some(&key),
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{id}: {record}");
        match record["phase"].as_str().unwrap() {
            "Succeeded" => assert!(record["servedBy"].is_null()),
            "Superseded" => assert!(record["servedBy"].is_string(), "{record}"),
            other => panic!("unexpected phase {other}: {record}"),
        }
        let time = |field: &str| {
            record[field]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap()
        };
        if record["phase"] == "Succeeded" {
            assert!(time("startedAt") < time("finishedAt"), "{record}");
        }
    }
}

/// Sends raw bytes and returns what the server answered before closing, or before `limit`.
fn raw(server: &Server, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(bytes).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_oversized_announcements_refused_at_once() {
    let server = Server::start_with(
        &[],
        Options {
            args: [
                "--header-timeout-seconds",
                "1",
                "--body-timeout-seconds",
                "1",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
            ..Default::default()
        },
    );
    let key = server.key(&["Hooks.Redeploy"]);
    let limit = Duration::from_secs(8);
    // A head that never completes.
    let (answer, waited) = raw(
        &server,
        b"POST /api/hooks/redeploy HTTP/1.1\r\nHost: x\r\n",
        limit,
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed after {waited:?}: {answer}"
    );
    // A kept-alive connection that goes idle after one request.
    let (answer, waited) = raw(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", limit);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        waited < Duration::from_secs(5),
        "idle connection closed after {waited:?}"
    );
    // A body that trickles.
    let head = format!(
        "POST /api/hooks/redeploy HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Length: 40\r\n\r\n{{\"stack"
    );
    let (answer, waited) = raw(&server, head.as_bytes(), limit);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"success\":false") && answer.contains("did not arrive within 1 s"),
        "{answer}"
    );
    assert!(waited < Duration::from_secs(5));
    // A body announced far over the limit is refused before any of it is read.
    let head = format!(
        "POST /api/hooks/redeploy HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Length: 1000000000000\r\n\r\n"
    );
    let (answer, waited) = raw(&server, head.as_bytes(), limit);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(waited < Duration::from_secs(2), "refused after {waited:?}");
    // A head of 100 header lines is read; one of 101 gets the HTTP layer's bare 431.
    for (lines, status) in [(100, "HTTP/1.1 200"), (101, "HTTP/1.1 431")] {
        let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for n in 2..lines {
            head.push_str(&format!("X-Line-{n}: x\r\n"));
        }
        head.push_str("\r\n");
        let (answer, _) = raw(&server, head.as_bytes(), limit);
        assert!(answer.starts_with(status), "{lines} lines: {answer}");
    }
}

#[test]
fn open_connections_are_capped() {
    let server = Server::start_with(
        &[],
        Options {
            args: ["--max-connections", "2", "--header-timeout-seconds", "60"]
                .iter()
                .map(|a| a.to_string())
                .collect(),
            ..Default::default()
        },
    );
    let address = server.url.trim_start_matches("http://").to_owned();
    let hold: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let blocked = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
            &format!("{}/healthz", server.url),
        ])
        .status()
        .unwrap();
    assert!(
        !blocked.success(),
        "a third connection waits while two are open"
    );
    drop(hold);
    let (status, _) = curl("GET", &format!("{}/healthz", server.url), None, None).unwrap();
    assert_eq!(status, 200, "served once a slot is free");
}

#[test]
fn one_data_directory_has_one_reconciler_and_a_standby_takes_over() {
    let image = image("standby");
    let product = unique("app");
    let mut server = Server::start(&[(
        "app.yaml",
        manifest(&product, "1.0.0", &format!("  app:\n    image: {image}\n")),
    )]);
    let second = server.second("second.log");
    wait_for(
        "the second server to stand by",
        Duration::from_secs(10),
        || {
            second
                .log()
                .contains("another rsgo serve reconciles this data directory")
                .then_some(())
        },
    );
    // The standby serves hooks.
    let key = server.key(&["Hooks.SyncSources"]);
    let (status, reply) = curl(
        "POST",
        &format!("{}/api/hooks/sync-sources", second.url),
        Some(&key),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{reply}");
    server.kill();
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product));
    server.wait_phase(&stack, "Running");
    assert!(
        second.log().contains("this one reconciles now"),
        "{}",
        second.log()
    );
}

#[test]
fn environments_on_one_engine_never_share_volumes_and_old_names_are_adopted() {
    let image = image("envs");
    let product = unique("app");
    let services = format!("  app:\n    image: {image}\n    volumes: [\"data:/data\"]\n");
    let server = Server::start(&[("app.yaml", manifest(&product, "1.0.0", &services))]);
    let stack = unique("st");
    let (a, b) = (server.environment.clone(), unique("env"));
    // An existing stack of environment `a`, as an older rsgo named it: `<stack>_data` and
    // `<stack>_default`, with data in the volume.
    let labels = [
        "--label".to_owned(),
        "io.rsgo.managed=true".to_owned(),
        "--label".to_owned(),
        format!("io.rsgo.stack={stack}"),
        "--label".to_owned(),
        format!("io.rsgo.environment={a}"),
    ];
    let mut volume = vec!["volume", "create"];
    volume.extend(labels.iter().map(String::as_str));
    let legacy_volume = format!("{stack}_data");
    volume.push(&legacy_volume);
    docker(&volume);
    let mut network = vec!["network", "create"];
    network.extend(labels.iter().map(String::as_str));
    let legacy_network = format!("{stack}_default");
    network.push(&legacy_network);
    docker(&network);
    docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{legacy_volume}:/data"),
        &image,
        "sh",
        "-c",
        "echo from-a > /data/proof",
    ]);

    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {{name: {b}}}\nspec:\n  docker: {{host: unix:///var/run/docker.sock}}\n---\n{}---\n{}",
        stack_yaml(&stack, &a, &product),
        stack_yaml(&stack, &b, &product)
    ));
    let env_b = Server::name_in(&b, &stack, "app");
    server.wait_phase(&stack, "Running");
    wait_for(
        "the stack of the second environment",
        Duration::from_secs(60),
        || (inspect(&env_b, "{{.State.Running}}") == "true").then_some(()),
    );
    let in_a = docker(&["exec", &server.name(&stack, "app"), "cat", "/data/proof"]);
    assert_eq!(in_a, "from-a", "the old volume still serves its stack");
    let in_b = std::process::Command::new("docker")
        .args(["exec", &env_b, "cat", "/data/proof"])
        .output()
        .unwrap();
    assert!(
        !in_b.status.success(),
        "another environment never sees that data"
    );
    assert_eq!(
        inspect(&env_b, "{{range .Mounts}}{{.Name}}{{end}}"),
        Server::name_in(&b, &stack, "data")
    );
    wait_for(
        "the old network to be removed",
        Duration::from_secs(30),
        || {
            docker(&[
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("name=^{legacy_network}$"),
            ])
            .is_empty()
            .then_some(())
        },
    );
    let torn_down = |environment: &str, container: &str| {
        server.cli(&["delete", "stack", &stack, "--environment", environment]);
        wait_for(
            "the deleted stack's container to be removed",
            Duration::from_secs(60),
            || try_inspect(container, "{{.Id}}").is_none().then_some(()),
        );
    };
    torn_down(&a, &server.name(&stack, "app"));
    assert_eq!(
        inspect(&env_b, "{{.State.Running}}"),
        "true",
        "deleting one leaves the other"
    );
    // Through rsgo: a container removed by hand would be put back by the next pass.
    torn_down(&b, &env_b);
    for name in [legacy_volume, Server::name_in(&b, &stack, "data")] {
        docker(&["volume", "rm", &name]);
    }
}

/// Unmounts a file system when dropped (lazily, so a process still using it does not block).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_data_disk_is_reported_as_such_and_readiness_follows_it() {
    let server = Server::start_with(
        &[],
        Options {
            data_subdir: Some("db".into()),
            prepare: Some(Box::new(|dir| {
                let mounted = std::process::Command::new("mount")
                    .args([
                        "-t",
                        "tmpfs",
                        "-o",
                        "size=4m",
                        "rsgo-test",
                        dir.to_str().unwrap(),
                    ])
                    .status()
                    .unwrap();
                assert!(
                    mounted.success(),
                    "mounting a small tmpfs for the data directory"
                );
            })),
            ..Default::default()
        },
    );
    let _mounted = Mounted(server.data_dir().to_owned());
    let key = server.key(&["Hooks.Redeploy"]);
    let (stack, other) = (unique("st"), unique("st"));
    server.apply(&stack_yaml(&stack, &server.environment, "nothing"));
    server.apply(&stack_yaml(&other, &server.environment, "nothing"));
    let request = |stack: &str| {
        format!(
            "{{\"stackName\": \"{stack}\", \"environmentId\": \"{}\"}}",
            server.environment
        )
    };
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&request(&stack)));
    assert_eq!(status, 200, "{reply}");
    // A request for the other stack has no waiting deployment to join: it needs a write.
    let body = request(&other);

    let filler = server.data_dir().join("filler");
    let _ = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=64k",
            &format!("of={}", filler.display()),
        ])
        .output()
        .unwrap();
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 503, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("data disk is full"),
        "{reply}"
    );
    let (status, _) = curl("GET", &format!("{}/readyz", server.url), None, None).unwrap();
    assert_eq!(status, 503, "not ready while nothing can be stored");
    let records = server.cli(&["get", "deployments", "--environment", &server.environment]);
    assert_eq!(
        records.lines().count(),
        2,
        "only the first request was recorded: {records}"
    );
    assert!(
        records.contains(&stack) && !records.contains(&other),
        "{records}"
    );

    std::fs::remove_file(&filler).unwrap();
    let (status, _) = curl("GET", &format!("{}/readyz", server.url), None, None).unwrap();
    assert_eq!(status, 200, "ready again once there is room");
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 200, "{reply}");
}

#[test]
fn a_flood_of_refused_requests_is_summed_up_not_logged_line_by_line() {
    // Without the per-address limit, which would answer most of these 429.
    let server = Server::start_with(
        &[],
        Options {
            args: vec!["--auth-failures-per-minute".into(), "0".into()],
            ..Default::default()
        },
    );
    let url = format!("{}/api/hooks/sync-sources", server.url);
    for i in 0..60 {
        let key = if i % 2 == 0 {
            "rsgo_".to_owned() + &"x".repeat(32)
        } else {
            "nonsense".into()
        };
        let (status, _) = curl("POST", &url, Some(&key), None).unwrap();
        assert_eq!(status, 401);
    }
    let log = server.log();
    let lines = log.lines().filter(|l| l.contains("refused")).count();
    assert!(lines <= 2, "{lines} lines for 60 refusals:\n{log}");
    let summary = wait_for("the summary of refusals", Duration::from_secs(20), || {
        server
            .log()
            .lines()
            .find(|l| l.contains("refused more requests since the last report"))
            .map(str::to_owned)
    });
    assert!(
        summary.contains("total=59")
            && summary.contains("malformed key: 30")
            && summary.contains("unknown key: 29"),
        "{summary}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_and_carry_no_key() {
    let server = Server::start_with(
        &[],
        Options {
            args: vec!["--log-format".into(), "json".into()],
            ..Default::default()
        },
    );
    let key = server.key(&["Hooks.Redeploy"]);
    let (status, _) = server.hook(
        "/api/hooks/redeploy",
        "rsgo_notakey",
        Some("{\"stackName\":\"x\"}"),
    );
    assert_eq!(status, 401);
    let log = wait_for("the refusal in the log", Duration::from_secs(10), || {
        let log = server.log();
        log.contains("refused a request").then_some(log)
    });
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "rsgo serving"),
        "{log}"
    );
    let refusal = lines
        .iter()
        .find(|l| l["fields"]["message"] == "refused a request")
        .unwrap();
    assert_eq!(refusal["level"], "WARN");
    assert!(
        !log.contains(&key) && !log.contains("rsgo_notakey"),
        "{log}"
    );
}

/// A POST from `source` (a loopback address) with curl: status, `Retry-After`, body.
fn post_from(source: &str, url: &str, key: &str) -> (u16, Option<String>, String) {
    let output = std::process::Command::new("curl")
        .args(["-s", "-i", "--interface", source, "-X", "POST", url])
        .args(["-H", &format!("X-Api-Key: {key}")])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let retry_after = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_owned())
    });
    (status, retry_after, body.to_owned())
}

#[test]
fn guessing_keys_from_one_address_is_slowed_and_other_addresses_are_not() {
    let server = Server::start(&[]);
    let key = server.key(&["Hooks.SyncSources"]);
    let url = format!("{}/api/hooks/sync-sources", server.url);
    let mut statuses = Vec::new();
    for i in 0..30 {
        let guess = format!("rsgo_{i:032}");
        statuses.push(post_from("127.0.0.1", &url, &guess).0);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    let (status, retry_after, body) = post_from("127.0.0.1", &url, &format!("rsgo_{:032}", 99));
    assert_eq!(status, 429, "{statuses:?} {body}");
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    assert!(body.contains("Too many failed authentications"), "{body}");
    // While blocked, the address gets no answer about any key, a valid one included.
    assert_eq!(post_from("127.0.0.1", &url, &key).0, 429);
    // Another address is answered at once, with the valid key.
    let started = Instant::now();
    let (status, _, body) = post_from("127.0.0.2", &url, &key);
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!server.log().contains(&key));
}

/// Threads of process `pid` by name (as the kernel keeps it: at most 15 characters).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .count()
}

#[test]
fn a_burst_of_listings_queues_for_the_stores_readers_and_adds_no_threads() {
    let server = Server::start(&[]);
    let admin = server.key(&["Admin"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let request = format!(
        "GET /api/v1/stacks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {admin}\r\nConnection: close\r\n\r\n"
    );
    // 32 clients at once, each listing 20 times: many more listings than the store has readers.
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (address, request) = (address.clone(), request.clone());
            std::thread::spawn(move || {
                (0..20)
                    .filter(|_| {
                        let mut stream = TcpStream::connect(&address).unwrap();
                        stream.write_all(request.as_bytes()).unwrap();
                        let mut reply = String::new();
                        stream.read_to_string(&mut reply).unwrap();
                        reply.starts_with("HTTP/1.1 200")
                    })
                    .count()
            })
        })
        .collect();
    let served: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(served, 32 * 20, "every listing is answered");
    // The listings ran on the store's four reader threads; the runtime kept its workers (one
    // per core) and at most the one or two blocking threads the catalog load at start used.
    let pid = server.pid();
    assert_eq!(threads_named(pid, "rsgo-store-read"), 4);
    let cores = std::thread::available_parallelism().unwrap().get();
    let runtime = threads_named(pid, "tokio-rt-worker");
    assert!(
        runtime <= cores + 2,
        "{runtime} runtime threads on {cores} cores after the burst"
    );
}
