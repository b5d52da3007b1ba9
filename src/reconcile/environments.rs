//! The runtime of each Environment: a Kubernetes namespace, or a Docker engine connected to on
//! first use. Connections are cached without holding a lock across I/O, so one engine that does
//! not answer never stalls the others; a failed connection is remembered and retried with a
//! growing delay; and each engine is checked again once per resync, so its Environment's status
//! (reachable, engine version, why not) stays current.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::model::{Environment, EnvironmentStatus};
use crate::runtime::{DockerRuntime, KubeRuntime, Runtime};
use crate::store::Store;
use crate::{Error, Result};

/// Longest a connection attempt (or an engine check) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay after a first failed connection; it doubles with each further failure.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest delay between attempts to reach an engine that does not answer.
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// When to try an engine again after `failures` failed attempts in a row.
pub fn retry_delay(failures: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
    doubled.min(LONGEST_RETRY)
}

/// What is known about one Docker engine.
#[derive(Clone)]
enum Engine {
    /// Connected; checked at `checked`.
    Up {
        runtime: DockerRuntime,
        checked: Instant,
    },
    /// Not reachable; not tried again before `retry_at`.
    Down {
        reason: String,
        failures: u32,
        retry_at: Instant,
    },
}

/// The runtimes of every Environment.
pub struct Environments {
    engines: Mutex<HashMap<String, Engine>>,
    /// Per engine never reached yet, the turn to make the first connection: the stacks that
    /// need it together wait for one connection instead of each opening their own.
    first_connects: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    kube: Option<kube::Client>,
    /// How often a connected engine is checked again.
    recheck: Duration,
}

impl Environments {
    /// Runtimes for Docker engines, and for cluster namespaces through `kube` when given.
    pub fn new(kube: Option<kube::Client>, recheck: Duration) -> Self {
        Self {
            engines: Mutex::default(),
            first_connects: Mutex::default(),
            kube,
            recheck,
        }
    }

    /// The runtime of `env`. A Docker engine is connected to (or checked again) when due; the
    /// Environment's status is written when what is known about it changed.
    pub async fn runtime(
        &self,
        store: &Arc<dyn Store>,
        env: &Environment,
    ) -> Result<Arc<dyn Runtime>> {
        if let Some(target) = &env.spec.kubernetes {
            let client = self.kube.clone().ok_or_else(|| {
                Error::Invalid(format!(
                    "environment '{}' targets Kubernetes; run `rsgo serve --store kubernetes` in the cluster",
                    env.name_any()
                ))
            })?;
            return Ok(Arc::new(KubeRuntime::new(client, &target.namespace)));
        }
        let host = env
            .spec
            .docker
            .as_ref()
            .map(|d| d.host.clone())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "environment '{}' has no docker endpoint",
                    env.name_any()
                ))
            })?;
        let mut known = self.claim(&host, Instant::now());
        let _turn = match known {
            None => {
                let turn = self.first_connect(&host).lock_owned().await;
                known = self.claim(&host, Instant::now());
                Some(turn)
            }
            Some(_) => None,
        };
        let now = Instant::now();
        let engine = match known {
            Some(Engine::Up { runtime, checked }) if !self.check_due(checked, now) => {
                return Ok(Arc::new(runtime));
            }
            Some(Engine::Down {
                reason, retry_at, ..
            }) if now < retry_at => {
                return Err(unreachable(env, &host, &reason));
            }
            Some(Engine::Up { runtime, .. }) => check(runtime).await,
            _ => connect(&host, self.recheck).await,
        };
        let (next, status) = match engine {
            Ok((runtime, version)) => (
                Engine::Up {
                    runtime,
                    checked: Instant::now(),
                },
                EnvironmentStatus {
                    reachable: Some(true),
                    engine_version: Some(version),
                    message: None,
                },
            ),
            Err(reason) => {
                let failures = match self.lock().get(&host) {
                    Some(Engine::Down { failures, .. }) => failures + 1,
                    _ => 1,
                };
                (
                    Engine::Down {
                        reason: reason.clone(),
                        failures,
                        retry_at: Instant::now() + retry_delay(failures),
                    },
                    EnvironmentStatus {
                        reachable: Some(false),
                        engine_version: None,
                        message: Some(reason),
                    },
                )
            }
        };
        let next = {
            let mut engines = self.lock();
            // Said once per change for the whole environment, under the lock, so the stacks of a
            // pass that each tried the engine do not each say it (see `reconcile::error_policy`).
            let was_down = matches!(engines.get(&host), Some(Engine::Down { .. }));
            match &next {
                Engine::Down { reason, .. } if !was_down => tracing::warn!(
                    environment = %env.name_any(),
                    %host,
                    %reason,
                    "the Docker engine cannot be reached; its stacks wait, and it is tried again with a growing delay"
                ),
                Engine::Up { .. } if was_down => {
                    tracing::info!(environment = %env.name_any(), %host, "the Docker engine can be reached again")
                }
                _ => {}
            }
            // A check hands back the runtime it was given; should an engine ever have been
            // connected to twice, every stack keeps the runtime stored first, so the engine's
            // request limit holds over all of them (first connections take one turn, above).
            let next = match (engines.get(&host), next) {
                (Some(Engine::Up { runtime, .. }), Engine::Up { checked, .. }) => Engine::Up {
                    runtime: runtime.clone(),
                    checked,
                },
                (_, next) => next,
            };
            engines.insert(host.clone(), next.clone());
            next
        };
        if env.status.as_ref() != Some(&status) {
            let mut updated = env.clone();
            updated.status = Some(status);
            store.update_status(&updated).await?;
        }
        match next {
            Engine::Up { runtime, .. } => Ok(Arc::new(runtime)),
            Engine::Down { reason, .. } => Err(unreachable(env, &host, &reason)),
        }
    }

    /// What is known about the engine at `host`. When a check or a new attempt is due, the
    /// caller that finds it so takes it on: the entry is moved on as if done now, so the stacks of
    /// a pass that arrive meanwhile go on with the connected runtime (or its last failure)
    /// instead of each sending the engine a check of its own.
    fn claim(&self, host: &str, now: Instant) -> Option<Engine> {
        let mut engines = self.lock();
        let known = engines.get(host).cloned();
        let claimed = match &known {
            Some(Engine::Up { runtime, checked }) if self.check_due(*checked, now) => {
                Some(Engine::Up {
                    runtime: runtime.clone(),
                    checked: now,
                })
            }
            Some(Engine::Down {
                reason,
                failures,
                retry_at,
            }) if now >= *retry_at => Some(Engine::Down {
                reason: reason.clone(),
                failures: *failures,
                retry_at: now + CONNECT_TIMEOUT,
            }),
            _ => None,
        };
        if let Some(claimed) = claimed {
            engines.insert(host.to_owned(), claimed);
        }
        known
    }

    /// The turn to connect to `host` for the first time.
    fn first_connect(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self
            .first_connects
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        turns.entry(host.to_owned()).or_default().clone()
    }

    /// Whether an engine checked at `checked` is due for another check: a little before a whole
    /// period has passed, so the pass that comes one period after the last check makes one.
    fn check_due(&self, checked: Instant, now: Instant) -> bool {
        now + self.recheck / 4 >= checked + self.recheck
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Engine>> {
        self.engines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unreachable(env: &Environment, host: &str, reason: &str) -> Error {
    Error::Unreachable(format!(
        "the Docker engine of environment '{}' ({host}) cannot be reached: {reason}",
        env.name_any()
    ))
}

/// Connects to an engine and reads its version, within [`CONNECT_TIMEOUT`]. Drift checks of one
/// resync pass share a listing of the engine; it is made afresh after half a period, so every
/// pass takes a new one.
async fn connect(host: &str, resync: Duration) -> Result<(DockerRuntime, String), String> {
    let attempt = async {
        let runtime = DockerRuntime::connect(host, resync / 2).await?;
        let version = runtime.engine_version().await?;
        Ok::<_, Error>((runtime, version))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// Checks that a connected engine still answers.
async fn check(runtime: DockerRuntime) -> Result<(DockerRuntime, String), String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, runtime.engine_version()).await {
        Ok(Ok(version)) => Ok((runtime, version)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in engine on 127.0.0.1 that answers every request with its version after a
    /// moment, and counts the requests.
    async fn slow_engine() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = format!("tcp://{}", listener.local_addr().unwrap());
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    while let Ok(read) = socket.read(&mut buffer).await {
                        if read == 0 {
                            return;
                        }
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let body = r#"{"Version":"27.0.0","ApiVersion":"1.47"}"#;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (host, requests)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stacks_that_need_a_new_engine_together_share_one_connection() {
        let (host, requests) = slow_engine().await;
        let dir = tempfile::TempDir::new().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SqliteStore::open(dir.path()).unwrap());
        let mut env = Environment::new(
            "busy",
            crate::model::EnvironmentSpec {
                docker: Some(crate::model::DockerEndpoint {
                    host,
                    allowed_host_paths: vec![],
                    allow_engine_socket: false,
                }),
                kubernetes: None,
            },
        );
        env = store.create(&env).await.unwrap();
        let environments = Environments::new(None, Duration::from_secs(60));
        let runtimes =
            futures::future::join_all((0..20).map(|_| environments.runtime(&store, &env))).await;
        assert!(runtimes.iter().all(Result::is_ok));
        // One connection: the API version, then the engine's version.
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
        let stored = store.require::<Environment>("", "busy").await.unwrap();
        assert_eq!(
            stored.status.and_then(|s| s.engine_version).as_deref(),
            Some("27.0.0")
        );
    }

    #[test]
    fn retries_back_off_and_level_out() {
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), LONGEST_RETRY);
    }
}
