//! The one error type of rsgo.

/// Every failure rsgo reports, each saying which step failed on which object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
    },
    /// The object already exists and cannot be created again.
    #[error("{kind} '{name}' already exists")]
    AlreadyExists {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
    },
    /// The object changed since it was read (stale `resourceVersion`).
    #[error("{kind} '{name}' was changed by someone else; read it again and retry")]
    Conflict {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
    },
    /// The input is invalid; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// A stack's product version cannot be rendered with its variables in its environment.
    #[error("{product} {version}: {source}")]
    Render {
        /// The product.
        product: String,
        /// The product version.
        version: String,
        /// What is wrong, and where.
        source: crate::catalog::RenderError,
    },
    /// The embedded SQLite store failed.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored or supplied document could not be (de)serialized.
    #[error("{context}: {source}")]
    Json {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A YAML document could not be parsed.
    #[error("{context}: {source}")]
    Yaml {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: serde_yaml_ng::Error,
    },
    /// A file or directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A Docker engine call failed.
    #[error("docker: {operation}: {source}")]
    Docker {
        /// The call that failed, and on what.
        operation: String,
        /// The underlying error.
        source: bollard::errors::Error,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes: {operation}: {source}")]
    Kube {
        /// The call that failed, and on what.
        operation: String,
        /// The underlying error.
        source: kube::Error,
    },
    /// A rollout gave up: a container or Job failed, a health check did not pass, a
    /// Deployment exceeded its progress deadline.
    #[error("{0}")]
    Rollout(String),
    /// An environment's engine does not answer; rsgo tries again later.
    #[error("{0}")]
    Unreachable(String),
    /// An image could not be pulled.
    #[error("pulling image '{image}' failed: {message}")]
    Pull {
        /// The image reference.
        image: String,
        /// The registry's or engine's reason.
        message: String,
    },
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl Error {
    /// A short label per variant, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::Conflict { .. } => "conflict",
            Error::Invalid(_) => "invalid",
            Error::Render { .. } => "render",
            Error::Sqlite(_) => "sqlite",
            Error::Json { .. } => "json",
            Error::Yaml { .. } => "yaml",
            Error::Io { .. } => "io",
            Error::Docker { .. } => "docker",
            Error::Kube { .. } => "kubernetes",
            Error::Rollout(_) => "rollout",
            Error::Unreachable(_) => "unreachable",
            Error::Pull { .. } => "pull",
            Error::Task(_) => "task",
        }
    }

    /// Whether the store refused a write because its disk (or database) is full.
    pub fn is_storage_full(&self) -> bool {
        matches!(
            self,
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }

    /// Whether the error is in what was asked for (a spec, an input), so retrying without a
    /// change cannot help, rather than in the world (an engine, a store, the network).
    pub fn is_invalid_spec(&self) -> bool {
        matches!(self, Error::Invalid(_) | Error::Render { .. })
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a JSON error with what was being decoded.
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    /// Wraps a Kubernetes API error with the call that failed.
    pub fn kube(operation: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            operation: operation.into(),
            source,
        }
    }

    /// Wraps a Docker error with the operation that failed.
    pub fn docker(operation: impl Into<String>, source: bollard::errors::Error) -> Self {
        Error::Docker {
            operation: operation.into(),
            source,
        }
    }
}

/// Result with rsgo's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
