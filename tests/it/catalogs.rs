//! Catalogs as users keep them: multi-stack products with shared variables and included
//! fragments, deployed to the real engine from `examples/catalog`, and git repositories made in
//! a temp dir, served over `file://` and by `git daemon` on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::git_https::GitHttps;
use crate::support::{
    Options, Server, build_and_push, docker, example_product, free_port, inspect, registry, rsgo,
    unique, wait_for,
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
        let status = server.wait_phase(stack, "Running");
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
    let status = server.wait_phase(&none, "Failed");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("holds several stacks (web, worker); spec.stack must name one"),
        "{status}"
    );
    let db = unique("db");
    server.apply(&part_yaml(&db, &env, "platform", "db", "1.1.0", "{}"));
    let status = server.wait_phase(&db, "Failed");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("has no stack 'db'; its stacks are web, worker"),
        "{status}"
    );
}

/// Runs git in `dir` and returns its trimmed stdout; fails the test when git fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=rsgo tests",
            "-c",
            "user.email=tests@rsgo.invalid",
        ])
        .args(args)
        .output()
        .expect("git is installed by scripts/test.sh");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A bare repository (`origin.git`) and a working copy that commits and pushes to it.
struct Origin {
    dir: TempDir,
    work: PathBuf,
}

impl Origin {
    fn new() -> Origin {
        let dir = TempDir::new().unwrap();
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        git(dir.path(), &["clone", "-q", "origin.git", "work"]);
        let work = dir.path().join("work");
        git(&work, &["checkout", "-q", "-b", "main"]);
        Origin { dir, work }
    }

    /// Writes `files`, commits them and pushes; returns the commit id.
    fn push(&self, files: &[(&str, String)]) -> String {
        for (name, text) in files {
            let path = self.work.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", "catalog change"]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.dir.path().join("origin.git").display())
    }

    /// Moves the repository away: fetches from [`Origin::file_url`] fail from now on.
    fn take_offline(&self) {
        let dir = self.dir.path();
        std::fs::rename(dir.join("origin.git"), dir.join("offline.git")).unwrap();
    }
}

/// `git daemon` serving an [`Origin`]'s folder on 127.0.0.1; stopped when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn serve(origin: &Origin) -> Daemon {
        let port = free_port();
        let base = origin.dir.path().display().to_string();
        // The daemon program itself, not `git daemon`, which would leave it running when the
        // `git` parent is killed.
        let exec_path = git(origin.dir.path(), &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={base}"),
                &base,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon runs");
        wait_for("git daemon to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Daemon { child, port }
    }

    fn url(&self) -> String {
        format!("git://127.0.0.1:{}/origin.git", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-service product version running `image`.
fn product_yaml(product: &str, version: &str, image: &str) -> String {
    format!(
        "metadata: {{name: {product}, productVersion: \"{version}\"}}\nservices:\n  app:\n    image: {image}\n    environment: {{RELEASE: \"{version}\"}}\n"
    )
}

/// A CatalogSource reading `url` (below `path`, when set).
fn git_source(name: &str, url: &str, path: Option<&str>) -> String {
    let path = path.map(|p| format!("\n    path: {p}")).unwrap_or_default();
    format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: CatalogSource\nmetadata: {{name: {name}}}\nspec:\n  git:\n    url: \"{url}\"{path}\n"
    )
}

/// A CatalogSource as `rsgo get catalogsources NAME -o json` shows it.
fn source_status(server: &Server, name: &str) -> Value {
    let out = server.cli(&["get", "catalogsources", name, "-o", "json"]);
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

fn upgrade_body(stack: &str, env: &str, version: &str) -> String {
    format!(
        "{{\"stackName\":\"{stack}\",\"environmentId\":\"{env}\",\"targetVersion\":\"{version}\",\"wait\":true}}"
    )
}

#[test]
fn a_pushed_version_becomes_upgradeable_and_a_broken_commit_keeps_the_last_good_one() {
    let image = format!("{}/{}/app:latest", registry(), unique("gitcat"));
    build_and_push(&image, "v1");
    let product = unique("gitapp");
    let origin = Origin::new();
    origin.push(&[
        (
            "catalog/app-1.0.0.yaml",
            product_yaml(&product, "1.0.0", &image),
        ),
        ("README.md", "not a manifest".into()),
    ]);
    let mut server = Server::start(&[]);
    let source = unique("git");
    server.apply(&git_source(&source, &origin.file_url(), Some("catalog")));
    let (env, stack) = (server.environment.clone(), unique("st"));
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  environment: {env}\n  product: {product}\n"
    ));
    let status = server.wait_phase(&stack, "Running");
    assert_eq!(status["deployedVersion"], "1.0.0", "{status}");

    // A pushed version is upgradeable after sync-sources.
    let good = origin.push(&[(
        "catalog/app-1.1.0.yaml",
        product_yaml(&product, "1.1.0", &image),
    )]);
    let key = server.key(&["Hooks.Upgrade", "Hooks.SyncSources", "Hooks.Redeploy"]);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["success"], true);
    let synced = source_status(&server, &source);
    assert_eq!(synced["revision"], good, "{synced}");
    assert_eq!(
        synced["products"],
        serde_json::json!([{"product": product, "versions": ["1.1.0", "1.0.0"]}])
    );
    let (status, reply) = server.hook(
        "/api/hooks/upgrade",
        &key,
        Some(&upgrade_body(&stack, &env, "1.1.0")),
    );
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    let container = server.name(&stack, "app");
    assert!(inspect(&container, "{{json .Config.Env}}").contains("RELEASE=1.1.0"));

    // A commit that breaks 1.1.0 and adds 1.2.0 is not taken: the sync names the file and the
    // reason, and the last good commit stays loaded.
    let broken = origin.push(&[
        (
            "catalog/app-1.1.0.yaml",
            format!("metadata: {{name: {product}, productVersion: nope}}\n"),
        ),
        (
            "catalog/app-1.2.0.yaml",
            product_yaml(&product, "1.2.0", &image),
        ),
    ]);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 500, "{reply}");
    assert_eq!(reply["success"], false);
    let message = reply["message"].as_str().unwrap();
    for expected in [
        format!(
            "source '{source}': commit {} is not taken, {} stays loaded",
            &broken[..12],
            &good[..12]
        ),
        "app-1.1.0.yaml: metadata.productVersion: 'nope' is not a SemVer version".into(),
    ] {
        assert!(message.contains(&expected), "{expected:?} in {message}");
    }
    let kept = source_status(&server, &source);
    assert_eq!(kept["revision"], good, "{kept}");
    assert_eq!(kept["errors"].as_array().unwrap().len(), 1, "{kept}");
    let (status, reply) = server.hook(
        "/api/hooks/upgrade",
        &key,
        Some(&upgrade_body(&stack, &env, "1.2.0")),
    );
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("Available versions: 1.1.0, 1.0.0"),
        "{reply}"
    );
    let table = server.cli(&["get", "catalogsources"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&source) && l.contains(" git ") && l.contains(&good[..12])),
        "{table}"
    );

    // After a crash the last good commit is what loads, though the remote's HEAD is broken.
    server.restart();
    let body = format!("{{\"stackName\":\"{stack}\",\"environmentId\":\"{env}\",\"wait\":true}}");
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    assert_eq!(reply["stackVersion"], "1.1.0");
    assert_eq!(source_status(&server, &source)["revision"], good);

    // With the remote gone as well, a restart still loads the last good commit from the clone
    // rsgo keeps, before it answers: the first hook after it finds the version, and the failed
    // fetch is reported on the source.
    origin.take_offline();
    server.restart();
    assert!(
        server
            .log()
            .contains("catalog loaded as it was last synced versions=2"),
        "{}",
        server.log()
    );
    let (status, reply) = server.hook("/api/hooks/redeploy", &key, Some(&body));
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    assert_eq!(reply["stackVersion"], "1.1.0");
    let offline = wait_for(
        "the failed fetch on the source's status",
        Duration::from_secs(30),
        || {
            let status = source_status(&server, &source);
            let errors = status["errors"].to_string();
            errors
                .contains("keeping its last good catalog")
                .then_some(status)
        },
    );
    assert_eq!(offline["revision"], good, "{offline}");
    assert_eq!(offline["versionsLoaded"], 2, "{offline}");
}

/// Pack files in the clone rsgo keeps for `source`: each fetch that receives objects adds one.
fn packs(server: &Server, source: &str) -> usize {
    let dir = server
        .data_dir()
        .join("git")
        .join(source)
        .join("repo.git/objects/pack");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0)
}

/// The `objects` of the last "git source fetched" line of the server's log.
fn last_fetched_objects(server: &Server) -> u64 {
    let log = server.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("git source fetched"))
        .unwrap_or_else(|| panic!("no fetch logged:\n{log}"));
    let value = line.split("objects=").nth(1).unwrap();
    value.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn git_daemon_fetches_are_incremental_and_an_unreachable_remote_is_named() {
    let product = unique("daemonapp");
    let origin = Origin::new();
    // A compose folder travels too: its `.env` and `VERSION` are written out with the YAML.
    let compose = unique("composed");
    origin.push(&[
        ("app-1.0.0.yaml", product_yaml(&product, "1.0.0", "img:1")),
        (
            &format!("{compose}/compose.yaml"),
            "services: {web: {image: 'img:${TAG}'}}\n".into(),
        ),
        (&format!("{compose}/.env"), "TAG=7\n".into()),
        (&format!("{compose}/VERSION"), "0.3.0\n".into()),
    ]);
    let daemon = Daemon::serve(&origin);
    let server = Server::start(&[]);
    let key = server.key(&["Hooks.SyncSources"]);
    let source = unique("daemon");
    server.apply(&git_source(&source, &daemon.url(), None));
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    let first = packs(&server, &source);
    assert!(first >= 1, "the first fetch received a pack");
    let products = source_status(&server, &source)["products"].clone();
    assert!(
        products
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"product": compose, "versions": ["0.3.0"]})),
        "{products}"
    );

    // Nothing new on the remote: the second sync receives no objects and writes no pack.
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(packs(&server, &source), first);
    assert_eq!(last_fetched_objects(&server), 0);

    // A new commit brings only what is new.
    let commit = origin.push(&[("app-1.1.0.yaml", product_yaml(&product, "1.1.0", "img:1"))]);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(packs(&server, &source), first + 1);
    let objects = last_fetched_objects(&server);
    assert!(
        (1..=4).contains(&objects),
        "a commit, a tree and one blob, not the history: {objects}"
    );
    assert_eq!(source_status(&server, &source)["revision"], commit);

    // A remote nobody serves fails the sync, names the source, and keeps what was loaded.
    let gone = unique("gone");
    server.apply(&git_source(
        &gone,
        &format!("git://127.0.0.1:{}/none.git", free_port()),
        None,
    ));
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 500, "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("source '{gone}': fetching git://127.0.0.1:")),
        "{message}"
    );
    assert!(
        message.contains("keeping its last good catalog"),
        "{message}"
    );
    assert_eq!(source_status(&server, &source)["revision"], commit);
    assert_eq!(source_status(&server, &source)["versionsLoaded"], 3);

    // The same commit read below another path is read afresh, not from the tree written before;
    // the compose project now at the top takes the folder's name.
    server.apply(&git_source(&source, &daemon.url(), Some(&compose)));
    wait_for(
        "the source read below its new path",
        Duration::from_secs(30),
        || {
            let status = source_status(&server, &source);
            (status["products"] == serde_json::json!([{"product": compose, "versions": ["0.3.0"]}]))
                .then_some(())
        },
    );
}

#[test]
fn git_sources_are_checked_when_applied() {
    let data = TempDir::new().unwrap();
    let cases = [
        (
            "{url: 'http://git.example.com/c.git', secretRef: {name: creds}}",
            "rsgo sends credentials only over https://",
        ),
        (
            "{url: 'git://git.example.com/c.git', secretRef: {name: creds}}",
            "takes no credentials; a Secret is for https:// and ssh:// remotes",
        ),
        (
            "{url: 'ftp://example.com/c.git'}",
            "must use https://, http://, ssh://, git:// or file://",
        ),
        (
            "{url: 'file:///srv/c.git', ref: '../main'}",
            "is not a branch, tag or commit name",
        ),
        (
            "{url: 'file:///srv/c.git', path: '../up'}",
            "must be a folder inside the repository",
        ),
        (
            "{url: 'file:///srv/c.git', interval: 1s}",
            "is shorter than 10 s",
        ),
        (
            "{url: 'file:///srv/c.git', interval: soon}",
            "spec.git.interval: 'soon' is not a duration",
        ),
    ];
    for (git_spec, expected) in cases {
        let file = data.path().join("source.yaml");
        std::fs::write(
            &file,
            format!("apiVersion: rsgo.io/v1alpha1\nkind: CatalogSource\nmetadata: {{name: s}}\nspec:\n  git: {git_spec}\n"),
        )
        .unwrap();
        let output = rsgo(data.path(), &["apply", "-f", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{git_spec}: {stderr}"
        );
    }
    let file = data.path().join("both.yaml");
    std::fs::write(
        &file,
        "apiVersion: rsgo.io/v1alpha1\nkind: CatalogSource\nmetadata: {name: s}\nspec:\n  directory: {path: /srv}\n  git: {url: 'file:///srv/c.git'}\n",
    )
    .unwrap();
    let output = rsgo(data.path(), &["apply", "-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("set either spec.directory or spec.git, not both"),
        "{stderr}"
    );
}

#[test]
fn a_source_with_an_interval_fetches_new_commits_on_its_own() {
    let product = unique("tickapp");
    let origin = Origin::new();
    let first = origin.push(&[("app-1.0.0.yaml", product_yaml(&product, "1.0.0", "img:1"))]);
    let server = Server::start(&[]);
    let source = unique("tick");
    server.apply(&format!(
        "{}    interval: 10s\n",
        git_source(&source, &origin.file_url(), None)
    ));
    wait_for("the first sync", Duration::from_secs(30), || {
        (source_status(&server, &source)["revision"] == first).then_some(())
    });
    let second = origin.push(&[("app-1.1.0.yaml", product_yaml(&product, "1.1.0", "img:1"))]);
    // No hook is called: the interval alone brings the new commit.
    let status = wait_for("the interval's fetch", Duration::from_secs(60), || {
        let status = source_status(&server, &source);
        (status["revision"] == second).then_some(status)
    });
    assert_eq!(status["versionsLoaded"], 2, "{status}");
    assert!(
        server
            .log()
            .contains("git sources fetched on their interval")
    );
}

#[test]
fn a_compose_folder_with_an_override_and_env_deploys_with_the_merged_settings() {
    let image = format!("{}/{}/notes:latest", registry(), unique("notes"));
    build_and_push(&image, "v1");
    let files = example_product("notes");
    let manifests: Vec<(&str, String)> =
        files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let server = Server::start(&manifests);
    let (env, stack, port) = (server.environment.clone(), unique("notes"), free_port());
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  environment: {env}\n  product: notes\n  variables: {{IMAGE: '{image}', PORT: '{port}'}}\n"
    ));
    let status = server.wait_phase(&stack, "Running");
    assert_eq!(status["deployedVersion"], "1.0.0", "{status}");
    // The override's environment is merged over the compose file's.
    let web = server.name(&stack, "web");
    let web_env = env_of(&web);
    for expected in ["MODE=staging", "LOG_LEVEL=debug"] {
        assert!(web_env.contains(expected), "{expected} in {web_env}");
    }
    // The one-shot job ran first (service_completed_successfully) with the .env default.
    let setup = server.name(&stack, "setup");
    assert_eq!(inspect(&setup, "{{.State.ExitCode}}"), "0");
    let page = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&page.stdout).trim(),
        "hello from a compose project"
    );
    let sources = server.cli(&["get", "catalogsources", "-o", "json"]);
    assert!(sources.contains("\"notes\""), "{sources}");
}

#[test]
fn password_values_are_never_shown_by_rsgo_get_or_the_log() {
    let image = format!("{}/{}/app:latest", registry(), unique("secret"));
    build_and_push(&image, "v1");
    let product = unique("vault");
    let manifest = |version: &str| {
        format!(
            "metadata: {{name: {product}, productVersion: '{version}'}}\nvariables:\n  DB_PASSWORD: {{type: Password, required: true}}\n  MODE: {{default: plain}}\nservices:\n  app:\n    image: {image}\n    environment: {{DB_PASSWORD: '${{DB_PASSWORD}}', MODE: '${{MODE}}'}}\n"
        )
    };
    let server = Server::start(&[("a.yaml", manifest("1.0.0")), ("b.yaml", manifest("1.1.0"))]);
    let (env, stack, secret) = (server.environment.clone(), unique("st"), "s3cr3t-Pa55");
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  environment: {env}\n  product: {product}\n  version: '1.0.0'\n  variables: {{DB_PASSWORD: '{secret}', MODE: visible}}\n"
    ));
    server.wait_phase(&stack, "Running");
    let key = server.key(&["Hooks.Upgrade"]);
    let body = format!(
        "{{\"stackName\":\"{stack}\",\"environmentId\":\"{env}\",\"targetVersion\":\"1.1.0\",\"variables\":{{\"DB_PASSWORD\":\"{secret}-2\"}},\"wait\":true}}"
    );
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&body));
    assert_eq!(status, 200, "{reply}");
    assert!(!reply.to_string().contains(secret));
    // The container gets the value; rsgo's own output never shows it.
    assert!(env_of(&server.name(&stack, "app")).contains(&format!("DB_PASSWORD={secret}-2")));
    let stacks = server.cli(&["get", "stacks", &stack, "--environment", &env, "-o", "json"]);
    let shown: Value = serde_json::from_str(&stacks).unwrap();
    assert_eq!(
        shown["spec"]["variables"]["DB_PASSWORD"], "(hidden)",
        "{stacks}"
    );
    assert_eq!(shown["spec"]["variables"]["MODE"], "visible", "{stacks}");
    assert_eq!(
        shown["status"]["hiddenVariables"],
        serde_json::json!(["DB_PASSWORD"])
    );
    let records = server.cli(&["get", "deployments", "--environment", &env, "-o", "yaml"]);
    assert!(records.contains("DB_PASSWORD: (hidden)"), "{records}");
    for output in [&stacks, &records, &server.log()] {
        assert!(!output.contains(secret), "{output}");
    }
}

#[test]
fn an_https_remote_is_fetched_with_the_token_of_a_secret() {
    let product = unique("httpsapp");
    let origin = Origin::new();
    let commit = origin.push(&[("app-1.0.0.yaml", product_yaml(&product, "1.0.0", "img:1"))]);
    let (user, token) = ("ci-bot", "glpat-t0ken-for-rsgo-tests");
    let https = GitHttps::serve(origin.dir.path(), user, token);
    let server = Server::start_with(
        &[],
        Options {
            env: vec![("SSL_CERT_FILE".into(), https.ca_file.display().to_string())],
            ..Default::default()
        },
    );
    let key = server.key(&["Hooks.SyncSources"]);
    let source = unique("https");
    let url = format!("{}/origin.git", https.base);

    // Without credentials the remote refuses, and the sync says which source failed.
    server.apply(&git_source(&source, &url, None));
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 500, "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("source '{source}': fetching {url}")),
        "{message}"
    );
    assert!(https.refused.load(Ordering::SeqCst) > 0);

    // A Secret as Kubernetes has it (stringData), named by secretRef, gives the token.
    server.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: catalog-credentials}}\ntype: kubernetes.io/basic-auth\nstringData: {{username: {user}, password: {token}}}\n"
    ));
    let with_secret = format!(
        "{}    secretRef: {{name: catalog-credentials}}\n",
        git_source(&source, &url, None)
    );
    server.apply(&with_secret);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    assert!(https.authorized.load(Ordering::SeqCst) > 0);
    assert_eq!(source_status(&server, &source)["revision"], commit);

    // A wrong token is refused by the remote and named by source, never shown.
    server.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: catalog-credentials}}\nstringData: {{username: {user}, password: not-{token}}}\n"
    ));
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 500, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains(&format!("source '{source}'"))
    );
    assert_eq!(
        source_status(&server, &source)["revision"],
        commit,
        "the last good revision stays"
    );

    let table = server.cli(&["get", "secrets"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("catalog-credentials") && l.contains("password,username")),
        "{table}"
    );
    let json = server.cli(&["get", "secrets", "catalog-credentials", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap()["data"],
        serde_json::json!({"password": "(hidden)", "username": "(hidden)"})
    );
    for output in [&table, &json, &server.log(), &reply.to_string()] {
        assert!(!output.contains(token), "{output}");
    }
}

#[test]
fn secrets_are_checked_when_applied_and_never_echoed() {
    let data = TempDir::new().unwrap();
    let cases = [
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: 'n0t base64 s3cr3t'}\n",
            "data values in base64",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: team}\nstringData: {password: s3cr3t}\n",
            "remove metadata.namespace",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/tls\nstringData: {password: s3cr3t}\n",
            "type 'kubernetes.io/tls' is not one rsgo reads",
        ),
        (
            "apiVersion: rsgo.io/v1alpha1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: s3cr3t}\n",
            "apiVersion must be v1",
        ),
    ];
    for (yaml, expected) in cases {
        let file = data.path().join("secret.yaml");
        std::fs::write(&file, yaml).unwrap();
        let output = rsgo(data.path(), &["apply", "-f", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{yaml}: {stderr}"
        );
        assert!(!stderr.contains("s3cr3t"), "{stderr}");
    }
    let file = data.path().join("good.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: czNjcjN0}\nstringData: {username: bot}\n",
    )
    .unwrap();
    let apply = |expected: &str| {
        let output = rsgo(data.path(), &["apply", "-f", file.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(stdout.trim(), expected);
    };
    apply("secret/s created");
    apply("secret/s unchanged");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {username: bot, password: n3w}\n",
    )
    .unwrap();
    apply("secret/s configured");
    let https_with_password = data.path().join("source.yaml");
    std::fs::write(
        &https_with_password,
        "apiVersion: rsgo.io/v1alpha1\nkind: CatalogSource\nmetadata: {name: c}\nspec:\n  git: {url: 'https://bot:s3cr3t@git.example.com/c.git'}\n",
    )
    .unwrap();
    let output = rsgo(
        data.path(),
        &["apply", "-f", https_with_password.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("put credentials in a Secret"), "{stderr}");
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

#[test]
fn variables_from_a_secret_reach_the_container_and_never_the_stack() {
    let image = format!("{}/{}/app:latest", registry(), unique("fromsecret"));
    build_and_push(&image, "v1");
    let product = unique("db");
    let manifest = |version: &str| {
        format!(
            "metadata: {{name: {product}, productVersion: '{version}'}}\nvariables:\n  DB_PASSWORD: {{type: Password, required: true}}\nservices:\n  app:\n    image: {image}\n    environment: {{DB_PASSWORD: '${{DB_PASSWORD}}', RELEASE: '{version}'}}\n"
        )
    };
    let server = Server::start(&[("a.yaml", manifest("1.0.0")), ("b.yaml", manifest("1.1.0"))]);
    let (env, stack, secret) = (server.environment.clone(), unique("st"), "fr0m-a-s3cr3t");
    let stack_yaml = format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  environment: {env}\n  product: {product}\n  version: '1.0.0'\n  variablesFrom:\n    DB_PASSWORD: {{secretKeyRef: {{name: shop-db, key: password}}}}\n"
    );
    // Before the Secret exists the stack fails and says which Secret it waits for.
    server.apply(&stack_yaml);
    let status = server.wait_phase(&stack, "Failed");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("takes its value from Secret 'shop-db', which does not exist"),
        "{status}"
    );
    server.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: shop-db}}\nstringData: {{password: {secret}}}\n"
    ));
    let status = server.wait_phase(&stack, "Running");
    assert_eq!(status["deployedVersion"], "1.0.0");
    let container = server.name(&stack, "app");
    assert!(env_of(&container).contains(&format!("DB_PASSWORD={secret}")));

    // An upgrade renders with the Secret's value; a request may not set the variable itself.
    let key = server.key(&["Hooks.Upgrade"]);
    let body = |variables: &str| {
        format!(
            "{{\"stackName\":\"{stack}\",\"environmentId\":\"{env}\",\"targetVersion\":\"1.1.0\",\"variables\":{variables},\"wait\":true}}"
        )
    };
    let (status, reply) = server.hook(
        "/api/hooks/upgrade",
        &key,
        Some(&body("{\"DB_PASSWORD\":\"x\"}")),
    );
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("takes its value from Secret 'shop-db'")
    );
    let (status, reply) = server.hook("/api/hooks/upgrade", &key, Some(&body("{}")));
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    let envs = env_of(&container);
    assert!(envs.contains("RELEASE=1.1.0") && envs.contains(&format!("DB_PASSWORD={secret}")));

    let shown = server.cli(&["get", "stacks", &stack, "--environment", &env, "-o", "json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown["spec"]["variablesFrom"]["DB_PASSWORD"]["secretKeyRef"],
        serde_json::json!({"name": "shop-db", "key": "password"})
    );
    assert!(!shown.to_string().contains(secret));
    assert!(!server.log().contains(secret));
}

#[test]
fn every_process_follows_the_revision_another_one_synced() {
    let product = unique("follow");
    let origin = Origin::new();
    origin.push(&[
        ("app-1.0.0.yaml", product_yaml(&product, "1.0.0", "img:1")),
        ("app-1.1.0.yaml", product_yaml(&product, "1.1.0", "img:1")),
    ]);
    let server = Server::start(&[]);
    let source = unique("shared");
    server.apply(&git_source(&source, &origin.file_url(), None));
    wait_for("the first sync", Duration::from_secs(30), || {
        (source_status(&server, &source)["versionsLoaded"] == 2).then_some(())
    });
    let second = server.second("second.log");
    wait_for(
        "the second process to load the source",
        Duration::from_secs(30),
        || {
            second
                .log()
                .contains(&format!("trigger={source}"))
                .then_some(())
        },
    );
    // A commit drops 1.1.0; only the first process is asked to sync.
    std::fs::remove_file(origin.work.join("app-1.1.0.yaml")).unwrap();
    let commit = origin.push(&[]);
    let key = server.key(&["Hooks.SyncSources", "Hooks.Upgrade"]);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(source_status(&server, &source)["revision"], commit);
    // The second process sees the new revision in the status and loads it too, so it no longer
    // offers the dropped version.
    wait_for(
        "the second process to follow",
        Duration::from_secs(30),
        || {
            // The line is logged before the sync it announces; wait for that sync to end too.
            let log = second.log();
            let (_, after) = log.split_once("following a revision synced elsewhere")?;
            after
                .contains(&format!("catalog synced trigger={source}"))
                .then_some(())
        },
    );
    let env = &server.environment;
    let stack = unique("st");
    server.apply(&format!(
        "apiVersion: rsgo.io/v1alpha1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  environment: {env}\n  product: {product}\n  version: '1.0.0'\n"
    ));
    let body = upgrade_body(&stack, env, "1.1.0");
    let (status, reply) = crate::support::curl(
        "POST",
        &format!("{}/api/hooks/upgrade", second.url),
        Some(&key),
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("Available versions: 1.0.0."),
        "{reply}"
    );
}

/// `sshd` on 127.0.0.1 that lets one key in as the user running the tests; stopped when
/// dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = TempDir::new().unwrap();
        for key in ["host_key", "client_key"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(key))
                .status()
                .expect("ssh-keygen is installed by scripts/test.sh");
            assert!(status.success());
        }
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        // sshd wants its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let at = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n",
            at("host_key"),
            at("authorized_keys"),
            at("sshd.pid")
        );
        std::fs::write(dir.path().join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-f", &at("sshd_config")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sshd is installed by scripts/test.sh");
        wait_for("sshd to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Sshd { child, port, dir }
    }

    /// A `known_hosts` line for this server, with `key` (a `.pub` file of the folder).
    fn known_hosts(&self, key: &str) -> String {
        let public = std::fs::read_to_string(self.dir.path().join(key)).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[127.0.0.1]:{} {kind} {key}", self.port)
    }

    fn private_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("client_key")).unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Secret with `identity` and `known_hosts`, as YAML.
fn ssh_secret(name: &str, identity: &str, known_hosts: &str) -> String {
    let block = |text: &str| {
        text.lines()
            .map(|line| format!("    {line}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/ssh-auth\nstringData:\n  identity: |\n{}  known_hosts: |\n{}",
        block(identity),
        block(known_hosts)
    )
}

#[test]
fn an_ssh_remote_is_fetched_with_the_key_of_a_secret_and_its_host_key_is_checked() {
    let product = unique("sshapp");
    let origin = Origin::new();
    let commit = origin.push(&[("app-1.0.0.yaml", product_yaml(&product, "1.0.0", "img:1"))]);
    let sshd = Sshd::start();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        user.trim(),
        sshd.port,
        origin.dir.path().join("origin.git").display()
    );
    let server = Server::start(&[]);
    let key = server.key(&["Hooks.SyncSources"]);
    let identity = sshd.private_key();
    server.apply(&ssh_secret(
        "deploy-key",
        &identity,
        &sshd.known_hosts("host_key.pub"),
    ));
    let source = unique("ssh");
    server.apply(&format!(
        "{}    secretRef: {{name: deploy-key}}\n",
        git_source(&source, &url, None)
    ));
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 200, "{reply}\n{}", server.log());
    assert_eq!(source_status(&server, &source)["revision"], commit);
    // The sync the new source set off by itself has ended too, so no sync that read the right
    // host key is still under way when the wrong one is applied.
    wait_for("the source's own sync", Duration::from_secs(30), || {
        server
            .log()
            .contains(&format!("trigger={source}"))
            .then_some(())
    });

    // A host key other than the server's is a failed sync, never a fetch from an unknown host.
    server.apply(&ssh_secret(
        "deploy-key",
        &identity,
        &sshd.known_hosts("client_key.pub"),
    ));
    let pushed = origin.push(&[("app-1.1.0.yaml", product_yaml(&product, "1.1.0", "img:1"))]);
    let (status, reply) = server.hook("/api/hooks/sync-sources", &key, None);
    assert_eq!(status, 500, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains(&format!("source '{source}'"))
    );
    assert_eq!(source_status(&server, &source)["revision"], commit);
    assert_ne!(pushed, commit);

    let secret_line = identity.lines().nth(1).unwrap();
    for output in [&server.log(), &reply.to_string()] {
        assert!(!output.contains(secret_line), "{output}");
    }
}
