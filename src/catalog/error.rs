//! Why a catalog file cannot be used, and why a stack's spec cannot be rendered. Both mean the
//! input is wrong, not the world: the reconciler waits for a change of the spec on a render
//! error, and retries everything else.

use std::fmt;
use std::path::PathBuf;

use semver::Version;

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
    /// The stack of the product the spec names (`spec.stack`) does not exist, or none is named
    /// for a multi-stack product.
    Stack(String),
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
            RenderError::Dependencies(reason) | RenderError::Stack(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for RenderError {}

/// A catalog file rsgo could not use. The other files of its source still load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file, relative to its source.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: ManifestProblem,
}

/// What is wrong with one catalog file. No variant quotes the file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestProblem {
    /// The file was not read: a link out of the source, too deep, too large, not a regular file,
    /// not UTF-8, or unreadable.
    NotRead(String),
    /// The YAML does not have the manifest's shape.
    Syntax {
        /// Line and column, when the parser knows them.
        at: Option<(usize, usize)>,
        /// What the parser expected, with the file's values left out.
        reason: String,
    },
    /// A field whose value rsgo cannot use.
    Field {
        /// The field: `version`, `metadata.productVersion`, `services`, `variables.NAME.pattern`...
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A product version another file of the source already defines.
    Duplicate {
        /// The product.
        product: String,
        /// The version.
        version: Version,
        /// The file that defined it first.
        first: PathBuf,
    },
}

impl ManifestProblem {
    /// A problem with `field`.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ManifestProblem::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestProblem::NotRead(reason) => f.write_str(reason),
            ManifestProblem::Syntax {
                at: Some((line, column)),
                reason,
            } => write!(f, "line {line}, column {column}: {reason}"),
            ManifestProblem::Syntax { at: None, reason } => f.write_str(reason),
            ManifestProblem::Field { field, reason } => write!(f, "{field}: {reason}"),
            ManifestProblem::Duplicate {
                product,
                version,
                first,
            } => write!(
                f,
                "{product} {version} is already defined in {}",
                first.display()
            ),
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

impl std::error::Error for ManifestError {}
