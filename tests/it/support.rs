//! Shared test plumbing: unique names, test images, a running `rsgo serve`, curl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no earlier run or other test uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{nanos:x}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The loopback registry that `scripts/test.sh` started.
pub fn registry() -> String {
    std::env::var("RSGO_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs the docker CLI and returns its trimmed stdout; fails the test when docker fails.
pub fn docker(args: &[&str]) -> String {
    let output = run(Command::new("docker").args(args));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Every file of one product in `examples/catalog`, as (path in the catalog, text) for
/// [`Server::start`].
pub fn example_product(product: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/catalog")
        .join(product);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (
                format!("{product}/{name}"),
                std::fs::read_to_string(&path).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Builds an image FROM scratch with busybox and a `/version` file holding `marker`, pushes it
/// to the test registry as `image`, and returns its id. The image carries the label
/// `rsgo.test-image`, by which `scripts/test-env.sh` removes the ones no container uses.
pub fn build_and_push(image: &str, marker: &str) -> String {
    let dir = TempDir::new().unwrap();
    let busybox = std::env::var("RSGO_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    std::fs::copy(&busybox, dir.path().join("busybox"))
        .expect("busybox-static is installed by scripts/test.sh");
    std::fs::write(dir.path().join("version"), marker).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nLABEL rsgo.test-image=true\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         COPY version /version\nCMD [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
    )
    .unwrap();
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", image])
        .arg(dir.path()));
    docker(&["push", "-q", image]);
    docker(&["image", "inspect", "-f", "{{.Id}}", image])
}

/// The key index of `store`, once its first listing is complete.
pub async fn key_index(store: &std::sync::Arc<dyn rsgo::store::Store>) -> rsgo::auth::KeyIndex {
    let index = rsgo::auth::KeyIndex::follow(store.clone()).await.unwrap();
    let start = Instant::now();
    while !index.is_ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the key index never loaded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    index
}

/// Polls `check` until it returns `Some`, or fails the test after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The rsgo binary with a data directory.
pub fn rsgo(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rsgo"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RSGO_LOG", "warn")
        .output()
        .expect("running rsgo")
}

/// Like [`rsgo`], failing the test unless it succeeds; returns stdout.
pub fn rsgo_ok(data_dir: &Path, args: &[&str]) -> String {
    let output = rsgo(data_dir, args);
    assert!(
        output.status.success(),
        "rsgo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A running `rsgo serve` with its own data and catalog directories and environment.
pub struct Server {
    child: Child,
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Holds the server's log and its data directory.
    pub data: TempDir,
    data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Catalog directory the server was started with.
    pub catalog: PathBuf,
    /// Environment the test's stacks run in (unique, on the local engine).
    pub environment: String,
    _catalog_dir: TempDir,
}

/// Work done on a data directory before a server uses it.
pub type Prepare = Box<dyn FnOnce(&Path)>;

/// How a test wants its server.
#[derive(Default)]
pub struct Options {
    /// Extra `rsgo serve` arguments (`--resync-seconds` among them replaces the tests' 2 s).
    pub args: Vec<String>,
    /// Keep the database in this subdirectory of the data directory, made by `prepare`.
    pub data_subdir: Option<String>,
    /// Runs on the data directory before anything is written to it.
    pub prepare: Option<Prepare>,
    /// The test environment's Docker host (default: the local engine's socket).
    pub docker_host: Option<String>,
    /// Extra environment variables of `rsgo serve`.
    pub env: Vec<(String, String)>,
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server whose catalog directory holds `manifests` (file name, YAML).
    pub fn start(manifests: &[(&str, String)]) -> Server {
        Self::start_with(manifests, Options::default())
    }

    /// Like [`Server::start`], as `options` say.
    pub fn start_with(manifests: &[(&str, String)], options: Options) -> Server {
        let data = TempDir::new().unwrap();
        let data_dir = match &options.data_subdir {
            Some(sub) => data.path().join(sub),
            None => data.path().to_owned(),
        };
        std::fs::create_dir_all(&data_dir).unwrap();
        if let Some(prepare) = options.prepare {
            prepare(&data_dir);
        }
        let catalog_dir = TempDir::new().unwrap();
        for (name, text) in manifests {
            let path = catalog_dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let environment = unique("env");
        let host = options
            .docker_host
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let env_yaml = format!(
            "apiVersion: rsgo.io/v1alpha1\nkind: Environment\nmetadata: {{name: {environment}}}\nspec:\n  docker: {{host: \"{host}\"}}\n"
        );
        let file = data.path().join("env.yaml");
        std::fs::write(&file, env_yaml).unwrap();
        rsgo_ok(&data_dir, &["apply", "-f", file.to_str().unwrap()]);
        let mut args: Vec<String> = Vec::new();
        if !options.args.iter().any(|arg| arg == "--resync-seconds") {
            args.extend(["--resync-seconds".to_owned(), "2".to_owned()]);
        }
        args.push("--catalog".to_owned());
        args.push(catalog_dir.path().to_string_lossy().into_owned());
        args.extend(options.args);
        let env = options.env;
        let (child, url) = spawn_serve(&data_dir, &args, &env, &data.path().join("serve.log"));
        let server = Server {
            child,
            url,
            data,
            data_dir,
            args,
            env,
            catalog: catalog_dir.path().to_owned(),
            environment,
            _catalog_dir: catalog_dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        wait_for("rsgo serve to answer", Duration::from_secs(30), || {
            curl("GET", &format!("{}/readyz", self.url), None, None)
                .ok()
                .filter(|(s, _)| *s == 200)
        });
    }

    /// Kills the server (SIGKILL) and starts it again on the same data; the new log is appended
    /// to the old one.
    pub fn restart(&mut self) {
        self.kill();
        let (child, url) = spawn_serve(&self.data_dir, &self.args, &self.env, &self.log_path());
        self.child = child;
        self.url = url;
        self.wait_ready();
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A second `rsgo serve` on this server's data directory, logging to `log`.
    pub fn second(&self, log: &str) -> Second {
        let path = self.data.path().join(log);
        let (child, url) = spawn_serve(&self.data_dir, &self.args, &self.env, &path);
        let second = Second {
            child,
            url,
            log: path,
        };
        wait_for(
            "the second rsgo serve to answer",
            Duration::from_secs(30),
            || {
                curl("GET", &format!("{}/readyz", second.url), None, None)
                    .ok()
                    .filter(|(s, _)| *s == 200)
            },
        );
        second
    }

    fn log_path(&self) -> PathBuf {
        self.data.path().join("serve.log")
    }

    /// The data directory the server runs on.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs the CLI against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> String {
        rsgo_ok(&self.data_dir, args)
    }

    /// Creates a key with `permissions` and returns it.
    pub fn key(&self, permissions: &[&str]) -> String {
        let name = unique("key");
        let mut args = vec!["apikey", "create", "--name", &name];
        for p in permissions {
            args.extend(["--permission", p]);
        }
        self.cli(&args)
    }

    /// Applies YAML through the CLI.
    pub fn apply(&self, yaml: &str) {
        let file = self.data.path().join(format!("{}.yaml", unique("apply")));
        std::fs::write(&file, yaml).unwrap();
        self.cli(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// Calls a hook with curl; returns status and JSON body.
    pub fn hook(&self, path: &str, key: &str, body: Option<&str>) -> (u16, Value) {
        curl("POST", &format!("{}{path}", self.url), Some(key), body).expect("curl runs")
    }

    /// Waits for a deployment record to end and returns its JSON.
    pub fn wait_deployment(&self, key: &str, id: &str) -> Value {
        wait_for(
            &format!("deployment {id} to finish"),
            Duration::from_secs(120),
            || {
                let (status, body) = curl(
                    "GET",
                    &format!("{}/api/deployments/{id}", self.url),
                    Some(key),
                    None,
                )
                .ok()?;
                assert_eq!(status, 200, "{body}");
                (!matches!(body["phase"].as_str(), Some("Pending" | "Running"))).then_some(body)
            },
        )
    }

    /// Docker name of a stack's container, volume or network in this server's environment.
    pub fn name(&self, stack: &str, part: &str) -> String {
        Self::name_in(&self.environment, stack, part)
    }

    /// Docker name of a stack's container, volume or network in `environment`.
    pub fn name_in(environment: &str, stack: &str, part: &str) -> String {
        format!("{environment}_{stack}_{part}")
    }

    /// Waits (up to 120 s) until a stack's status shows `phase`, and returns the status.
    pub fn wait_phase(&self, stack: &str, phase: &str) -> Value {
        wait_for(
            &format!("stack {stack} to be {phase}"),
            Duration::from_secs(120),
            || {
                let status = self.stack_status(stack);
                (status["phase"] == phase).then_some(status)
            },
        )
    }

    /// The status of a stack in this server's environment, as `rsgo get` shows it.
    pub fn stack_status(&self, stack: &str) -> Value {
        let out = self.cli(&[
            "get",
            "stacks",
            stack,
            "--environment",
            &self.environment,
            "-o",
            "json",
        ]);
        serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
    }

    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// Starts `rsgo serve` on a free port with `args`, appending its log to `log`.
fn spawn_serve(
    data_dir: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> (Child, String) {
    let port = free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_rsgo"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("RSGO_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("starting rsgo serve");
    (child, format!("http://127.0.0.1:{port}"))
}

/// A second `rsgo serve` on a [`Server`]'s data directory; killed when dropped.
pub struct Second {
    child: Child,
    /// Base URL.
    pub url: String,
    log: PathBuf,
}

impl Second {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Second {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A request the server sent the engine just before it was killed (a rollout's next
        // container, say) may complete after the first pass: a second one a second later
        // removes what it made.
        if remove_environment(&self.environment) {
            std::thread::sleep(Duration::from_secs(1));
            remove_environment(&self.environment);
        }
    }
}

/// Removes the containers of `environment`, then the networks and volumes they used: networks
/// are a scarce resource (the engine's address pools), so a test leaves none behind. Returns
/// whether there was any.
fn remove_environment(environment: &str) -> bool {
    let filter = format!("label=io.rsgo.environment={environment}");
    let mut found = false;
    for (list, remove) in [
        (vec!["ps", "-aq"], vec!["rm", "-f"]),
        (vec!["network", "ls", "-q"], vec!["network", "rm"]),
        (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
    ] {
        let Ok(out) = Command::new("docker")
            .args(&list)
            .args(["--filter", &filter])
            .output()
        else {
            continue;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            found = true;
            let _ = Command::new("docker").args(&remove).args(&ids).output();
        }
    }
    found
}

/// One HTTP request with curl: `(status, parsed JSON body or Value::Null)`.
pub fn curl(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut command = Command::new("curl");
    command.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(key) = key {
        command.args(["-H", &format!("X-Api-Key: {key}")]);
    }
    if let Some(body) = body {
        command.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let output = command.output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').ok_or("no status line")?;
    let status: u16 = code
        .trim()
        .parse()
        .map_err(|_| format!("bad status '{code}'"))?;
    if status == 0 {
        return Err("connection failed".into());
    }
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// `docker inspect -f FORMAT target`.
pub fn inspect(target: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, target])
}

/// `docker inspect -f FORMAT target`, or `None` while there is no such target (such as between
/// the removal and the creation of a container that is being replaced).
pub fn try_inspect(target: &str, format: &str) -> Option<String> {
    let output = Command::new("docker")
        .args(["inspect", "-f", format, target])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// What a deployment record says its rollout did to each service, in order.
pub fn service_actions(record: &Value) -> Vec<&str> {
    record["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect()
}
