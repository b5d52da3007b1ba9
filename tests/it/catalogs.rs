//! Catalogs as users keep them: multi-stack products with shared variables and included
//! fragments, deployed to the real engine from `examples/catalog`.

use std::time::Duration;

use crate::support::{
    Server, build_and_push, docker, example_product, free_port, inspect, registry, unique, wait_for,
};

/// A Stack of one stack (`part`) of a product, at `version`, with `variables` (YAML flow map).
fn part_yaml(
    name: &str,
    env: &str,
    product: &str,
    part: &str,
    version: &str,
    variables: &str,
) -> String {
    format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec:\n  environment: {env}\n  product: {product}\n  stack: {part}\n  version: \"{version}\"\n  variables: {variables}\n"
    )
}

/// Waits until the stack's status shows `phase` and returns the status.
fn wait_phase(server: &Server, stack: &str, phase: &str) -> serde_json::Value {
    wait_for(
        &format!("stack {stack} {phase}"),
        Duration::from_secs(120),
        || {
            let status = server.stack_status(stack);
            (status["phase"] == phase).then_some(status)
        },
    )
}

fn env_of(container: &str) -> String {
    inspect(container, "{{json .Config.Env}}")
}

#[test]
fn each_stack_of_a_multi_stack_product_deploys_and_upgrades_on_its_own() {
    let image = format!("{}/{}/platform:latest", registry(), unique("platform"));
    build_and_push(&image, "v1");
    let files = example_product("platform");
    let manifests: Vec<(&str, String)> =
        files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let server = Server::start(&manifests);
    let env = server.environment.clone();
    let (web, worker) = (unique("web"), unique("worker"));
    let port = free_port();
    server.apply(&part_yaml(
        &web,
        &env,
        "platform",
        "web",
        "1.0.0",
        &format!("{{IMAGE: '{image}', PORT: '{port}'}}"),
    ));
    server.apply(&part_yaml(
        &worker,
        &env,
        "platform",
        "worker",
        "1.0.0",
        &format!("{{IMAGE: '{image}', BATCH: '25'}}"),
    ));
    for stack in [&web, &worker] {
        let status = wait_phase(&server, stack, "Running");
        assert_eq!(status["deployedVersion"], "1.0.0", "{status}");
    }
    // Each stack runs only its own services, with the shared variables and its own.
    let (web_container, worker_container) =
        (server.name(&web, "web"), server.name(&worker, "worker"));
    let web_id = inspect(&web_container, "{{.Id}}");
    assert!(env_of(&web_container).contains("GREETING=hello from the platform"));
    let worker_env = env_of(&worker_container);
    for expected in [
        "BATCH=25",
        "WORKER_GENERATION=1",
        "GREETING=hello from the platform",
    ] {
        assert!(worker_env.contains(expected), "{expected} in {worker_env}");
    }
    for (stack, foreign) in [(&web, "worker"), (&worker, "web")] {
        let found = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("name=^{}$", server.name(stack, foreign)),
        ]);
        assert!(found.is_empty(), "stack {stack} runs no {foreign} service");
    }

    // Upgrading the worker uses the worker's definition in 1.1.0 (a new fragment file).
    let key = server.key(&["Hooks.Upgrade"]);
    let port_for_worker = format!(
        "{{\"stackName\":\"{worker}\",\"environmentId\":\"{env}\",\"targetVersion\":\"1.1.0\",\"variables\":{{\"PORT\":\"9000\"}}}}"
    );
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&port_for_worker));
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("variable(s) PORT are not declared"),
        "PORT belongs to the web stack only: {reply}"
    );
    let body = format!(
        "{{\"stackName\":\"{worker}\",\"environmentId\":\"{env}\",\"targetVersion\":\"1.1.0\",\"variables\":{{\"QUEUE\":\"mail\"}},\"wait\":true}}"
    );
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&body));
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    assert_eq!(reply["previousVersion"], "1.0.0");
    let worker_env = env_of(&worker_container);
    for expected in ["BATCH=25", "WORKER_GENERATION=2", "WORKER_QUEUE=mail"] {
        assert!(worker_env.contains(expected), "{expected} in {worker_env}");
    }
    assert_eq!(server.stack_status(&web)["deployedVersion"], "1.0.0");
    assert_eq!(
        inspect(&web_container, "{{.Id}}"),
        web_id,
        "the web stack is untouched"
    );

    // A Stack naming no stack of a multi-stack product, or one it lacks, deploys nothing and
    // says which stacks there are.
    let none = unique("none");
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {none}}}\nspec:\n  environment: {env}\n  product: platform\n"
    ));
    let status = wait_phase(&server, &none, "Failed");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("holds several stacks (web, worker); spec.stack must name one"),
        "{status}"
    );
    let db = unique("db");
    server.apply(&part_yaml(&db, &env, "platform", "db", "1.1.0", "{}"));
    let status = wait_phase(&server, &db, "Failed");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("has no stack 'db'; its stacks are web, worker"),
        "{status}"
    );
}
