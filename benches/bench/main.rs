//! rsgo's benchmark: `scripts/bench.sh [CASE...]` (cases: hooks, memory, redeploy, resync).
//! Every figure is a ratio or a pair measured side by side in one run, on 127.0.0.1 only; each
//! pair is taken three times, interleaved, and the medians are printed.

mod docker;
#[path = "../../tests/it/engine_proxy.rs"]
mod engine_proxy;
mod fixtures;
mod load;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};

use load::{MakeRequest, Stats};
use server::{Server, free_port};

/// How long each load run lasts.
const RUN: Duration = Duration::from_secs(2);
/// How many times each measurement is taken, interleaved with the others.
const ROUNDS: usize = 3;

fn main() {
    if let Ok(addr) = std::env::var("RSGO_BENCH_CEILING") {
        return ceiling(addr.parse().expect("RSGO_BENCH_CEILING is an address"));
    }
    // `cargo bench` passes `--bench`; everything else names a case.
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let named = |case: &str| asked.iter().any(|a| a == case);
    let wants = |case: &str| asked.is_empty() || named(case);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("rsgo benchmark: medians of {ROUNDS} interleaved rounds, {RUN:?} of load each");
    if wants("hooks") {
        runtime.block_on(hooks());
    }
    if named("accepted") {
        runtime.block_on(accepted());
    }
    if wants("memory") {
        runtime.block_on(memory());
    }
    if wants("redeploy") {
        docker::redeploy_beside_compose();
    }
    if wants("resync") {
        docker::resync();
    }
}

/// The ceiling: an axum server that answers every request with a 401 and a small JSON body,
/// in its own process like rsgo.
fn ceiling(addr: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let app = axum::Router::new().fallback(|| async {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"success": false, "message": "Invalid API key."})),
            )
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("binding the ceiling");
        axum::serve(listener, app)
            .await
            .expect("serving the ceiling");
    });
}

/// A child process running [`ceiling`].
struct Ceiling {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Ceiling {
    fn start() -> Ceiling {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("an address");
        let child = std::process::Command::new(std::env::current_exe().expect("this program"))
            .env("RSGO_BENCH_CEILING", addr.to_string())
            .spawn()
            .expect("starting the ceiling");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the ceiling did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ceiling { child, addr }
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redeploy_request(key: String, environment: String, stacks: usize) -> MakeRequest {
    Arc::new(move |connection, sequence| {
        let stack = (connection + sequence as usize) % stacks;
        let body = format!(r#"{{"stackName": "s-{stack}", "environmentId": "{environment}"}}"#);
        Request::post("/api/hooks/redeploy")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("x-api-key", key.as_str())
            .body(Body::from(body))
            .expect("a request")
    })
}

/// A catalog directory with the `bench` product (one service).
fn catalog(image: &str) -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().expect("a temporary directory");
    fixtures::write_manifest(dir.path(), "bench", &[image.to_owned()], 1);
    dir
}

/// Stacks the hook measurements redeploy.
const BUSY_STACKS: usize = 10;

/// A server with `keys` keys and `stacks` stacks in the Environment `environment` on the local
/// engine. The first [`BUSY_STACKS`] run the `bench` product and are redeployed for real; the
/// others name a product no catalog has, so they wait for a change and cost the reconciler
/// nothing, yet they are there for every lookup and listing.
fn hook_server(catalog: &std::path::Path, environment: &str, keys: usize, stacks: usize) -> Server {
    let objects = format!(
        "{}{}{}{}",
        fixtures::environment(environment, "unix:///var/run/docker.sock"),
        fixtures::keys(keys),
        fixtures::stacks(environment, "bench", "s", BUSY_STACKS.min(stacks)),
        fixtures::stacks(
            environment,
            "absent",
            "idle",
            stacks.saturating_sub(BUSY_STACKS)
        )
    );
    // The refused path is measured as such, not as the 429s of the per-address limit.
    let server = Server::start(&objects, catalog, &["--auth-failures-per-minute", "0"]);
    server.settle(Duration::from_secs(300));
    server
}

/// One measured case: a label, where it runs (address and process), and what it sends.
struct Case {
    label: String,
    addr: SocketAddr,
    pid: u32,
    connections: usize,
    expect: StatusCode,
    make: MakeRequest,
}

/// Redeploys of the busy stacks of `server` (a [`hook_server`] for `environment`).
fn accepted_case(name: &str, environment: &str, server: &Server, connections: usize) -> Case {
    Case {
        label: format!("accepted redeploy, {name}, {connections} connections"),
        addr: server.addr,
        pid: server.pid(),
        connections,
        expect: StatusCode::OK,
        make: redeploy_request(fixtures::key(0), environment.to_string(), BUSY_STACKS),
    }
}

async fn measure(cases: &[Case]) -> Vec<Stats> {
    let mut runs: Vec<Vec<Stats>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (case, runs) in cases.iter().zip(runs.iter_mut()) {
            server::quiet_machine(Duration::from_secs(30));
            let usage = server::Usage::now(case.pid);
            let mut stats = load::run(
                case.addr,
                case.connections,
                RUN,
                case.expect,
                case.make.clone(),
            )
            .await;
            let answered = (stats.expected + stats.unexpected).max(1);
            let (server_cpu, cores) = usage.since();
            stats.cpu_per_request = server_cpu / answered as u32;
            stats.cores = cores;
            assert!(
                stats.unexpected * 100 <= stats.expected,
                "{}: {} of {} answers were not {}",
                case.label,
                stats.unexpected,
                stats.expected + stats.unexpected,
                case.expect
            );
            runs.push(stats);
        }
    }
    runs.iter().map(|r| Stats::median(r)).collect()
}

/// The table of measured cases: rate, latency, the server's CPU per request, and where the
/// machine's cores went meanwhile (the rest is mostly the engine's rollouts on the accepted path).
fn print_runs(cases: &[Case], results: &[Stats]) {
    println!(
        "| case | requests/s | p50 | p99 | server CPU per request | cores busy: machine, server, load generator, rest |"
    );
    println!("|---|---|---|---|---|---|");
    for (case, stats) in cases.iter().zip(results) {
        let cores = stats.cores;
        println!(
            "| {} | {:.0} | {} | {} | {:.0} µs | {:.2}, {:.2}, {:.2}, {:.2} |",
            case.label,
            stats.rate,
            ms(stats.p50),
            ms(stats.p99),
            stats.cpu_per_request.as_secs_f64() * 1e6,
            cores.machine,
            cores.server,
            cores.generator,
            (cores.machine - cores.server - cores.generator).max(0.0)
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Hook requests per second and latency: the 401 path beside the ceiling, the accepted path,
/// at 4 and 32 connections, with 10 and 10 000 keys and stacks.
async fn hooks() {
    let catalog = catalog(&docker::bench_image());
    let ceiling = Ceiling::start();
    let servers = [
        ("10 keys, 10 stacks", "rsgobenchh1", 10, 10),
        ("10 000 keys, 10 stacks", "rsgobenchh2", 10_000, 10),
        ("10 keys, 10 000 stacks", "rsgobenchh3", 10, 10_000),
    ]
    .map(|(name, environment, keys, stacks)| {
        (
            name,
            environment,
            hook_server(catalog.path(), environment, keys, stacks),
        )
    });
    let refused = |key: String| -> MakeRequest {
        Arc::new(move |_, _| {
            Request::post("/api/hooks/redeploy")
                .header("host", "127.0.0.1")
                .header("content-type", "application/json")
                .header("x-api-key", key.as_str())
                .body(Body::from(r#"{"stackName": "s-0"}"#))
                .expect("a request")
        })
    };
    let mut cases = Vec::new();
    for connections in [4, 32] {
        cases.push(Case {
            label: format!("ceiling (axum, 401 only), {connections} connections"),
            addr: ceiling.addr,
            pid: ceiling.child.id(),
            connections,
            expect: StatusCode::UNAUTHORIZED,
            make: refused(fixtures::unknown_key()),
        });
    }
    for (name, environment, server) in &servers {
        for connections in [4, 32] {
            cases.push(Case {
                label: format!("unknown key (401), {name}, {connections} connections"),
                addr: server.addr,
                pid: server.pid(),
                connections,
                expect: StatusCode::UNAUTHORIZED,
                make: refused(fixtures::unknown_key()),
            });
            cases.push(accepted_case(name, environment, server, connections));
        }
    }
    let results = measure(&cases).await;
    println!("\n## Hooks");
    print_runs(&cases, &results);
    let find = |label: &str| {
        cases
            .iter()
            .position(|c| c.label == label)
            .map(|i| &results[i])
            .expect("a measured case")
    };
    println!("\n| ratio | value |");
    println!("|---|---|");
    for connections in [4, 32] {
        let ceiling = find(&format!(
            "ceiling (axum, 401 only), {connections} connections"
        ));
        let rsgo = find(&format!(
            "unknown key (401), 10 keys, 10 stacks, {connections} connections"
        ));
        println!(
            "| 401 path / ceiling, requests/s, {connections} connections | {:.2}× |",
            rsgo.rate / ceiling.rate
        );
    }
    for (what, many) in [
        ("keys", "10 000 keys, 10 stacks"),
        ("stacks", "10 keys, 10 000 stacks"),
    ] {
        for path in ["unknown key (401)", "accepted redeploy"] {
            let few = find(&format!("{path}, 10 keys, 10 stacks, 4 connections"));
            let lots = find(&format!("{path}, {many}, 4 connections"));
            println!(
                "| {path}: p50 with 10 000 {what} / with 10, 4 connections | {:.2}× |",
                lots.p50.as_secs_f64() / few.p50.as_secs_f64()
            );
            println!(
                "| {path}: server CPU per request with 10 000 {what} / with 10, 4 connections | {:.2}× |",
                lots.cpu_per_request.as_secs_f64() / few.cpu_per_request.as_secs_f64()
            );
        }
    }
    for (name, environment, server) in servers {
        println!(
            "| RSS after the runs, {name} | {:.1} MiB |",
            server.rss() as f64 / 1048576.0
        );
        // Stopped first: a live server would put back the containers it finds removed.
        drop(server);
        docker::clean_up(environment);
    }
}

/// The accepted path alone, on one server with 10 keys and 10 stacks: a quicker look than
/// `hooks` while working on it. Only run when named.
async fn accepted() {
    let catalog = catalog(&docker::bench_image());
    let environment = "rsgobencha1";
    let server = hook_server(catalog.path(), environment, 10, 10);
    let cases = [4, 32]
        .map(|connections| accepted_case("10 keys, 10 stacks", environment, &server, connections));
    let results = measure(&cases).await;
    println!("\n## Accepted path");
    print_runs(&cases, &results);
    drop(server);
    docker::clean_up(environment);
}

/// Resident memory: idle, then after bursts, with 1 000 stacks and 10 000 keys.
async fn memory() {
    let catalog = catalog(&docker::bench_image());
    let small = hook_server(catalog.path(), "rsgobenchm1", 1, 1);
    let idle_small = small.rss();
    let big = hook_server(catalog.path(), "rsgobenchm2", 10_000, 1_000);
    let idle_big = big.rss();
    for _ in 0..ROUNDS {
        for connections in [32, 256] {
            load::run(
                big.addr,
                connections,
                RUN,
                StatusCode::OK,
                redeploy_request(fixtures::key(0), "rsgobenchm2".into(), BUSY_STACKS),
            )
            .await;
        }
    }
    let burst_big = big.rss();
    big.settle(Duration::from_secs(60));
    // jemalloc's background thread hands back pages left unused for about a second.
    std::thread::sleep(Duration::from_secs(3));
    let after_big = big.rss();
    println!("\n## Memory (resident)");
    println!("| state | RSS |");
    println!("|---|---|");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    println!("| idle, 1 key, 1 stack | {} |", mib(idle_small));
    println!("| idle, 10 000 keys, 1 000 stacks | {} |", mib(idle_big));
    println!(
        "| right after {ROUNDS}× bursts of 32 and 256 connections, 10 000 keys, 1 000 stacks | {} |",
        mib(burst_big)
    );
    println!(
        "| settled after the bursts (quiet for 3 s) | {} |",
        mib(after_big)
    );
    drop((small, big));
    docker::clean_up("rsgobenchm1");
    docker::clean_up("rsgobenchm2");
}
