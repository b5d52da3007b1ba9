//! The RSGo manifest format: one YAML file is one product version.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

pub use super::plan::{Lifecycle, RestartPolicy};

/// A whole manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// Format version; rsgo reads format 1.
    #[serde(default)]
    pub version: Option<Scalar>,
    /// Product identity; a file without it (or without `productVersion`) is a fragment.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// Typed variables, keyed by name.
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
    /// Variables shared by every stack of a multi-stack product.
    #[serde(default)]
    pub shared_variables: BTreeMap<String, Variable>,
    /// Services, keyed by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Named volumes the services use.
    #[serde(default)]
    pub volumes: BTreeMap<String, serde_yaml_ng::Value>,
    /// Networks the services join, besides the stack's own.
    #[serde(default)]
    pub networks: BTreeMap<String, serde_yaml_ng::Value>,
    /// The stacks of a multi-stack product, keyed by name, instead of top-level `services`.
    #[serde(default)]
    pub stacks: Option<BTreeMap<String, StackEntry>>,
}

/// One stack of a multi-stack product: defined inline, or included from a fragment file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackEntry {
    /// A fragment file, relative to the manifest, that defines the stack.
    #[serde(default)]
    pub include: Option<String>,
    /// One-line description.
    #[serde(default)]
    pub description: Option<String>,
    /// The stack's own variables, besides the product's `sharedVariables`.
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
    /// Services, keyed by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Named volumes the services use.
    #[serde(default)]
    pub volumes: BTreeMap<String, serde_yaml_ng::Value>,
    /// Networks the services join, besides the stack's own.
    #[serde(default)]
    pub networks: BTreeMap<String, serde_yaml_ng::Value>,
}

/// Product identity and description.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Display name, and the product id when `productId` is absent.
    pub name: String,
    /// Groups the versions of one product across files.
    #[serde(default)]
    pub product_id: Option<String>,
    /// SemVer version; a file without it is a fragment, not a product.
    #[serde(default)]
    pub product_version: Option<Scalar>,
    /// One-line description.
    #[serde(default)]
    pub description: Option<String>,
    /// Category for grouping.
    #[serde(default)]
    pub category: Option<String>,
    /// Author.
    #[serde(default)]
    pub author: Option<String>,
    /// Documentation link.
    #[serde(default)]
    pub documentation: Option<String>,
    /// Release notes link.
    #[serde(default)]
    pub release_notes_url: Option<String>,
    /// Icon link.
    #[serde(default)]
    pub icon: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A typed variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Variable {
    /// Value type; String when absent.
    #[serde(default, rename = "type")]
    pub kind: VariableType,
    /// Value used when the stack sets none.
    #[serde(default)]
    pub default: Option<Scalar>,
    /// Whether a value must be given.
    #[serde(default)]
    pub required: bool,
    /// Label shown to people.
    #[serde(default)]
    pub label: Option<String>,
    /// Longer description.
    #[serde(default)]
    pub description: Option<String>,
    /// Example value.
    #[serde(default)]
    pub placeholder: Option<String>,
    /// Group for presentation.
    #[serde(default)]
    pub group: Option<String>,
    /// Order for presentation.
    #[serde(default)]
    pub order: Option<i64>,
    /// Regular expression a value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Message shown when the pattern does not match.
    #[serde(default)]
    pub pattern_error: Option<String>,
    /// Choices, for Select.
    #[serde(default)]
    pub options: Vec<VariableOption>,
    /// Lowest value, for Number and Port.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value, for Number and Port.
    #[serde(default)]
    pub max: Option<f64>,
}

/// Types a variable can have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum VariableType {
    /// Any text.
    #[default]
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of `options`.
    Select,
    /// A secret.
    Password,
    /// A TCP/UDP port, 1 to 65535.
    Port,
    /// A URL.
    Url,
    /// An e-mail address.
    Email,
    /// A file system path.
    Path,
    /// Text spanning lines.
    MultiLine,
    /// A database connection string (any flavour).
    #[serde(
        alias = "SqlServerConnectionString",
        alias = "PostgresConnectionString",
        alias = "MySqlConnectionString",
        alias = "EventStoreConnectionString",
        alias = "MongoConnectionString",
        alias = "RedisConnectionString"
    )]
    ConnectionString,
}

/// One choice of a Select variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariableOption {
    /// The value.
    pub value: Scalar,
    /// Label shown to people.
    #[serde(default)]
    pub label: Option<String>,
    /// Longer description.
    #[serde(default)]
    pub description: Option<String>,
}

/// A service: one container.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Image reference; may use variables.
    pub image: String,
    /// Container name requested by the manifest; rsgo names containers `<stack>_<service>`.
    #[serde(default)]
    pub container_name: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub environment: BTreeMap<String, Scalar>,
    /// Published ports: `host:container`, `ip:host:container`, optionally `/udp`.
    #[serde(default)]
    pub ports: Vec<Scalar>,
    /// Mounts: `volume:/path[:ro]` or `/host/path:/path[:ro]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Extra networks.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Services that start first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Restart policy: `no`, `always`, `unless-stopped` or `on-failure`.
    #[serde(default)]
    pub restart: Option<RestartPolicy>,
    /// Command, as a string or a list.
    #[serde(default)]
    pub command: Option<Command>,
    /// Entrypoint, as a string or a list.
    #[serde(default)]
    pub entrypoint: Option<Command>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User to run as.
    #[serde(default)]
    pub user: Option<String>,
    /// Extra container labels.
    #[serde(default)]
    pub labels: BTreeMap<String, Scalar>,
    /// `service`, or `init` for a one-shot container.
    #[serde(default)]
    pub lifecycle: Option<Lifecycle>,
    /// How to tell that the service works.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

/// A health check: a command in the container (`docker`), an HTTP GET or a TCP connect.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// `docker` (default), `http` or `tcp`.
    #[serde(default, rename = "type")]
    pub kind: Option<HealthCheckKind>,
    /// Command for `docker` checks.
    #[serde(default)]
    pub test: Option<Command>,
    /// Path for `http` checks.
    #[serde(default)]
    pub path: Option<String>,
    /// Container port for `http` and `tcp` checks.
    #[serde(default)]
    pub port: Option<Scalar>,
    /// Time between checks, such as `10s`.
    #[serde(default)]
    pub interval: Option<Scalar>,
    /// Time one check may take.
    #[serde(default)]
    pub timeout: Option<Scalar>,
    /// Failures in a row that make the service unhealthy.
    #[serde(default)]
    pub retries: Option<Scalar>,
    /// Grace period after start during which failures do not count.
    #[serde(default)]
    pub start_period: Option<Scalar>,
}

/// How a health check probes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A command in the container (`test`).
    #[default]
    Docker,
    /// An HTTP GET on `port` and `path`.
    Http,
    /// A TCP connect to `port`.
    Tcp,
}

/// A command line as a manifest writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// One string, split like a shell would (quotes honoured, no expansion).
    Line(String),
    /// Exact arguments.
    Args(Vec<String>),
}

/// A YAML scalar read as text: `8080`, `true` and `"8080"` all become strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde_yaml_ng::Value;
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(Scalar(s)),
            Value::Number(n) => Ok(Scalar(n.to_string())),
            Value::Bool(b) => Ok(Scalar(b.to_string())),
            Value::Null => Ok(Scalar(String::new())),
            // The value itself is never quoted: a message must not echo a file's contents.
            other => Err(serde::de::Error::custom(format!(
                "expected a string, number or boolean, found {}",
                match other {
                    Value::Sequence(_) => "a list",
                    Value::Mapping(_) => "a mapping",
                    _ => "a tagged value",
                }
            ))),
        }
    }
}
