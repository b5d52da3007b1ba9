//! What the reconciler drives: container engines.

pub mod docker;

pub use docker::{DockerRuntime, ObservedContainer};
