//! The plan of a stack: what each service runs, typed and in terms no runtime owns. Rendering
//! makes it from a manifest; each runtime converts it to its own objects at its boundary
//! (containers on Docker, Deployments and Jobs on Kubernetes).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything one stack runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackPlan {
    /// Environment the stack runs in.
    pub environment: String,
    /// Stack name.
    pub stack: String,
    /// Product version the plan was rendered from.
    pub version: String,
    /// Networks the manifest declares besides the stack's own (`default`), by manifest name.
    pub networks: Vec<String>,
    /// Named volumes, by manifest name.
    pub volumes: Vec<String>,
    /// One entry per service, in dependency order.
    pub containers: Vec<ContainerPlan>,
}

impl StackPlan {
    /// The plan of one service.
    pub fn container(&self, service: &str) -> Option<&ContainerPlan> {
        self.containers.iter().find(|c| c.service == service)
    }
}

/// Name of the network every service of a stack joins.
pub const DEFAULT_NETWORK: &str = "default";

/// One service as it should run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerPlan {
    /// Service name from the manifest.
    pub service: String,
    /// Image reference, variables substituted.
    pub image: String,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Command arguments (Docker's `Cmd`, Kubernetes' `args`).
    pub command: Option<Vec<String>>,
    /// Entrypoint (Docker's `Entrypoint`, Kubernetes' `command`).
    pub entrypoint: Option<Vec<String>>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User, as `uid`, `uid:gid` or a name.
    pub user: Option<String>,
    /// Published ports.
    pub ports: Vec<PortBinding>,
    /// Mounts.
    pub mounts: Vec<Mount>,
    /// When the engine restarts the container (Docker; Kubernetes pods always restart).
    pub restart: RestartPolicy,
    /// A long-running service, or a one-shot one that must succeed before its dependents start.
    pub lifecycle: Lifecycle,
    /// Health check; a rollout waits for it to pass.
    pub health: Option<HealthPlan>,
    /// Services that must be up (or, for one-shot ones, done) first. Not part of the spec hash:
    /// the order of a rollout is not how a container runs.
    #[serde(skip)]
    pub depends_on: Vec<String>,
    /// Networks to join, by manifest name, [`DEFAULT_NETWORK`] first.
    pub networks: Vec<String>,
    /// Labels the manifest gives the service.
    pub labels: BTreeMap<String, String>,
    /// Environment variables whose whole value is a stack variable taken from a Secret: a
    /// runtime that can point at the Secret does so instead of copying the value from `env`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, crate::model::SecretKeyRef>,
    /// Hash of everything above: a change means the service must be replaced.
    #[serde(skip)]
    pub spec_hash: String,
}

impl ContainerPlan {
    /// Whether this is a one-shot service.
    pub fn is_init(&self) -> bool {
        self.lifecycle == Lifecycle::Init
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortBinding {
    /// Host address, when the manifest names one.
    pub host_ip: Option<String>,
    /// Host port; `None` lets the engine choose.
    pub host_port: Option<u16>,
    /// Container port.
    pub container_port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Lower-case name, as manifests write it (`53/udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// What is mounted.
    pub source: MountSource,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What a mount mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MountSource {
    /// A named volume of the stack, by manifest name.
    Volume(String),
    /// A path on the host (checked against the Environment when rendered).
    Host(String),
}

/// When a container is restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// Always, also after the engine restarts.
    Always,
    /// Always, unless someone stopped it.
    UnlessStopped,
    /// When it exits non-zero.
    OnFailure,
}

/// What kind of service a container is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Runs until stopped.
    #[default]
    Service,
    /// Runs once and must exit 0 before the services that depend on it start.
    Init,
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthPlan {
    /// What is checked.
    pub probe: Probe,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Failures in a row that make the service unhealthy.
    pub retries: u32,
    /// Time after start during which failures do not count.
    pub start_period: Duration,
}

impl HealthPlan {
    /// The longest a healthy service can take to be reported healthy.
    pub fn patience(&self) -> Duration {
        self.start_period + (self.interval + self.timeout) * (self.retries + 1)
    }
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Probe {
    /// A program run in the container with these arguments.
    Exec(Vec<String>),
    /// A shell command line run in the container.
    Shell(String),
    /// An HTTP GET on a container port.
    Http {
        /// Container port.
        port: u16,
        /// Request path.
        path: String,
    },
    /// A TCP connect to a container port.
    Tcp {
        /// Container port.
        port: u16,
    },
}
