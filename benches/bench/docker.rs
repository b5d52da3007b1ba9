//! Measurements against the local Docker engine: a 10-service redeploy beside docker-compose,
//! starting many stacks beside the engine's own create rate, and what a resync pass costs.
//! Everything they create carries a `rsgo-bench` name or label and is removed at the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::engine_proxy::{Call, EngineProxy};
use crate::server::{Server, http};
use crate::{ROUNDS, fixtures};

const SOCKET: &str = "/var/run/docker.sock";

fn registry() -> String {
    std::env::var("RSGO_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// Runs a command, failing the benchmark when it fails; returns trimmed stdout.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// Builds the benchmark image (busybox FROM scratch, a shell that exits on TERM) and pushes it
/// to the local registry under each of `tags`.
pub fn push_images(tags: &[String]) {
    let dir = tempfile::TempDir::new().expect("a temporary directory");
    let busybox = std::env::var("RSGO_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    std::fs::copy(&busybox, dir.path().join("busybox")).expect("busybox-static is installed");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         CMD [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
    )
    .expect("writing a Dockerfile");
    let first = &tags[0];
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", first])
        .arg(dir.path()));
    for tag in tags {
        docker(&["tag", first, tag]);
        docker(&["push", "-q", tag]);
    }
}

/// The one-service benchmark image, built and pushed once per run.
pub fn bench_image() -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let image = format!("{}/rsgo-bench/app:1", registry());
            push_images(std::slice::from_ref(&image));
            image
        })
        .clone()
}

/// Removes every container and network rsgo made for the environment `environment`.
pub fn clean_up(environment: &str) {
    let label = format!("label=io.rsgo.environment={environment}");
    let ids = docker(&["ps", "-aq", "--filter", &label]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    for chunk in ids.chunks(100) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk);
        docker(&args);
    }
    docker(&["network", "prune", "-f", "--filter", &label]);
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A 10-service stack redeployed with fresh images (pull, then recreate), by rsgo and by
/// docker-compose on the same images, interleaved.
pub fn redeploy_beside_compose() {
    let registry = registry();
    let images: Vec<String> = (0..10)
        .map(|n| format!("{registry}/rsgo-bench/svc{n}:1"))
        .collect();
    push_images(&images);
    let catalog = tempfile::TempDir::new().expect("a temporary directory");
    fixtures::write_manifest(catalog.path(), "ten", &images, 10);
    let environment = "rsgobenchten";
    let objects = format!(
        "{}{}{}",
        fixtures::environment(environment, &format!("unix://{SOCKET}")),
        fixtures::keys(1),
        fixtures::stacks(environment, "ten", "s", 1)
    );
    let server = Server::start(&objects, catalog.path(), &[]);
    let compose = tempfile::TempDir::new().expect("a temporary directory");
    let mut yaml = String::from("version: '2.4'\nservices:\n");
    for (n, image) in images.iter().enumerate() {
        yaml.push_str(&format!("  svc{n}:\n    image: {image}\n"));
    }
    std::fs::write(compose.path().join("docker-compose.yml"), yaml).expect("a compose file");
    // A project of its own per run: a network the engine failed to release in an earlier run
    // ("has active endpoints" with no container left) cannot get in this one's way.
    let project = format!("rsgobench{}", std::process::id());
    let compose_command = |args: &[&str]| {
        let mut command = Command::new("docker-compose");
        command
            .args(["-p", &project])
            .args(args)
            .current_dir(compose.path());
        command
    };
    let compose_cmd = |args: &[&str]| run(&mut compose_command(args));
    let redeploy = || {
        let body =
            format!(r#"{{"stackName": "s-0", "environmentId": "{environment}", "wait": true}}"#);
        let (status, answer) = http(
            server.addr,
            "POST",
            "/api/hooks/redeploy",
            Some(&fixtures::key(0)),
            &body,
        )
        .expect("rsgo answers");
        assert_eq!(status, 200, "the redeploy failed: {answer}");
    };
    // Both start from a running stack.
    redeploy();
    compose_cmd(&["up", "-d", "-t", "10"]);
    let floor = |recreate: bool| engine_floor(&images, recreate);
    floor(false);
    let (mut rsgo_times, mut compose_times, mut floor_times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        redeploy();
        rsgo_times.push(start.elapsed());
        let start = Instant::now();
        compose_cmd(&["pull", "-q"]);
        compose_cmd(&["up", "-d", "--force-recreate", "-t", "10"]);
        compose_times.push(start.elapsed());
        floor_times.push(floor(true));
    }
    // The figures are taken; an engine that keeps the network does not fail the benchmark.
    let down = compose_command(&["down", "-t", "1"])
        .output()
        .expect("running docker-compose");
    if !down.status.success() {
        eprintln!(
            "bench: docker-compose down: {}",
            String::from_utf8_lossy(&down.stderr).trim()
        );
    }
    for n in 0..images.len() {
        docker(&["rm", "-f", &format!("rsgo-bench-floor-{n}")]);
    }
    drop(server);
    clean_up(environment);
    let (rsgo, compose, floor) = (
        median(rsgo_times),
        median(compose_times),
        median(floor_times),
    );
    println!("\n## 10-service redeploy (pull, then recreate)");
    println!(
        "| rsgo | docker-compose | the engine's floor | rsgo / docker-compose | rsgo / floor |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.2}× | {:.2}× |",
        secs(rsgo),
        secs(compose),
        secs(floor),
        rsgo.as_secs_f64() / compose.as_secs_f64(),
        rsgo.as_secs_f64() / floor.as_secs_f64()
    );
}

/// The engine's floor for a redeploy of `images`: one `docker` CLI per service, all at once,
/// each pulling its image, then (when `recreate`) stopping and removing the service's
/// container, then running a new one. Returns how long the slowest took.
fn engine_floor(images: &[String], recreate: bool) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for (n, image) in images.iter().enumerate() {
            scope.spawn(move || {
                let name = format!("rsgo-bench-floor-{n}");
                docker(&["pull", "-q", image]);
                if recreate {
                    docker(&["stop", "-t", "10", &name]);
                    docker(&["rm", &name]);
                }
                docker(&["run", "-d", "--name", &name, image]);
            });
        }
    });
    start.elapsed()
}

/// Starts `count` containers of `image` with the `docker` CLI through the engine at `host`,
/// `parallel` at a time, each on a network of its own as a stack's is: the engine's own rate, to
/// set rsgo's beside.
fn engine_rate(image: &str, count: usize, parallel: usize, host: &str) -> Duration {
    let label = "label=rsgo-bench-direct=true";
    let start = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..parallel {
            scope.spawn(move || {
                for n in (worker..count).step_by(parallel) {
                    let name = format!("rsgo-bench-direct-{n}");
                    docker(&[
                        "-H",
                        host,
                        "network",
                        "create",
                        "--label",
                        "rsgo-bench-direct=true",
                        &name,
                    ]);
                    docker(&[
                        "-H",
                        host,
                        "run",
                        "-d",
                        "--label",
                        "rsgo-bench-direct=true",
                        "--network",
                        &name,
                        "--name",
                        &name,
                        image,
                    ]);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let ids = docker(&["ps", "-aq", "--filter", label]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    for chunk in ids.chunks(100) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk);
        docker(&args);
    }
    docker(&["network", "prune", "-f", "--filter", label]);
    elapsed
}

/// Running containers of an environment.
fn running(environment: &str) -> usize {
    docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.rsgo.environment={environment}"),
    ])
    .lines()
    .count()
}

/// Starting `stacks` new one-service stacks beside the engine's own rate for as many
/// containers, then the Docker calls and CPU time of a resync pass over them.
fn resync_at(catalog: &Path, image: &str, stacks: usize) {
    let environment = format!("rsgobench{stacks}");
    let proxy = EngineProxy::start();
    let direct = engine_rate(image, stacks, 4, &proxy.host());
    let direct_calls = proxy.take_timed();
    let objects = format!(
        "{}{}",
        fixtures::environment(&environment, &proxy.host()),
        fixtures::stacks(&environment, "bench", "s", stacks)
    );
    let period = 10u64;
    let start = Instant::now();
    let server = Server::start(
        &objects,
        catalog,
        &["--resync-seconds", &period.to_string()],
    );
    // The engine slows down as its networks grow (at 1 000 its own start took 10 to 32 minutes
    // on the same machine on different days), so rsgo gets three times the engine's own time.
    let limit = (direct * 3).max(Duration::from_secs(600));
    loop {
        let up = running(&environment);
        if up >= stacks {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "{up} of {stacks} stacks running after {} (the engine's own start took {}); \
             the server's warnings and errors: {}",
            secs(start.elapsed()),
            secs(direct),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = start.elapsed();
    let most_in_flight = proxy.most_in_flight();
    let start_calls = proxy.take_timed();
    let failures = server
        .log()
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .count();
    server.settle(Duration::from_secs(300));
    // The pass after the start still meets the start's last changes (a listing that the last
    // containers' events made stale, stacks whose status was just written); the three passes
    // measured are whole resync periods of a steady state after it.
    std::thread::sleep(Duration::from_secs(period));
    let passes = 3;
    proxy.take();
    let cpu = server.cpu();
    std::thread::sleep(Duration::from_secs(period * passes));
    let cpu = server.cpu() - cpu;
    let calls = proxy.take_timed();
    drop(server);
    println!("\n### {stacks} stacks");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| start {stacks} new stacks: rsgo / `docker network create` + `docker run` ×{stacks} (4 at a time) | {} / {} = {:.2}× |",
        secs(started),
        secs(direct),
        started.as_secs_f64() / direct.as_secs_f64()
    );
    println!("| warnings and errors logged while starting | {failures} |");
    println!("| most engine requests in flight at once while starting | {most_in_flight} |");
    print_calls(
        "Docker calls while starting, per stack",
        &start_calls,
        stacks,
    );
    print_calls("Docker calls per resync pass", &calls, passes as usize);
    println!(
        "\nThe engine's time over each kind of call while starting {stacks} stacks, the CLI's beside rsgo's:\n"
    );
    println!("| call | CLI: per stack | CLI: ms each | rsgo: per stack | rsgo: ms each |");
    println!("|---|---|---|---|---|");
    let kinds: std::collections::BTreeSet<&String> =
        direct_calls.keys().chain(start_calls.keys()).collect();
    let each = |calls: &BTreeMap<String, Call>, kind: &String| {
        calls.get(kind).map_or(" | ".to_owned(), |call| {
            format!(
                "{:.2} | {:.1}",
                call.count as f64 / stacks as f64,
                call.engine_time.as_secs_f64() * 1000.0 / call.count as f64
            )
        })
    };
    for kind in kinds {
        println!(
            "| {kind} | {} | {} |",
            each(&direct_calls, kind),
            each(&start_calls, kind)
        );
    }
    let total = |calls: &BTreeMap<String, Call>| {
        let time: Duration = calls.values().map(|call| call.engine_time).sum();
        time.as_secs_f64() * 1000.0 / stacks as f64
    };
    println!(
        "| engine time per stack, all calls | | {:.1} ms | | {:.1} ms |",
        total(&direct_calls),
        total(&start_calls)
    );
    println!(
        "| CPU per resync pass | {:.1} ms |",
        cpu.as_secs_f64() * 1000.0 / passes as f64
    );
    // The figures come first: at 1 000 stacks the engine takes many minutes to remove them.
    clean_up(&environment);
}

/// Prints Docker calls seen by the proxy, per `per` (stacks, passes): their sum under `title`,
/// then each kind.
fn print_calls(title: &str, calls: &BTreeMap<String, Call>, per: usize) {
    let per = per as f64;
    let total: u64 = calls.values().map(|call| call.count).sum();
    println!("| {title} | {:.1} |", total as f64 / per);
    for (kind, call) in calls {
        println!("| … {kind} | {:.2} |", call.count as f64 / per);
    }
}

/// How many networks the engine's address pools can hold; `None` when it uses its built-in
/// pools (room for about 30).
fn network_room() -> Option<u64> {
    let pools = docker(&["info", "--format", "{{json .DefaultAddressPools}}"]);
    let pools: serde_json::Value = serde_json::from_str(&pools).ok()?;
    let room = pools
        .as_array()?
        .iter()
        .filter_map(|pool| {
            let prefix: u32 = pool["Base"].as_str()?.split('/').nth(1)?.parse().ok()?;
            let size = u32::try_from(pool["Size"].as_u64()?).ok()?;
            Some(1u64 << size.saturating_sub(prefix).min(32))
        })
        .sum();
    Some(room)
}

/// The stack counts of the resync case: `RSGO_BENCH_STACKS` (comma-separated), else 100 and
/// 1 000. A smaller count gives a quick figure while working on the reconciler.
fn resync_counts() -> Vec<usize> {
    std::env::var("RSGO_BENCH_STACKS")
        .ok()
        .map(|list| {
            list.split(',')
                .map(|n| n.trim().parse().expect("RSGO_BENCH_STACKS lists numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![100, 1_000])
}

/// Resync costs at 100 and 1 000 running stacks (or `RSGO_BENCH_STACKS`).
pub fn resync() {
    let counts = resync_counts();
    let room = network_room();
    assert!(
        room.is_some_and(|room| room > counts.iter().max().copied().unwrap_or(0) as u64 + 100),
        "the resync case runs up to 1 000 stacks, each on its own network, and this engine's address \
         pools hold {}; start dockerd with `--default-address-pool base=172.16.0.0/12,size=24` \
         (scripts/test-env.sh does when it starts dockerd)",
        room.map_or("about 30 (the built-in pools)".to_owned(), |r| r
            .to_string())
    );
    let image = bench_image();
    let catalog = tempfile::TempDir::new().expect("a temporary directory");
    fixtures::write_manifest(catalog.path(), "bench", std::slice::from_ref(&image), 1);
    println!("\n## Starting stacks and resync passes");
    for stacks in counts {
        resync_at(catalog.path(), &image, stacks);
    }
}
