//! One reconcile of a stack that is not being deleted: render its plan, hand it to the runtime
//! of its environment, and record how far that got.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::Context;
use super::records::{Done, RecordUpdate, finish, set_record};
use super::status::write_status;
use crate::catalog::manifest::VariableType;
use crate::catalog::sync;
use crate::catalog::{ProductVersion, StackPlan, render_with_secrets};
use crate::model::{
    DEPLOYMENT_ANNOTATION, DeploymentPhase, DeploymentRecord, Environment, REDEPLOY_ANNOTATION,
    Stack, StackPhase, StackStatus, check_label,
};
use crate::runtime::{Progress, Rollout, Runtime};
use crate::{Error, Result};

/// How often an unfinished Kubernetes rollout is looked at again.
const ROLLOUT_POLL: Duration = Duration::from_secs(5);

/// Moves a stack one step towards its plan and records the outcome.
pub(super) async fn rollout(stack: &Stack, ctx: &Context) -> Result<Action> {
    // Taken before the environment and the catalog are read, so never newer than what this
    // pass works with.
    let inputs = ctx.steady.inputs(stack, &ctx.catalog);
    let unset = StackStatus::default();
    let old_status = stack.status.as_ref().unwrap_or(&unset);
    let Pending {
        requested,
        changed,
        deployment,
    } = pending(stack, old_status, ctx).await?;
    // The redeploy request counts as handled only once the rollout ends: a rollout cut short by
    // a crash is taken up again, and containers it already recreated carry the request's label.
    let mut status = StackStatus {
        observed_generation: stack.metadata.generation,
        last_deployment: deployment
            .as_ref()
            .map(|d| d.name_any())
            .or(old_status.last_deployment.clone()),
        ..old_status.clone()
    };

    let Prepared {
        env,
        runtime,
        version,
        plan,
        hidden,
    } = match prepare(stack, ctx).await {
        Ok(prepared) => prepared,
        Err(error) => {
            let transient = !error.is_invalid_spec();
            if transient && deployment.is_none() {
                return Err(error);
            }
            status.last_handled_redeploy_at = requested.clone();
            let done = Done {
                status,
                record: deployment,
                version: None,
            };
            finish(ctx, stack, old_status, done, Err(&error)).await?;
            // Refused before anything was asked of the runtime: the same stack, environment and
            // catalog entry are refused again.
            if let (false, Some((_, inputs))) = (transient, inputs) {
                ctx.steady.keep_refused(stack, inputs);
            }
            return Err(error);
        }
    };
    // A pass nothing asked for, whose result can be kept for the next pass over the stack.
    let drift_check = !changed && deployment.is_none();
    let deployment = match deployment {
        Some(record) if record.status.is_none() => {
            Some(set_record(ctx, &record, RecordUpdate::phase(DeploymentPhase::Running)).await?)
        }
        other => other,
    };
    status.hidden_variables = hidden;
    if changed {
        status.phase = Some(StackPhase::Deploying);
        write_status(ctx, stack, old_status, status.clone()).await?;
    }
    // What the store holds now: the status just written, or the one read.
    let written;
    let status_before = if changed {
        written = status.clone();
        &written
    } else {
        old_status
    };
    let pass = Rollout {
        stack,
        plan: &plan,
        deployment: deployment.as_ref().and_then(|d| d.metadata.name.as_deref()),
        restarted_at: requested.as_deref(),
        // A pending request pulls fresh images; drift correction only pulls missing ones.
        fresh_after: (changed || deployment.is_some()).then(std::time::Instant::now),
    };
    let result = match runtime.roll_out(pass).await {
        Ok(Progress::Done(outcome)) => Ok(outcome),
        Ok(Progress::Progressing(progress)) => {
            status.phase = Some(StackPhase::Deploying);
            status.message = Some(format!("Rolling out: {progress}"));
            write_status(ctx, stack, status_before, status).await?;
            return Ok(Action::requeue(ROLLOUT_POLL));
        }
        Err(error) => Err(error),
    };
    status.last_handled_redeploy_at = requested;
    let done = Done {
        status,
        record: deployment,
        version: Some(plan.version.clone()),
    };
    finish(ctx, stack, status_before, done, result.as_ref()).await?;
    let outcome = result?;
    if drift_check && runtime.checks_drift_cheaply() {
        ctx.steady
            .keep_running(stack, &env, version, plan, outcome.services);
    }
    Ok(Action::await_change())
}

/// What a pass over a stack is asked to do.
struct Pending {
    /// The redeploy request in the stack's annotation, if any.
    requested: Option<String>,
    /// Whether the spec changed or a new redeploy was asked for since the last pass.
    changed: bool,
    /// The unfinished deployment record the pass reports to.
    deployment: Option<DeploymentRecord>,
}

async fn pending(stack: &Stack, old_status: &StackStatus, ctx: &Context) -> Result<Pending> {
    let requested = stack.annotations().get(REDEPLOY_ANNOTATION).cloned();
    let redeploy = requested.is_some() && requested != old_status.last_handled_redeploy_at;
    let spec_changed = old_status.observed_generation != stack.metadata.generation;
    let changed = redeploy || spec_changed;
    // A new request names its record in the annotation; an unfinished rollout keeps reporting
    // to the record it started with.
    let deployment_id = if changed {
        stack.annotations().get(DEPLOYMENT_ANNOTATION).cloned()
    } else {
        old_status.last_deployment.clone()
    };
    let deployment = match deployment_id {
        Some(id) if !ctx.has_ended(stack, &id) => {
            let record = ctx
                .store
                .get::<DeploymentRecord>(&stack.namespace().unwrap_or_default(), &id)
                .await?;
            match record {
                Some(r) if r.status.as_ref().is_some_and(|s| s.phase.is_terminal()) => {
                    ctx.remember_ended(&r);
                    None
                }
                other => other,
            }
        }
        _ => None,
    };
    Ok(Pending {
        requested,
        changed,
        deployment,
    })
}

/// What a pass deploys with: the stack's environment and its runtime, the product version and
/// the plan rendered from it, and the names of the Password variables the version declares.
struct Prepared {
    env: Environment,
    runtime: Arc<dyn Runtime>,
    version: Arc<ProductVersion>,
    plan: StackPlan,
    hidden: Vec<String>,
}

/// Resolves the environment, its runtime and the product version of a stack, and renders its
/// plan.
async fn prepare(stack: &Stack, ctx: &Context) -> Result<Prepared> {
    // Objects stored before names were checked, or written to a cluster behind rsgo's back, are
    // checked again here: nothing is created from a name or spec rsgo would have refused.
    check_label("stack", &stack.name_any()).map_err(|e| {
        Error::Invalid(format!(
            "{e}; nothing is deployed for it: delete it and apply it again under a valid name"
        ))
    })?;
    stack.validate().map_err(Error::Invalid)?;
    let env_name = &stack.spec.environment;
    let env = ctx
        .store
        .get::<Environment>("", env_name)
        .await?
        .ok_or_else(|| Error::Invalid(format!("environment '{env_name}' does not exist")))?;
    env.validate()
        .map_err(|e| Error::Invalid(format!("environment '{env_name}': {e}")))?;
    sync::ensure_version(
        &ctx.store,
        &ctx.catalog,
        &stack.spec.product,
        stack.spec.version.as_deref(),
        sync::MissPolicy::OncePer(ctx.resync),
    )
    .await?;
    let pv = {
        let catalog = ctx.catalog.read()?;
        let found = catalog.resolve(&stack.spec.product, stack.spec.version.as_deref());
        found.ok_or_else(|| {
            Error::Invalid(format!(
                "product '{}' version '{}' is not in the catalog; available versions: {}",
                stack.spec.product,
                stack.spec.version.as_deref().unwrap_or("latest"),
                catalog.available(&stack.spec.product)
            ))
        })?
    };
    let part = stack.spec.stack.as_deref();
    let mut values = stack.spec.variables.clone();
    values.extend(super::secret_values(&ctx.store, stack).await?);
    let secrets = stack
        .spec
        .variables_from
        .iter()
        .map(|(name, source)| (name.clone(), source.secret_key_ref.clone()))
        .collect();
    let name = stack.name_any();
    let plan =
        render_with_secrets(&name, &env, &pv, part, &values, &secrets).map_err(|source| {
            Error::Render {
                product: pv.product.clone(),
                version: pv.version.to_string(),
                source,
            }
        })?;
    let hidden = pv
        .stack(part)
        .map(|definition| {
            definition
                .variables
                .iter()
                .filter(|(_, v)| v.kind == VariableType::Password)
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default();
    let runtime = ctx.runtime(&env).await?;
    Ok(Prepared {
        env,
        runtime,
        version: pv,
        plan,
        hidden,
    })
}
