//! An `rsgo serve` started for a measurement: its own data directory, catalog and port, and
//! what the operating system says about its memory and CPU.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Runs the rsgo binary on `data_dir`, failing the benchmark when it fails.
pub fn rsgo(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_rsgo"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RSGO_LOG", "warn")
        .output()
        .expect("running rsgo");
    assert!(
        output.status.success(),
        "rsgo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A running `rsgo serve`.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    _data: TempDir,
}

impl Server {
    /// Applies `objects` (YAML documents) to a new data directory, then starts `rsgo serve` on
    /// it with `catalog` and `extra` arguments, and waits until it is ready.
    pub fn start(objects: &str, catalog: &Path, extra: &[&str]) -> Server {
        let data = TempDir::new().expect("a temporary directory");
        let data_dir = data.path().to_owned();
        let file = data_dir.join("objects.yaml");
        std::fs::write(&file, objects).expect("writing the objects");
        rsgo(
            &data_dir,
            &["apply", "-f", file.to_str().expect("a UTF-8 path")],
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("an address");
        let log = std::fs::File::create(data_dir.join("serve.log")).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rsgo"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["serve", "--listen", &addr.to_string(), "--catalog"])
            .arg(catalog)
            .args(extra)
            .env("RSGO_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting rsgo serve");
        let server = Server {
            child,
            addr,
            data_dir,
            _data: data,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if http_get(self.addr, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("rsgo serve did not become ready: {}", self.log());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("serve.log")).unwrap_or_default()
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:") * 1024
    }

    /// CPU time used so far (user and system).
    pub fn cpu(&self) -> Duration {
        cpu_time(self.child.id())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server has used less than 2 % of a core for a second (it has finished
    /// what starting up asked of it), at most `limit`.
    pub fn settle(&self, limit: Duration) {
        until_quiet(limit, || {
            let before = self.cpu();
            std::thread::sleep(Duration::from_secs(1));
            self.cpu() - before < Duration::from_millis(20)
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// CPU counters at one moment: the machine's, a server's and the benchmark's own.
pub struct Usage {
    machine: (u64, u64),
    server: Duration,
    generator: Duration,
    pid: u32,
    at: Instant,
}

impl Usage {
    /// The counters now, for the server with process id `pid`.
    pub fn now(pid: u32) -> Usage {
        Usage {
            machine: machine_ticks(),
            server: cpu_time(pid),
            generator: cpu_time(std::process::id()),
            pid,
            at: Instant::now(),
        }
    }

    /// The server's CPU time since these counters were read, and the cores used on average.
    pub fn since(&self) -> (Duration, crate::load::Cores) {
        let later = Usage::now(self.pid);
        let seconds = (later.at - self.at).as_secs_f64().max(1e-9);
        let (busy, total) = (
            later.machine.0 - self.machine.0,
            later.machine.1 - self.machine.1,
        );
        let server = later.server - self.server;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cores = crate::load::Cores {
            machine: busy as f64 / total.max(1) as f64 * cpus,
            server: server.as_secs_f64() / seconds,
            generator: (later.generator - self.generator).as_secs_f64() / seconds,
        };
        (server, cores)
    }
}

/// Busy and total CPU time of the whole machine so far, in clock ticks, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let total: u64 = ticks.iter().take(8).sum();
    (total - idle, total)
}

/// Waits until the whole machine has been under 5 % busy for half a second, at most `limit`:
/// what an earlier measurement set going (rollouts the engine still carries out, a server
/// catching up) is over before the next one starts. Says so on stderr when it never was.
pub fn quiet_machine(limit: Duration) {
    let quiet = until_quiet(limit, || {
        let (busy_before, total_before) = machine_ticks();
        std::thread::sleep(Duration::from_millis(500));
        let (busy, total) = machine_ticks();
        (busy - busy_before) * 20 < (total - total_before).max(1)
    });
    if !quiet {
        eprintln!("bench: the machine stayed busy for {limit:?}; measuring anyway");
    }
}

/// Runs `quiet_window` (which watches a stretch of time and says whether it was quiet) until
/// one says so, at most `limit`; says whether one did.
fn until_quiet(limit: Duration, mut quiet_window: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if quiet_window() {
            return true;
        }
    }
    false
}

/// CPU time a process has used so far, every thread's (exited ones included), to the
/// nanosecond: the kernel's CPU clock of the process. `/proc/PID/stat` counts 10 ms ticks, too
/// coarse for a resync pass that takes a few milliseconds.
fn cpu_time(pid: u32) -> Duration {
    let pid = libc::pid_t::try_from(pid).expect("a process id fits pid_t");
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls only write into the two locals they are given.
    let read = unsafe {
        libc::clock_getcpuclockid(pid, &mut clock) == 0 && libc::clock_gettime(clock, &mut now) == 0
    };
    assert!(read, "reading the CPU clock of process {pid}");
    let seconds = u64::try_from(now.tv_sec).expect("a CPU time is not negative");
    let nanos = u32::try_from(now.tv_nsec).expect("nanoseconds under a second");
    Duration::new(seconds, nanos)
}

/// A blocking GET on 127.0.0.1: the status and body, or `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path, None, "")
}

/// A blocking request with an optional API key: the status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(900)))
        .ok()?;
    let key = key
        .map(|k| format!("X-Api-Key: {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{key}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
