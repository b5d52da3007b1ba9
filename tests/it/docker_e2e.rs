//! End to end on the real engine: `rsgo serve`, curl, images pushed to the loopback registry.

use std::time::Duration;

use crate::support::{
    Server, build_and_push, docker, inspect, registry, try_inspect, unique, wait_for,
};

fn manifest(product: &str, version: &str, services: &str, variables: &str) -> String {
    format!(
        "metadata:\n  name: {product}\n  productVersion: \"{version}\"\nvariables:\n{variables}\nservices:\n{services}\nvolumes:\n  data: {{}}\n"
    )
}

fn stack_yaml(name: &str, env: &str, product: &str, version: &str) -> String {
    format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec:\n  environment: {env}\n  product: {product}\n  version: \"{version}\"\n"
    )
}

/// Waits until the stack's status says Running at `version`.
fn wait_running(server: &Server, stack: &str, version: &str) {
    wait_for(
        &format!("stack {stack} running {version}"),
        Duration::from_secs(120),
        || {
            let status = server.stack_status(stack);
            if status["phase"] == "Failed" {
                panic!("stack failed: {status}\n{}", server.log());
            }
            (status["phase"] == "Running" && status["deployedVersion"] == version).then_some(())
        },
    );
}

/// Pushes a v1 image, serves a one-service product using it, and deploys a stack of it.
/// `service_extra` adds lines to the service. Returns the server, image and stack name.
fn deploy_single_service(label: &str, service_extra: &str) -> (Server, String, String, String) {
    let image = format!("{}/{}/app:latest", registry(), unique(label));
    let v1 = build_and_push(&image, "v1");
    let product = unique("app");
    let services = format!("  app:\n    image: {image}\n{service_extra}");
    let server = Server::start(&[("app.yaml", manifest(&product, "1.0.0", &services, "  {}"))]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "1.0.0"));
    wait_running(&server, &stack, "1.0.0");
    (server, image, stack, v1)
}

/// Upgrades `stack` to `version` and waits for the rollout, which must fail and roll back.
/// Returns the failure message.
fn upgrade_rolls_back(server: &Server, stack: &str, version: &str) -> String {
    let key = server.key(&["Hooks.Upgrade"]);
    let env = &server.environment;
    let body = format!(
        "{{\"stackName\":\"{stack}\",\"environmentId\":\"{env}\",\"targetVersion\":\"{version}\",\"wait\":true}}"
    );
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&body));
    assert_eq!(status, 500, "{reply}");
    assert_eq!(reply["phase"], "RolledBack", "{reply}");
    reply["message"].as_str().unwrap().to_owned()
}

fn container_file(container: &str, path: &str) -> String {
    docker(&["exec", container, "cat", path])
}

#[test]
fn redeploy_recreates_from_the_fresh_image_and_keeps_volumes() {
    let extra = "    volumes: [\"data:/data\"]\n    restart: unless-stopped\n";
    let (server, image, stack, v1) = deploy_single_service("redeploy", extra);
    let key = server.key(&["Hooks.Redeploy"]);
    let container = server.name(&stack, "app");
    assert_eq!(inspect(&container, "{{.Image}}"), v1);
    assert_eq!(container_file(&container, "/version"), "v1");
    docker(&["exec", &container, "sh", "-c", "echo kept > /data/proof"]);
    let volume = server.name(&stack, "data");
    assert_eq!(
        inspect(&container, "{{range .Mounts}}{{.Name}}{{end}}"),
        volume
    );

    let v2 = build_and_push(&image, "v2");
    assert_ne!(v1, v2);
    // Drop the local copy so only a real pull can bring v2.
    docker(&["rmi", "-f", &image]);
    let body = format!(
        "{{\"stackName\": \"{stack}\", \"environmentId\": \"{}\"}}",
        server.environment
    );
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["stackVersion"], "1.0.0");
    let id = reply["deploymentId"].as_str().unwrap();
    let record = server.wait_deployment(&key, id);
    assert_eq!(record["phase"], "Succeeded", "{record}\n{}", server.log());
    assert_eq!(record["services"][0]["action"], "recreated");
    assert_eq!(inspect(&container, "{{.Image}}"), v2);
    assert_eq!(container_file(&container, "/version"), "v2");
    assert_eq!(container_file(&container, "/data/proof"), "kept");
    assert_eq!(
        inspect(
            &container,
            "{{index .Config.Labels \"io.rsgo.deployment\"}}"
        ),
        id
    );
    assert_eq!(
        try_inspect(&server.name(&stack, "_app"), "{{.Id}}"),
        None,
        "the new container was made under a stand-in name and then took the service's name"
    );
}

/// A rollout cut short after it made a service's new container under its stand-in name leaves
/// that container behind; the next pass removes it and keeps the service's own container.
#[test]
fn a_new_container_left_under_its_stand_in_name_is_removed_by_the_next_pass() {
    let (server, image, stack, _) = deploy_single_service("standin", "");
    let container = server.name(&stack, "app");
    let id = inspect(&container, "{{.Id}}");
    let standby = server.name(&stack, "_app");
    let labels = inspect(
        &container,
        "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}\n{{end}}",
    );
    let mut args = vec!["create", "--name", &standby];
    for label in labels.lines().filter(|l| l.starts_with("io.rsgo.")) {
        args.extend(["--label", label]);
    }
    args.push(&image);
    docker(&args);
    wait_for(
        "the stand-in container to be removed",
        Duration::from_secs(30),
        || try_inspect(&standby, "{{.Id}}").is_none().then_some(()),
    );
    assert_eq!(
        inspect(&container, "{{.Id}}"),
        id,
        "the service's container stays"
    );
    assert_eq!(inspect(&container, "{{.State.Running}}"), "true");
}

#[test]
fn a_failed_pull_fails_the_redeploy_and_keeps_the_old_container() {
    let (server, image, stack, _) = deploy_single_service("badpull", "");
    let key = server.key(&["Hooks.Redeploy"]);
    let container = server.name(&stack, "app");
    let before = inspect(&container, "{{.Id}}");

    // Remove the image from the registry: the next pull finds nothing.
    let repo = image
        .trim_start_matches(&format!("{}/", registry()))
        .trim_end_matches(":latest")
        .to_owned();
    let digest = docker(&["inspect", "-f", "{{index .RepoDigests 0}}", &image]);
    let digest = digest.rsplit_once('@').unwrap().1;
    let status = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "DELETE",
            &format!("http://{}/v2/{repo}/manifests/{digest}", registry()),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "deleting the manifest from the registry");

    let body = format!(
        "{{\"stackName\": \"{stack}\", \"environmentId\": \"{}\", \"wait\": true}}",
        server.environment
    );
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 500, "{reply}");
    assert_eq!(reply["success"], false);
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("pulling image") && message.contains(&image),
        "{message}"
    );
    assert_eq!(reply["phase"], "Failed");
    assert_eq!(
        inspect(&container, "{{.Id}}"),
        before,
        "the old container was not touched"
    );
    assert_eq!(inspect(&container, "{{.State.Running}}"), "true");
}

#[test]
fn upgrade_with_variables_and_sync_sources_end_to_end() {
    let image = format!("{}/{}/app:latest", registry(), unique("upgrade"));
    build_and_push(&image, "v1");
    let product = unique("shop");
    let old = format!(
        "  web:\n    image: {image}\n    environment: {{MODE: old}}\n  worker:\n    image: {image}\n"
    );
    let new = format!(
        "  web:\n    image: {image}\n    environment: {{MODE: new, GREETING: \"${{GREETING}}\"}}\n    volumes: [\"data:/data\"]\n"
    );
    let greeting = "  GREETING: {required: true}";
    let server = Server::start(&[
        ("shop-6.4.0.yaml", manifest(&product, "6.4.0", &old, "  {}")),
        (
            "shop-6.5.0.yaml",
            manifest(&product, "6.5.0", &new, greeting),
        ),
    ]);
    let key = server.key(&["Hooks.Upgrade", "Hooks.SyncSources"]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "6.4.0"));
    wait_running(&server, &stack, "6.4.0");
    assert_eq!(
        inspect(&server.name(&stack, "worker"), "{{.State.Running}}"),
        "true"
    );

    let env = &server.environment;
    let body = format!(
        "{{\"stackName\":\"{stack}\",\"environmentId\":\"{env}\",\"targetVersion\":\"6.5.0\",\"variables\":{{\"GREETING\":\"hello\"}}}}"
    );
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&body));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["previousVersion"], "6.4.0");
    assert_eq!(reply["newVersion"], "6.5.0");
    let record = server.wait_deployment(&key, reply["deploymentId"].as_str().unwrap());
    assert_eq!(record["phase"], "Succeeded", "{record}\n{}", server.log());
    wait_running(&server, &stack, "6.5.0");
    let envs = inspect(&server.name(&stack, "web"), "{{json .Config.Env}}");
    assert!(
        envs.contains("GREETING=hello") && envs.contains("MODE=new"),
        "{envs}"
    );
    assert_eq!(
        inspect(
            &server.name(&stack, "web"),
            "{{index .Config.Labels \"io.rsgo.version\"}}"
        ),
        "6.5.0"
    );
    let gone = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("name=^{}$", server.name(&stack, "worker")),
    ]);
    assert!(gone.is_empty(), "the service 6.5.0 dropped is removed");

    // 7.0.0 is unknown until the catalog is synced.
    let seven = body.replace("6.5.0", "7.0.0");
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&seven));
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("6.5.0, 6.4.0"),
        "{reply}"
    );
    std::fs::write(
        server.catalog.join("shop-7.0.0.yaml"),
        manifest(&product, "7.0.0", &new, greeting),
    )
    .unwrap();
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["success"], true);
    assert_eq!(reply["sourcesSynced"], 1);
    assert_eq!(reply["stacksLoaded"], 3);
    assert_eq!(reply["message"], "Synced 1 source(s), loaded 3 stack(s).");
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&seven));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["previousVersion"], "6.5.0");

    // A broken manifest fails the sync loudly and keeps the rest loaded.
    std::fs::write(
        server.catalog.join("broken.yaml"),
        "metadata: {name: x, productVersion: nope}\n",
    )
    .unwrap();
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 500, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("broken.yaml"),
        "{reply}"
    );
    assert_eq!(reply["stacksLoaded"], 3);

    // A source that cannot be read at all keeps its last good catalog.
    std::fs::remove_dir_all(&server.catalog).unwrap();
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 500, "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(message.contains("keeping its last good catalog"), "{reply}");
    assert_eq!(reply["sourcesSynced"], 0);
    assert_eq!(reply["stacksLoaded"], 3);
}

#[test]
fn a_failed_upgrade_rolls_back_to_the_previous_version() {
    let (server, image, stack, _) = deploy_single_service("rollback", "");
    let env = server.environment.clone();
    let shown = server.cli(&["get", "stacks", &stack, "--environment", &env, "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let product = shown["spec"]["product"].as_str().unwrap().to_owned();
    let missing = image.replace(":latest", ":never-pushed");
    let services = format!("  app:\n    image: {missing}\n");
    let broken = manifest(&product, "2.0.0", &services, "  {}");
    std::fs::write(server.catalog.join("app-2.0.0.yaml"), broken).unwrap();
    let key = server.key(&["Hooks.SyncSources"]);
    assert_eq!(server.hook("/api/hooks/sync-sources", &key, None).0, 200);
    let container = server.name(&stack, "app");
    let before = inspect(&container, "{{.Id}}");

    let message = upgrade_rolls_back(&server, &stack, "2.0.0");
    assert!(message.contains(&missing), "{message}");
    assert!(message.contains("Rolled back to 1.0.0"), "{message}");
    wait_running(&server, &stack, "1.0.0");
    let stored = server.cli(&["get", "stacks", &stack, "--environment", &env, "-o", "json"]);
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["spec"]["version"], "1.0.0", "the spec went back");
    assert_eq!(
        inspect(&container, "{{.Id}}"),
        before,
        "the running container was never stopped"
    );
}

#[test]
fn drift_is_corrected_and_foreign_containers_are_left_alone() {
    let (server, image, stack, _) = deploy_single_service("drift", "");
    let foreign = unique("foreign");
    docker(&[
        "run",
        "-d",
        "--name",
        &foreign,
        "--label",
        &format!("io.rsgo.stack={stack}"),
        &image,
    ]);
    let container = server.name(&stack, "app");

    docker(&["stop", "-t", "1", &container]);
    wait_for(
        "the stopped container to run again",
        Duration::from_secs(30),
        || (inspect(&container, "{{.State.Running}}") == "true").then_some(()),
    );
    docker(&["rm", "-f", &container]);
    wait_for(
        "the removed container to come back",
        Duration::from_secs(30),
        || {
            (!docker(&["ps", "-q", "--filter", &format!("name=^{container}$")]).is_empty())
                .then_some(())
        },
    );
    assert_eq!(
        inspect(&foreign, "{{.State.Running}}"),
        "true",
        "an unlabelled container is never touched"
    );
    docker(&["rm", "-f", &foreign]);

    let out = server.cli(&[
        "delete",
        "stack",
        &stack,
        "--environment",
        &server.environment,
    ]);
    assert!(out.contains("deleted"), "{out}");
    assert!(docker(&["ps", "-aq", "--filter", &format!("name=^{container}$")]).is_empty());
    assert_eq!(
        inspect(&server.name(&stack, "data"), "{{.Name}}"),
        server.name(&stack, "data"),
        "volumes are kept"
    );
}

/// A resync pass over a stack that nothing changed since its last steady pass keeps that pass's
/// plan; a change of its catalog entry or of its environment must still reach it.
#[test]
fn steady_stacks_still_follow_their_catalog_entry_and_their_environment() {
    let image = format!("{}/{}/app:latest", registry(), unique("steady"));
    build_and_push(&image, "v1");
    let host_dir = tempfile::TempDir::new().unwrap();
    let host = host_dir.path().to_str().unwrap().to_owned();
    let product = unique("app");
    let services = |mode: &str| {
        format!(
            "  app:\n    image: {image}\n    environment: {{MODE: {mode}}}\n    volumes: [\"{host}:/host\"]\n"
        )
    };
    let server = Server::start(&[(
        "app.yaml",
        manifest(&product, "1.0.0", &services("first"), "  {}"),
    )]);
    let environment = |allowed: &str| {
        format!(
            "apiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {{name: {}}}\nspec:\n  docker: {{host: \"unix:///var/run/docker.sock\", allowedHostPaths: [{allowed}]}}\n",
            server.environment
        )
    };
    server.apply(&environment(&format!("\"{host}\"")));
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "1.0.0"));
    wait_running(&server, &stack, "1.0.0");
    let container = server.name(&stack, "app");
    let first = inspect(&container, "{{.Id}}");
    // Passes every 2 s: the stack is steady, and its pass is kept.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        inspect(&container, "{{.Id}}"),
        first,
        "a steady stack is left alone"
    );

    // The same version edited in place and synced: the next pass renders the new entry.
    std::fs::write(
        server.catalog.join("app.yaml"),
        manifest(&product, "1.0.0", &services("second"), "  {}"),
    )
    .unwrap();
    let key = server.key(&["Hooks.SyncSources"]);
    assert_eq!(server.hook("/api/hooks/sync-sources", &key, None).0, 200);
    wait_for(
        "the container to run the edited catalog entry",
        Duration::from_secs(60),
        || {
            try_inspect(&container, "{{json .Config.Env}}")
                .filter(|env| env.contains("MODE=second"))
        },
    );
    std::thread::sleep(Duration::from_secs(5));

    // The environment no longer allows the stack's host path: the next pass refuses the stack.
    server.apply(&environment(""));
    let status = server.wait_phase(&stack, "Failed");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&host) && message.contains("allowedHostPaths"),
        "{status}"
    );
    // Refused passes are kept too; allowing the path again reaches the stack all the same.
    std::thread::sleep(Duration::from_secs(5));
    server.apply(&environment(&format!("\"{host}\"")));
    server.wait_phase(&stack, "Running");
}

/// A stack refused for a version the catalog lacks is deployed once the version appears in a
/// catalog source, without a sync being asked for: its passes look for it, at most once a period.
#[test]
fn a_refused_stack_is_deployed_once_its_version_appears_in_the_catalog() {
    let image = format!("{}/{}/app:latest", registry(), unique("later"));
    build_and_push(&image, "v1");
    let product = unique("app");
    let services = format!("  app:\n    image: {image}\n");
    let server = Server::start(&[("1.yaml", manifest(&product, "1.0.0", &services, "  {}"))]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "2.0.0"));
    let status = server.wait_phase(&stack, "Failed");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("is not in the catalog"), "{status}");
    // Passes every 2 s find it refused again, and keep that.
    std::thread::sleep(Duration::from_secs(5));
    std::fs::write(
        server.catalog.join("2.yaml"),
        manifest(&product, "2.0.0", &services, "  {}"),
    )
    .unwrap();
    let status = server.wait_phase(&stack, "Running");
    assert_eq!(status["deployedVersion"], "2.0.0", "{status}");
    let log = server.log();
    // Said by the pass that wrote the Failed status and by the next, which kept it; not by
    // the three or more passes after them.
    assert!(
        log.matches("stack cannot be deployed as specified").count() <= 2,
        "said on every pass:\n{log}"
    );
}

#[test]
fn init_services_run_once_before_their_dependents_and_a_failing_one_rolls_back() {
    let image = format!("{}/{}/app:latest", registry(), unique("init"));
    build_and_push(&image, "v1");
    let product = unique("app");
    let services = |script: &str| {
        format!(
            "  migrate:\n    image: {image}\n    lifecycle: init\n    command: [sh, -c, \"{script}\"]\n    volumes: [\"data:/data\"]\n\
             \x20 app:\n    image: {image}\n    dependsOn: [migrate]\n    volumes: [\"data:/data\"]\n"
        )
    };
    let server = Server::start(&[
        (
            "1.yaml",
            manifest(
                &product,
                "1.0.0",
                &services("echo migrated >> /data/log"),
                "  {}",
            ),
        ),
        (
            "2.yaml",
            manifest(&product, "2.0.0", &services("exit 3"), "  {}"),
        ),
    ]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "1.0.0"));
    wait_running(&server, &stack, "1.0.0");
    let migrate = server.name(&stack, "migrate");
    assert_eq!(
        inspect(&migrate, "{{.State.Running}} {{.State.ExitCode}}"),
        "false 0"
    );
    assert_eq!(
        container_file(&server.name(&stack, "app"), "/data/log"),
        "migrated"
    );
    let finished = inspect(&migrate, "{{.State.FinishedAt}}");
    // Several resyncs (every 2 s here) later, the finished init container has not run again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(inspect(&migrate, "{{.State.FinishedAt}}"), finished);
    assert_eq!(
        container_file(&server.name(&stack, "app"), "/data/log"),
        "migrated"
    );

    let message = upgrade_rolls_back(&server, &stack, "2.0.0");
    assert!(
        message.contains(&format!(
            "init service container {migrate} exited with code 3"
        )),
        "{message}"
    );
    wait_running(&server, &stack, "1.0.0");

    // Deployed straight at the failing version, the stack reports the failure and keeps
    // reporting it: resyncs neither show it running nor restart the one-shot container.
    let failing = unique("st");
    let env = &server.environment;
    server.apply(&stack_yaml(&failing, env, &product, "2.0.0"));
    let stack_status = || {
        let out = server.cli(&[
            "get",
            "stacks",
            &failing,
            "--environment",
            env,
            "-o",
            "json",
        ]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone()
    };
    wait_for(
        "the failing init to be reported",
        Duration::from_secs(60),
        || (stack_status()["phase"] == "Failed").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(5));
    let status = stack_status();
    assert_eq!(status["phase"], "Failed", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{status}"
    );
}

#[test]
fn rollouts_wait_for_health_checks_and_an_unhealthy_upgrade_rolls_back() {
    let image = format!("{}/{}/app:latest", registry(), unique("health"));
    build_and_push(&image, "v1");
    let product = unique("app");
    let services = |file: &str| {
        format!(
            "  app:\n    image: {image}\n    command: [sh, -c, \"touch /ready; trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             \x20   healthCheck: {{test: [test, -f, {file}], interval: 1s, timeout: 1s, retries: 2}}\n"
        )
    };
    let server = Server::start(&[
        (
            "1.yaml",
            manifest(&product, "1.0.0", &services("/ready"), "  {}"),
        ),
        (
            "2.yaml",
            manifest(&product, "2.0.0", &services("/never"), "  {}"),
        ),
    ]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "1.0.0"));
    wait_running(&server, &stack, "1.0.0");
    let container = server.name(&stack, "app");
    assert_eq!(
        inspect(&container, "{{.State.Health.Status}}"),
        "healthy",
        "Running means healthy"
    );

    let message = upgrade_rolls_back(&server, &stack, "2.0.0");
    assert!(
        message.contains(&format!(
            "container {container} is unhealthy: the check exited with code 1 and printed nothing"
        )),
        "{message}"
    );
    wait_running(&server, &stack, "1.0.0");
    assert_eq!(inspect(&container, "{{.State.Health.Status}}"), "healthy");

    // A service that turns unhealthy later is reported, not shown as running.
    let env = &server.environment;
    docker(&["exec", &container, "rm", "/ready"]);
    wait_for(
        "the stack to report the unhealthy service",
        Duration::from_secs(60),
        || {
            let out = server.cli(&["get", "stacks", &stack, "--environment", env, "-o", "json"]);
            let value: serde_json::Value = serde_json::from_str(&out).unwrap();
            let message = value["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (value["status"]["phase"] == "Failed" && message.contains("is unhealthy")).then_some(())
        },
    );
}

#[test]
fn a_version_added_to_a_catalog_directory_is_found_without_a_sync_call() {
    let (server, image, stack, _) = deploy_single_service("catalogmiss", "");
    let env = server.environment.clone();
    let shown = server.cli(&["get", "stacks", &stack, "--environment", &env, "-o", "json"]);
    let product = serde_json::from_str::<serde_json::Value>(&shown).unwrap()["spec"]["product"]
        .as_str()
        .unwrap()
        .to_owned();
    // A new version lands in the directory, and nobody calls sync-sources.
    let services = format!("  app:\n    image: {image}\n    environment: {{RELEASE: '1.1.0'}}\n");
    std::fs::write(
        server.catalog.join("app-1.1.0.yaml"),
        manifest(&product, "1.1.0", &services, "  {}"),
    )
    .unwrap();
    let key = server.key(&["Hooks.Upgrade"]);
    let body = format!(
        "{{\"stackName\":\"{stack}\",\"environmentId\":\"{env}\",\"targetVersion\":\"1.1.0\",\"wait\":true}}"
    );
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&body));
    assert_eq!(status, 200, "{reply}");
    wait_running(&server, &stack, "1.1.0");
    let envs = inspect(&server.name(&stack, "app"), "{{json .Config.Env}}");
    assert!(envs.contains("RELEASE=1.1.0"), "{envs}");
}

#[test]
fn tearing_a_stack_down_removes_every_network_it_made() {
    let image = format!("{}/{}/app:latest", registry(), unique("nets"));
    build_and_push(&image, "v1");
    let product = unique("app");
    let services = format!(
        "  app:\n    image: {image}\n    networks: [backend]\n  db:\n    image: {image}\n    networks: [backend]\n"
    );
    let text = manifest(&product, "1.0.0", &services, "  {}").replace(
        "volumes:\n  data: {}\n",
        "volumes:\n  data: {}\nnetworks:\n  backend: {}\n",
    );
    let server = Server::start(&[("app.yaml", text)]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "1.0.0"));
    wait_running(&server, &stack, "1.0.0");
    let networks = || {
        docker(&[
            "network",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            &format!("label=io.rsgo.stack={stack}"),
        ])
    };
    let mut made: Vec<String> = networks().lines().map(str::to_owned).collect();
    made.sort();
    assert_eq!(
        made,
        [
            server.name(&stack, "backend"),
            server.name(&stack, "default")
        ]
    );
    assert!(
        inspect(
            &server.name(&stack, "app"),
            "{{json .NetworkSettings.Networks}}"
        )
        .contains(&server.name(&stack, "backend"))
    );
    server.cli(&[
        "delete",
        "stack",
        &stack,
        "--environment",
        &server.environment,
    ]);
    assert_eq!(networks(), "", "no network of the stack is left");
}

#[test]
fn an_engine_that_does_not_answer_stalls_no_other_environment() {
    // Accepts connections and never answers: the worst kind of engine to wait for.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_host = format!("tcp://{}", silent.local_addr().unwrap());
    let image = format!("{}/{}/app:latest", registry(), unique("silent"));
    build_and_push(&image, "v1");
    let product = unique("app");
    let server = Server::start(&[(
        "app.yaml",
        manifest(
            &product,
            "1.0.0",
            &format!("  app:\n    image: {image}\n"),
            "  {}",
        ),
    )]);
    let silent_env = unique("env");
    let (stuck, fine) = (unique("st"), unique("st"));
    let more_stuck = [unique("st"), unique("st")];
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {{name: {silent_env}}}\nspec:\n  docker: {{host: '{silent_host}'}}\n---\n{}---\n{}---\n{}---\n{}",
        stack_yaml(&stuck, &silent_env, &product, "1.0.0"),
        stack_yaml(&fine, &server.environment, &product, "1.0.0"),
        stack_yaml(&more_stuck[0], &silent_env, &product, "1.0.0"),
        stack_yaml(&more_stuck[1], &silent_env, &product, "1.0.0"),
    ));
    let started = std::time::Instant::now();
    wait_running(&server, &fine, "1.0.0");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the reachable environment was not held up"
    );
    let status = wait_for(
        "the silent environment's status",
        Duration::from_secs(60),
        || {
            let out = server.cli(&["get", "environments", &silent_env, "-o", "json"]);
            let env: serde_json::Value = serde_json::from_str(&out).unwrap();
            (env["status"]["reachable"] == false).then(|| env["status"].clone())
        },
    );
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("no answer within 10 s"), "{status}");
    // The log says it once for the environment, not once per stack and retry.
    std::thread::sleep(Duration::from_secs(2));
    let log = server.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("cannot be reached"))
        .collect();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains(&silent_env) && said[0].contains("WARN"),
        "{said:#?}"
    );
    drop(silent);
}

/// When a container started and (for a one-shot one) finished, as the engine recorded them.
fn started_and_finished(container: &str) -> (jiff::Timestamp, jiff::Timestamp) {
    let times = inspect(container, "{{.State.StartedAt}} {{.State.FinishedAt}}");
    let (started, finished) = times.split_once(' ').unwrap();
    (started.parse().unwrap(), finished.parse().unwrap())
}

#[test]
fn independent_services_roll_out_together_and_dependents_wait_for_theirs() {
    let image = format!("{}/{}/app:latest", registry(), unique("levels"));
    build_and_push(&image, "v1");
    let product = unique("app");
    // Two one-shot services of 4 s each that depend on nothing, and `web` that needs both.
    let services = format!(
        "  migrate:\n    image: {image}\n    lifecycle: init\n    command: [sh, -c, \"sleep 4\"]\n\
         \x20 seed:\n    image: {image}\n    lifecycle: init\n    command: [sh, -c, \"sleep 4\"]\n\
         \x20 web:\n    image: {image}\n    dependsOn: [migrate, seed]\n"
    );
    let server = Server::start(&[("app.yaml", manifest(&product, "1.0.0", &services, "  {}"))]);
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "1.0.0"));
    wait_running(&server, &stack, "1.0.0");
    let check = |when: &str| {
        let migrate = started_and_finished(&server.name(&stack, "migrate"));
        let seed = started_and_finished(&server.name(&stack, "seed"));
        let (web, _) = started_and_finished(&server.name(&stack, "web"));
        assert!(
            migrate.0 < seed.1 && seed.0 < migrate.1,
            "{when}: migrate ran {migrate:?} and seed {seed:?}: one waited for the other though \
             neither depends on the other"
        );
        assert!(
            web >= migrate.1 && web >= seed.1,
            "{when}: web started at {web}, before what it depends on finished: {migrate:?} {seed:?}"
        );
    };
    check("first rollout");

    let record = redeployed(&server, &stack);
    let actions = crate::support::service_actions(&record);
    assert_eq!(actions, ["recreated"; 3], "{record}");
    check("redeploy");
}

/// Redeploys `stack` through the hook and returns its deployment record once it ended.
fn redeployed(server: &Server, stack: &str) -> serde_json::Value {
    let key = server.key(&["Hooks.Redeploy"]);
    let body = format!(
        "{{\"stackName\": \"{stack}\", \"environmentId\": \"{}\"}}",
        server.environment
    );
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    server.wait_deployment(&key, reply["deploymentId"].as_str().unwrap())
}

#[test]
fn a_rollout_meets_a_container_made_behind_rsgos_back_after_the_listing_it_plans_from() {
    let image = format!("{}/{}/app:latest", registry(), unique("behind"));
    build_and_push(&image, "v1");
    let product = unique("app");
    let services = format!("  app:\n    image: {image}\n");
    // No resync pass during the test: only the passes it causes.
    let options = crate::support::Options {
        args: vec!["--resync-seconds".into(), "600".into()],
        ..Default::default()
    };
    let mut server = Server::start_with(
        &[("app.yaml", manifest(&product, "1.0.0", &services, "  {}"))],
        options,
    );
    let stack = unique("st");
    server.apply(&stack_yaml(&stack, &server.environment, &product, "1.0.0"));
    wait_running(&server, &stack, "1.0.0");
    // A new process lists the environment in its first pass over the stack, after every
    // change of the stack, and follows the engine's events from then on: a redeploy would plan
    // from that listing if nothing were reported about the stack.
    server.restart();
    std::thread::sleep(Duration::from_secs(3));
    let stray = server.name(&stack, "old");
    let labels = [
        "io.rsgo.managed=true".to_owned(),
        format!("io.rsgo.stack={stack}"),
        format!("io.rsgo.environment={}", server.environment),
        "io.rsgo.service=old".to_owned(),
    ];
    let mut create = vec!["create", "--name", &stray];
    for label in &labels {
        create.extend(["--label", label]);
    }
    create.push(&image);
    docker(&create);
    // Its event reaches rsgo in moments.
    std::thread::sleep(Duration::from_secs(1));

    let record = redeployed(&server, &stack);
    let mut actions = crate::support::service_actions(&record);
    actions.sort_unstable();
    assert_eq!(actions, ["recreated", "removed"], "{record}");
    assert_eq!(try_inspect(&stray, "{{.Id}}"), None, "the stray is gone");
}

/// A server whose environment reaches the engine through `proxy`, serving a one-service
/// product (returned by name) on a freshly pushed image.
fn behind(proxy: &crate::engine_proxy::EngineProxy, label: &str) -> (Server, String) {
    let image = format!("{}/{}/app:latest", registry(), unique(label));
    build_and_push(&image, "v1");
    let product = unique("app");
    let services = format!("  app:\n    image: {image}\n");
    let options = crate::support::Options {
        docker_host: Some(proxy.host()),
        ..Default::default()
    };
    let server = Server::start_with(
        &[("app.yaml", manifest(&product, "1.0.0", &services, "  {}"))],
        options,
    );
    (server, product)
}

/// A server behind a counting proxy (see [`behind`]).
fn behind_a_counting_proxy(label: &str) -> (crate::engine_proxy::EngineProxy, Server, String) {
    let proxy = crate::engine_proxy::EngineProxy::start();
    let (server, product) = behind(&proxy, label);
    (proxy, server, product)
}

/// Runs six stacks behind `proxy` until they are steady and returns the engine calls of three
/// resync periods (2 s each here) after that; then stops one container behind rsgo's back and
/// checks that a following pass starts it again and touches nothing else.
fn steady_calls_then_drift(
    proxy: &crate::engine_proxy::EngineProxy,
    server: &Server,
    product: &str,
) -> std::collections::BTreeMap<String, u64> {
    let stacks: Vec<String> = (0..6).map(|_| unique("st")).collect();
    for stack in &stacks {
        server.apply(&stack_yaml(stack, &server.environment, product, "1.0.0"));
    }
    for stack in &stacks {
        wait_running(server, stack, "1.0.0");
    }
    let ids = || -> Vec<String> {
        stacks
            .iter()
            .map(|stack| inspect(&server.name(stack, "app"), "{{.Id}}"))
            .collect()
    };
    let before = ids();
    // The pass after the rollouts' own status writes finds them steady.
    std::thread::sleep(Duration::from_secs(2));
    proxy.take();
    std::thread::sleep(Duration::from_secs(6));
    let steady = proxy.take();

    let stopped = server.name(&stacks[0], "app");
    docker(&["stop", "-t", "1", &stopped]);
    wait_for(
        "the stopped container to run again",
        Duration::from_secs(30),
        || (inspect(&stopped, "{{.State.Running}}") == "true").then_some(()),
    );
    let calls = proxy.take();
    assert_eq!(
        calls.get("POST /containers/{id}/start"),
        Some(&1),
        "{calls:?}"
    );
    assert_eq!(ids(), before, "every container is the one it was");
    steady
}

/// Calls other than the listings and the engine check.
fn other_calls(calls: &std::collections::BTreeMap<String, u64>) -> Vec<&String> {
    calls
        .keys()
        .filter(|call| {
            !matches!(
                call.as_str(),
                "GET /containers/json" | "GET /networks" | "GET /version"
            )
        })
        .collect()
}

#[test]
fn steady_passes_reuse_a_listing_while_the_engine_reports_no_change() {
    let (proxy, server, product) = behind_a_counting_proxy("listing");
    let calls = steady_calls_then_drift(&proxy, &server, &product);
    let lists = calls.get("GET /containers/json").copied().unwrap_or(0);
    // Without the event feed every pass would list: three or more.
    assert!(
        lists <= 1,
        "a listing serves while the engine reports nothing: {calls:?}"
    );
    assert_eq!(
        calls.get("GET /networks").copied().unwrap_or(0),
        lists,
        "{calls:?}"
    );
    let checks = calls.get("GET /version").copied().unwrap_or(0);
    assert!(
        checks <= 4,
        "the engine is checked once per pass, not once per stack: {calls:?}"
    );
    assert!(
        other_calls(&calls).is_empty(),
        "a steady state asks nothing else: {calls:?}"
    );
    let log = server.log();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

#[test]
fn without_the_engines_event_feed_every_pass_lists_each_environment_once() {
    let proxy = crate::engine_proxy::EngineProxy::refusing(&["GET /events"]);
    let (server, product) = behind(&proxy, "nofeed");
    let calls = steady_calls_then_drift(&proxy, &server, &product);
    let lists = calls.get("GET /containers/json").copied().unwrap_or(0);
    // One per pass, two when a loaded machine spreads a pass over more than the listing's
    // age (half a period); one per stack would be 18 or more.
    assert!(
        (2..=6).contains(&lists),
        "one container list per pass, not one per stack: {calls:?}"
    );
    assert_eq!(calls.get("GET /networks"), Some(&lists), "{calls:?}");
    let checks = calls.get("GET /version").copied().unwrap_or(0);
    assert!(
        checks <= lists + 1,
        "the engine is checked once per pass, not once per stack: {calls:?}"
    );
    // The feed is asked for again now and then (after 2 s, then less and less often).
    let others: Vec<_> = other_calls(&calls)
        .into_iter()
        .filter(|call| !matches!(call.as_str(), "GET /events" | "GET /info"))
        .collect();
    assert!(
        others.is_empty(),
        "a steady state asks nothing else: {calls:?}"
    );
}

#[test]
fn stacks_starting_together_queue_for_the_engine_and_plan_from_one_listing() {
    let (proxy, server, product) = behind_a_counting_proxy("queue");
    let stacks: Vec<String> = (0..24).map(|_| unique("st")).collect();
    let yaml: Vec<String> = stacks
        .iter()
        .map(|stack| stack_yaml(stack, &server.environment, &product, "1.0.0"))
        .collect();
    server.apply(&yaml.join("---\n"));
    for stack in &stacks {
        wait_running(&server, stack, "1.0.0");
    }
    let most = proxy.most_in_flight();
    assert!(
        (2..=rsgo::runtime::docker::ENGINE_REQUESTS).contains(&most),
        "{most} requests were in flight at once"
    );
    // Each rollout reads back the containers it leaves by id (which the engine answers from
    // its index); it plans from the environment's listing when that still shows the stack, so
    // the new stacks' first rollouts list nothing of their own, and the pass after each
    // rollout checks what it read back. Only a pass that finds neither current reads the stack
    // afresh. Before, every rollout listed the stack's containers twice and its networks once,
    // each list costing the engine as much as a listing of everything.
    let calls = proxy.take();
    let count = |call: &str| calls.get(call).copied().unwrap_or(0);
    let rollouts = count("GET /containers/json by id");
    assert!(rollouts >= stacks.len() as u64, "{calls:?}");
    for call in [
        "GET /containers/json of a stack",
        "GET /networks of a stack",
    ] {
        assert!(count(call) < rollouts, "{call}: {calls:?}");
    }
    // The stacks share one image, and were asked for together: a pull begun after they were
    // serves them all (one here; a slow machine may take up some of them only after it began),
    // instead of a pull each.
    let pulls = count("POST /images/create");
    assert!(
        (1..=4).contains(&pulls),
        "{pulls} pulls for {} stacks: {calls:?}",
        stacks.len()
    );
    let log = server.log();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "starting together, no stack failed or retried:\n{log}"
    );
}
