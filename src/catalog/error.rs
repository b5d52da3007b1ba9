//! Why a stack's spec cannot be rendered: the spec is wrong, not the world. The reconciler waits
//! for a change of the spec on these, and retries everything else.

use std::fmt;

/// A spec rsgo cannot render, with what is wrong where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// Values for variables the manifest does not declare, or that their declaration does not
    /// allow (the message names them).
    Variable {
        /// The variable, or the undeclared ones, comma-separated.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A field of one service that cannot be rendered.
    Service {
        /// The service.
        service: String,
        /// The manifest field: `image`, `ports`, `volumes`, `healthCheck`, ...
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A host path the Environment does not let the service mount.
    HostAccess {
        /// The service.
        service: String,
        /// The path as the manifest wrote it.
        path: String,
        /// Which setting would allow it, and why it does not.
        reason: String,
    },
    /// The services' dependencies: a cycle, or an unknown service.
    Dependencies(String),
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Variable { reason, .. } | RenderError::HostAccess { reason, .. } => {
                f.write_str(reason)
            }
            RenderError::Service {
                service, reason, ..
            } => write!(f, "service '{service}': {reason}"),
            RenderError::Dependencies(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for RenderError {}
