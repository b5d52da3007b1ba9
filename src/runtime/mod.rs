//! What the reconciler drives: one [`Runtime`] per Environment, which makes a stack's workloads
//! match its [`StackPlan`] and tears them down. The reconciler never knows which one it drives;
//! each runtime converts the runtime-neutral plan to its own objects.

pub mod docker;
pub mod kubernetes;

use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;

pub use docker::DockerRuntime;
pub use kubernetes::KubeRuntime;

use crate::Result;
use crate::catalog::StackPlan;
use crate::model::{ServiceResult, ServiceStatus, Stack};

/// One pass of a rollout: what the stack should run, and what asked for it.
#[derive(Debug, Clone, Copy)]
pub struct Rollout<'a> {
    /// The stack.
    pub stack: &'a Stack,
    /// Its rendered plan.
    pub plan: &'a StackPlan,
    /// The deployment record the rollout reports to, if any.
    pub deployment: Option<&'a str>,
    /// The stack's redeploy request: workloads made for another one are replaced.
    pub restarted_at: Option<&'a str>,
    /// Set when a request is pending (not drift correction): images are then pulled even when
    /// the engine has them, by a pull begun no earlier than this moment (when the request was
    /// taken up), which rollouts asked for before it began may share.
    pub fresh_after: Option<Instant>,
}

/// How far a rollout got in one pass. A rollout that fails is an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Every service runs as planned.
    Done(Outcome),
    /// Still under way; the text says what is missing. Look again later.
    Progressing(String),
}

/// What a finished rollout left running, and what it did to each service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// One entry per service.
    pub services: Vec<ServiceStatus>,
    /// What was done to each service.
    pub results: Vec<ServiceResult>,
}

/// Runs stacks somewhere: a Docker engine, a Kubernetes namespace.
pub trait Runtime: Send + Sync {
    /// Moves the stack's workloads towards its plan.
    fn roll_out<'a>(&'a self, rollout: Rollout<'a>) -> BoxFuture<'a, Result<Progress>>;
    /// Removes everything the stack runs, except its data (volumes, claims).
    fn tear_down<'a>(&'a self, stack: &'a Stack) -> BoxFuture<'a, Result<()>>;
    /// Whether [`Runtime::unchanged`] can answer without asking the platform about the stack
    /// itself, so the reconciler gains by keeping a steady stack's plan between passes.
    fn checks_drift_cheaply(&self) -> bool {
        false
    }
    /// What a drift check of the stack (a rollout nothing asked for) would find, when the
    /// runtime can tell from what it already knows without acting: the outcome when every
    /// workload runs as planned; `None` when anything differs or it cannot tell, and only a
    /// rollout can say.
    fn unchanged<'a>(
        &'a self,
        _plan: &'a StackPlan,
        _restarted_at: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<Outcome>>> {
        async { Ok(None) }.boxed()
    }
}
