//! What the reconciler drives: container engines.

pub mod docker;
pub mod kubernetes;

pub use docker::{DockerRuntime, ObservedContainer};
pub use kubernetes::{KubeRuntime, Rollout};
