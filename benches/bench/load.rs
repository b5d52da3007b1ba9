//! A closed-loop HTTP load generator: a fixed number of keep-alive connections, each sending its
//! next request as soon as the last is answered, for a fixed time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What one connection sends: a request built from the connection and request numbers.
pub type MakeRequest = Arc<dyn Fn(usize, u64) -> Request<Body> + Send + Sync>;

/// The outcome of a load run.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Answered requests per second.
    pub rate: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// How many answers had the expected status.
    pub expected: u64,
    /// How many did not.
    pub unexpected: u64,
    /// CPU time the serving process used per answered request (user and system), set by the
    /// caller, which knows that process; zero until then.
    pub cpu_per_request: Duration,
    /// Where the machine's cores went during the run, set by the caller; zero until then.
    pub cores: Cores,
}

/// Cores in use on average over a run: the whole machine, the server, this load generator, and
/// the rest (for the accepted path, mostly the container engine's rollouts).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cores {
    /// The whole machine.
    pub machine: f64,
    /// The measured server.
    pub server: f64,
    /// The benchmark process itself.
    pub generator: f64,
}

impl Stats {
    /// Median of the runs' figures, run by run: rate, p50 and p99 each the median.
    pub fn median(runs: &[Stats]) -> Stats {
        let mid = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let secs = |f: fn(&Stats) -> Duration| {
            Duration::from_secs_f64(mid(runs.iter().map(|r| f(r).as_secs_f64()).collect()))
        };
        Stats {
            rate: mid(runs.iter().map(|r| r.rate).collect()),
            p50: secs(|r| r.p50),
            p99: secs(|r| r.p99),
            cpu_per_request: secs(|r| r.cpu_per_request),
            cores: Cores {
                machine: mid(runs.iter().map(|r| r.cores.machine).collect()),
                server: mid(runs.iter().map(|r| r.cores.server).collect()),
                generator: mid(runs.iter().map(|r| r.cores.generator).collect()),
            },
            expected: runs.iter().map(|r| r.expected).sum(),
            unexpected: runs.iter().map(|r| r.unexpected).sum(),
        }
    }
}

/// Runs `connections` connections against `addr` for `duration` and reports rate and latency.
/// Answers other than `expect` are counted apart (and still timed).
pub async fn run(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    expect: StatusCode,
    make: MakeRequest,
) -> Stats {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            connection_loop(addr, connection, deadline, expect, make).await
        }));
    }
    let mut latencies = Vec::new();
    let (mut expected, mut unexpected) = (0, 0);
    for task in tasks {
        let (times, good, bad) = task.await.expect("a load connection panicked");
        latencies.extend(times);
        expected += good;
        unexpected += bad;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        rate: latencies.len() as f64 / elapsed,
        p50: at(0.50),
        p99: at(0.99),
        expected,
        unexpected,
        cpu_per_request: Duration::ZERO,
        cores: Cores::default(),
    }
}

async fn connection_loop(
    addr: SocketAddr,
    connection: usize,
    deadline: Instant,
    expect: StatusCode,
    make: MakeRequest,
) -> (Vec<Duration>, u64, u64) {
    let mut times = Vec::new();
    let (mut good, mut bad) = (0, 0);
    let mut sender = None;
    let mut sequence = 0u64;
    while Instant::now() < deadline {
        if sender.is_none() {
            let stream = TcpStream::connect(addr)
                .await
                .expect("connecting to the server");
            stream.set_nodelay(true).ok();
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("an HTTP/1 handshake");
            tokio::spawn(conn);
            sender = Some(send);
        }
        let send = sender.as_mut().expect("connected above");
        let request = make(connection, sequence);
        sequence += 1;
        let started = Instant::now();
        let answer = match send.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                // The whole body is read, as a client would.
                let _ = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX).await;
                Some(status)
            }
            Err(_) => None,
        };
        times.push(started.elapsed());
        match answer {
            Some(status) if status == expect => good += 1,
            Some(_) => bad += 1,
            None => {
                bad += 1;
                sender = None;
            }
        }
    }
    (times, good, bad)
}
