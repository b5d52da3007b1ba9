//! The reconciler: level-triggered and idempotent. It reads a Stack from the store, compares it
//! with what runs, acts, and writes status and deployment records back.

pub mod leader;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, WatchStreamExt, reflector};
use kube::{Resource, ResourceExt};

use crate::catalog::sync::{self, SharedCatalog};
use crate::catalog::{self, ContainerPlan, StackPlan, render};
use crate::model::{
    CLEANUP_FINALIZER, DEPLOYMENT_ANNOTATION, DeploymentAction, DeploymentPhase, DeploymentRecord,
    DeploymentRecordStatus, Environment, EnvironmentStatus, REDEPLOY_ANNOTATION, ServiceResult,
    ServiceStatus, Stack, StackPhase, StackStatus, check_label,
};
use crate::runtime::docker::{Provenance, StackResources};
use crate::runtime::kubernetes;
use crate::runtime::{DockerRuntime, KubeRuntime, Rollout};
use crate::store::{Store, Write, encode};
use crate::{Error, Result};
use plan::Step;

/// Resync period when none is set.
const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

/// How long to wait before retrying a reconcile that failed on a transient error.
const RETRY_AFTER: Duration = Duration::from_secs(15);

/// What the reconciler works with.
pub struct Context {
    /// Desired state and status.
    pub store: Arc<dyn Store>,
    /// Products to deploy.
    pub catalog: Arc<SharedCatalog>,
    /// How often every stack is reconciled; a missing version syncs the catalog at most this
    /// often.
    resync: Duration,
    runtimes: tokio::sync::Mutex<HashMap<String, DockerRuntime>>,
    kube: Option<kube::Client>,
    recorder: Option<Recorder>,
}

impl Context {
    /// A context over a store and a catalog.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<SharedCatalog>) -> Self {
        Self {
            store,
            catalog,
            resync: DEFAULT_RESYNC,
            runtimes: Default::default(),
            kube: None,
            recorder: None,
        }
    }

    /// Sets the resync period (default 30 s).
    pub fn with_resync(mut self, period: Duration) -> Self {
        self.resync = period;
        self
    }

    /// Lets the reconciler deploy to Kubernetes environments through `client`.
    /// Events about rollouts go to the cluster, reported as `instance` (the pod name).
    pub fn with_kubernetes(mut self, client: kube::Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: "rsgo".into(),
            instance: Some(instance.into()),
        };
        self.recorder = Some(Recorder::new(client.clone(), reporter));
        self.kube = Some(client);
        self
    }

    /// Publishes a Kubernetes Event on the stack for a finished rollout. Losing an event only
    /// costs visibility, so a failure is logged, never raised.
    async fn record_event(&self, stack: &Stack, phase: DeploymentPhase, note: String) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let (type_, reason) = match phase {
            DeploymentPhase::Succeeded => (EventType::Normal, "Deployed"),
            DeploymentPhase::RolledBack => (EventType::Warning, "RolledBack"),
            _ => (EventType::Warning, "DeployFailed"),
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &stack.object_ref(&())).await {
            tracing::warn!(%error, stack = %stack.name_any(), "could not record an event");
        }
    }

    /// Where an environment's workloads go.
    async fn target(&self, env: &Environment) -> Result<Target> {
        match (&env.spec.kubernetes, &self.kube) {
            (Some(target), Some(client)) => Ok(Target::Kubernetes {
                runtime: KubeRuntime::new(client.clone()),
                namespace: target.namespace.clone(),
            }),
            (Some(_), None) => Err(Error::Invalid(format!(
                "environment '{}' targets Kubernetes; run `rsgo serve --store kubernetes` in the cluster",
                env.name_any()
            ))),
            (None, _) => self.runtime(env).await.map(Target::Docker),
        }
    }

    /// The runtime of an environment, connecting on first use, and recording reachability.
    async fn runtime(&self, env: &Environment) -> Result<DockerRuntime> {
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
        let mut runtimes = self.runtimes.lock().await;
        if let Some(runtime) = runtimes.get(&host) {
            return Ok(runtime.clone());
        }
        let connected = match DockerRuntime::connect(&host).await {
            Ok(runtime) => runtime.engine_version().await.map(|v| (runtime, v)),
            Err(e) => Err(e),
        };
        let status = match &connected {
            Ok((_, version)) => EnvironmentStatus {
                reachable: Some(true),
                engine_version: Some(version.clone()),
                message: None,
            },
            Err(e) => EnvironmentStatus {
                reachable: Some(false),
                engine_version: None,
                message: Some(e.to_string()),
            },
        };
        if env.status.as_ref() != Some(&status) {
            let mut updated = env.clone();
            updated.status = Some(status);
            self.store.update_status(&updated).await?;
        }
        let (runtime, _) = connected?;
        runtimes.insert(host, runtime.clone());
        Ok(runtime)
    }
}

/// Which changes of a Stack call for a reconcile: spec, redeploy request, deletion. Status
/// writes do not; the periodic resync covers drift.
fn rollout_trigger(stack: &Stack) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    stack.metadata.generation.hash(&mut hasher);
    stack
        .annotations()
        .get(REDEPLOY_ANNOTATION)
        .hash(&mut hasher);
    stack
        .annotations()
        .get(DEPLOYMENT_ANNOTATION)
        .hash(&mut hasher);
    stack
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the controller until the process ends: every Stack change, every `resync` period, and
/// every catalog sync (`catalog_synced`) reconciles.
pub async fn run(ctx: Arc<Context>, resync: Duration, catalog_synced: Arc<tokio::sync::Notify>) {
    let synced = futures::stream::unfold(catalog_synced, |notify| async move {
        notify.notified().await;
        Some(((), notify))
    });
    let (reader, writer) = reflector::store::<Stack>();
    let stacks = ctx
        .store
        .clone()
        .watch::<Stack>()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(rollout_trigger, Default::default());
    let ticks = futures::stream::unfold(tokio::time::interval(resync), |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    });
    Controller::for_stream(stacks, reader)
        .reconcile_all_on(futures::stream::select(ticks, synced))
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                // error_policy already logged reconciler failures; this adds the controller's view.
                tracing::debug!(%error, "reconcile ended with an error");
            }
        })
        .await;
}

fn error_policy(stack: Arc<Stack>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(stack = %stack.name_any(), kind = error.label(), %error, "reconcile failed; retrying");
    Action::requeue(RETRY_AFTER)
}

/// Reconciles one stack.
pub async fn reconcile(trigger: Arc<Stack>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = trigger.namespace().unwrap_or_default();
    // Always act on the newest stored state, never on a possibly stale cached copy.
    let Some(stack) = ctx
        .store
        .get::<Stack>(&namespace, &trigger.name_any())
        .await?
    else {
        return Ok(Action::await_change());
    };
    if stack.metadata.deletion_timestamp.is_some() {
        return finalize(&stack, &ctx).await;
    }
    let stack = if stack.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) {
        stack
    } else {
        // Deleting the stack must wait until its workloads are gone.
        let mut guarded = stack;
        guarded.finalizers_mut().push(CLEANUP_FINALIZER.into());
        ctx.store.update(&guarded).await?
    };
    match rollout(&stack, &ctx).await {
        Ok(action) => Ok(action),
        Err(Error::Invalid(message)) => {
            tracing::info!(stack = %stack.name_any(), %message, "stack cannot be deployed as specified");
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}

/// Removes a deleted stack's containers and network, or Deployments and Services (never its
/// volumes or claims), then the Stack itself.
async fn finalize(stack: &Stack, ctx: &Context) -> Result<Action> {
    let name = stack.name_any();
    if let Some(env) = ctx
        .store
        .get::<Environment>("", &stack.spec.environment)
        .await?
    {
        match ctx.target(&env).await? {
            Target::Docker(runtime) => {
                for container in runtime.observe(&stack.spec.environment, &name).await? {
                    runtime.remove(&container.id, &container.name).await?;
                }
                runtime
                    .remove_networks(&stack.spec.environment, &name, &[])
                    .await?;
            }
            Target::Kubernetes { runtime, namespace } => {
                runtime.teardown(&namespace, &name).await?
            }
        }
    }
    // Releasing the finalizer lets the store remove the stack.
    let mut released = stack.clone();
    released.finalizers_mut().retain(|f| f != CLEANUP_FINALIZER);
    ctx.store
        .write(vec![Write::Update(encode(&released)?)])
        .await?;
    tracing::info!(stack = %name, "stack deleted; volumes kept");
    Ok(Action::await_change())
}

struct Outcome {
    services: Vec<ServiceStatus>,
    results: Vec<ServiceResult>,
}

/// Where a stack's workloads run.
enum Target {
    /// Containers on a Docker engine.
    Docker(DockerRuntime),
    /// Deployments in a cluster namespace.
    Kubernetes {
        runtime: KubeRuntime,
        namespace: String,
    },
}

/// How often an unfinished Kubernetes rollout is looked at again.
const ROLLOUT_POLL: Duration = Duration::from_secs(5);

async fn rollout(stack: &Stack, ctx: &Context) -> Result<Action> {
    let namespace = stack.namespace().unwrap_or_default();
    let old_status = stack.status.clone().unwrap_or_default();
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
        Some(id) => ctx
            .store
            .get::<DeploymentRecord>(&namespace, &id)
            .await?
            .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_terminal())),
        None => None,
    };
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

    let (target, plan, version) = match prepare(stack, ctx).await {
        Ok(prepared) => prepared,
        Err(error) => {
            let transient = !matches!(error, Error::Invalid(_));
            if transient && deployment.is_none() {
                return Err(error);
            }
            status.last_handled_redeploy_at = requested.clone();
            let done = Done {
                status,
                record: deployment,
                version: None,
            };
            finish(ctx, stack, &old_status, done, Err(&error)).await?;
            return Err(error);
        }
    };
    let deployment = match deployment {
        Some(record) if record.status.is_none() => {
            Some(set_record(ctx, &record, RecordUpdate::phase(DeploymentPhase::Running)).await?)
        }
        other => other,
    };
    if changed {
        status.phase = Some(StackPhase::Deploying);
        write_status(ctx, stack, &old_status, &status).await?;
    }
    let status_before = if changed {
        status.clone()
    } else {
        old_status.clone()
    };
    let result = match target {
        Target::Docker(runtime) => {
            let provenance = Provenance {
                deployment: deployment.as_ref().and_then(|d| d.metadata.name.as_deref()),
                restarted_at: requested.as_deref(),
            };
            // A pending request pulls fresh images; drift correction only pulls missing ones.
            let pull_fresh = changed || deployment.is_some();
            apply_plan(&runtime, &plan, provenance, pull_fresh).await
        }
        Target::Kubernetes { runtime, namespace } => {
            match kubernetes::workloads(stack, &plan, &version, requested.as_deref()) {
                Err(reason) => Err(Error::Invalid(format!(
                    "{} {version}: {reason}",
                    stack.spec.product
                ))),
                Ok(workloads) => match runtime
                    .apply(&namespace, &stack.name_any(), &workloads)
                    .await
                {
                    Ok(Rollout::Complete) => {
                        Ok(kubernetes_outcome(stack, &plan, requested.as_deref()))
                    }
                    Ok(Rollout::Progressing(progress)) => {
                        status.phase = Some(StackPhase::Deploying);
                        status.message = Some(format!("Rolling out: {progress}"));
                        write_status(ctx, stack, &status_before, &status).await?;
                        return Ok(Action::requeue(ROLLOUT_POLL));
                    }
                    Ok(Rollout::Failed(reason)) => Err(Error::Rollout(reason)),
                    Err(error) => Err(error),
                },
            }
        }
    };
    status.last_handled_redeploy_at = requested;
    let done = Done {
        status,
        record: deployment,
        version: Some(version),
    };
    finish(ctx, stack, &status_before, done, result.as_ref()).await?;
    result.map(|_| Action::await_change())
}

/// What a completed Kubernetes rollout reports: one entry per service, naming its Deployment or
/// (for a one-shot service) its Job.
fn kubernetes_outcome(stack: &Stack, plan: &StackPlan, restarted_at: Option<&str>) -> Outcome {
    let name = stack.name_any();
    let services = plan
        .containers
        .iter()
        .map(|c| ServiceStatus {
            name: c.service.clone(),
            container: if c.init {
                kubernetes::job_name(&name, c, restarted_at)
            } else {
                kubernetes::deployment_name(&name, &c.service)
            },
            image: c.image.clone(),
            image_id: None,
        })
        .collect();
    let results = plan
        .containers
        .iter()
        .map(|c| ServiceResult {
            service: c.service.clone(),
            action: "applied".into(),
            image_id: None,
        })
        .collect();
    Outcome { services, results }
}

/// Resolves the environment, target, product version and rendered plan of a stack.
async fn prepare(stack: &Stack, ctx: &Context) -> Result<(Target, StackPlan, String)> {
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
    let plan = render(&stack.name_any(), &env, &pv, &stack.spec.variables)
        .map_err(|e| Error::Invalid(format!("{} {}: {e}", pv.product, pv.version)))?;
    let target = ctx.target(&env).await?;
    Ok((target, plan, pv.version.to_string()))
}

/// Pulls, then acts on the plan. Any failed pull fails the rollout before anything is stopped.
async fn apply_plan(
    runtime: &DockerRuntime,
    plan: &StackPlan,
    provenance: Provenance<'_>,
    pull_fresh: bool,
) -> Result<Outcome> {
    let (env, name) = (&plan.environment, &plan.stack);
    let observed = runtime.observe(env, name).await?;
    let steps = plan::plan(&plan.containers, &observed, provenance.restarted_at);

    let mut pulled = HashSet::new();
    for step in &steps {
        let index = match step {
            Step::Create(i) | Step::Recreate(i, _) => *i,
            _ => continue,
        };
        let image = &plan.containers[index].image;
        if pulled.contains(image) {
            continue;
        }
        if pull_fresh || runtime.image_id(image).await?.is_none() {
            runtime.pull(image).await?;
        }
        pulled.insert(image.clone());
    }

    let resources = runtime.prepare(plan).await?;
    let mut results = Vec::new();
    for step in steps {
        let (service, action) = match step {
            Step::Remove(have) => {
                runtime.remove(&have.id, &have.name).await?;
                results.push(ServiceResult {
                    service: have.service,
                    action: "removed".into(),
                    image_id: None,
                });
                continue;
            }
            Step::Create(i) => {
                run_to_plan(runtime, &plan.containers[i], &resources, provenance).await?;
                (&plan.containers[i].service, "created")
            }
            Step::Recreate(i, have) => {
                runtime.remove(&have.id, &have.name).await?;
                run_to_plan(runtime, &plan.containers[i], &resources, provenance).await?;
                (&plan.containers[i].service, "recreated")
            }
            Step::Start(i, have) => {
                runtime.start(&have.id, &have.name).await?;
                wait_ready(runtime, &plan.containers[i], &have.id).await?;
                // Created by this very rollout before it was interrupted.
                let ours = provenance.deployment.is_some_and(|d| d == have.deployment);
                (
                    &plan.containers[i].service,
                    if ours { "recreated" } else { "started" },
                )
            }
            Step::Keep(i, have) => {
                // A service that runs but fails its health check is not running as specified.
                if have.healthy == Some(false) {
                    return Err(Error::Rollout(format!(
                        "container {} is unhealthy",
                        have.name
                    )));
                }
                // A one-shot container that failed stays failed until its spec changes or a redeploy.
                if plan.containers[i].init && !have.running && have.exit_code != Some(0) {
                    return Err(Error::Rollout(format!(
                        "init service container {} exited with code {}",
                        have.name,
                        have.exit_code
                            .map_or("unknown".to_owned(), |c| c.to_string())
                    )));
                }
                // Recreated by this very rollout before it was interrupted.
                let ours = provenance.deployment.is_some_and(|d| d == have.deployment);
                (
                    &plan.containers[i].service,
                    if ours { "recreated" } else { "unchanged" },
                )
            }
        };
        results.push(ServiceResult {
            service: service.clone(),
            action: action.into(),
            image_id: None,
        });
    }
    // Networks the stack no longer uses (or used under an older naming) go once nothing is on them.
    let keep: Vec<String> = std::iter::once(plan.network.clone())
        .chain(plan.extra_networks.iter().cloned())
        .collect();
    runtime.remove_networks(env, name, &keep).await?;
    let running = runtime.observe(env, name).await?;
    let mut services = Vec::new();
    for want in &plan.containers {
        let have = running.iter().find(|c| c.service == want.service);
        let image_id = have.map(|c| c.image_id.clone());
        if let Some(result) = results.iter_mut().find(|r| r.service == want.service) {
            result.image_id = image_id.clone();
        }
        services.push(ServiceStatus {
            name: want.service.clone(),
            container: want.name.clone(),
            image: want.image.clone(),
            image_id,
        });
    }
    Ok(Outcome { services, results })
}

/// Runs a container; a one-shot (`init`) one must also exit 0, and one with a health check must
/// pass it, before the next service starts.
async fn run_to_plan(
    runtime: &DockerRuntime,
    container: &ContainerPlan,
    resources: &StackResources,
    provenance: Provenance<'_>,
) -> Result<()> {
    let id = runtime.run(container, resources, provenance).await?;
    wait_ready(runtime, container, &id).await
}

/// Waits until a started container counts as up: a one-shot one exited 0, one with a health
/// check passed it. Dependents start only then.
async fn wait_ready(runtime: &DockerRuntime, container: &ContainerPlan, id: &str) -> Result<()> {
    if container.init {
        runtime.wait_success(id, &container.name).await?;
    } else if let Some(health) = &container.health {
        // The margin covers engine delays.
        let patience = Duration::from_secs(health.patience_secs() + 30);
        runtime.wait_healthy(id, &container.name, patience).await?;
    }
    Ok(())
}

/// How a reconcile ended: the stack's new status, the record it reports to, and the version it
/// deployed (none when it could not even render one).
struct Done {
    status: StackStatus,
    record: Option<DeploymentRecord>,
    version: Option<String>,
}

/// What a finished rollout did, in words: from the version that ran before to the one that runs
/// now, whatever the request that started it asked for.
fn describe_success(stack: &str, from: Option<&str>, to: &str) -> String {
    let newer = |from: &str| {
        matches!(
            (catalog::parse_version(from), catalog::parse_version(to)),
            (Ok(a), Ok(b)) if b > a
        )
    };
    match from {
        None => format!("Deployed '{stack}' {to}."),
        Some(from) if from == to => format!("Redeployed '{stack}' at {to}."),
        Some(from) if newer(from) => format!("Upgraded '{stack}' from {from} to {to}."),
        Some(from) => format!("Moved '{stack}' from {from} to {to}."),
    }
}

/// Writes the stack status and the deployment record for a finished (or failed) reconcile,
/// rolling a failed upgrade back to the version the stack was at before.
async fn finish(
    ctx: &Context,
    stack: &Stack,
    old_status: &StackStatus,
    done: Done,
    result: Result<&Outcome, &Error>,
) -> Result<()> {
    let Done {
        mut status,
        record,
        version,
    } = done;
    let from = old_status.deployed_version.clone();
    let update = match result {
        Ok(outcome) => {
            status.phase = Some(StackPhase::Running);
            status.services = outcome.services.clone();
            status.message = None;
            status.deployed_version = version.clone().or(status.deployed_version);
            write_status(ctx, stack, old_status, &status).await?;
            let Some(record) = &record else {
                return Ok(());
            };
            let to = version.clone().unwrap_or_default();
            RecordUpdate {
                message: Some(describe_success(&record.spec.stack, from.as_deref(), &to)),
                services: outcome.results.clone(),
                version: version.clone(),
                ..RecordUpdate::phase(DeploymentPhase::Succeeded)
            }
        }
        Err(error) => {
            // The version a failed upgrade goes back to.
            let previous = record.as_ref().and_then(|r| match r.spec.action {
                DeploymentAction::Upgrade => r.spec.from_version.clone(),
                DeploymentAction::Redeploy => None,
            });
            let target = record
                .as_ref()
                .and_then(|r| r.spec.to_version.clone())
                .unwrap_or_default();
            // A failed upgrade is not a failed stack yet: it is on its way back.
            (status.phase, status.message) = match &previous {
                Some(previous) => (
                    Some(StackPhase::Deploying),
                    Some(format!(
                        "Upgrade to {target} failed: {error}; rolling back to {previous}."
                    )),
                ),
                None => (Some(StackPhase::Failed), Some(error.to_string())),
            };
            write_status(ctx, stack, old_status, &status).await?;
            let Some(record) = &record else {
                return Ok(());
            };
            match previous {
                Some(previous) => {
                    roll_back(ctx, stack, record, &previous).await?;
                    RecordUpdate {
                        message: Some(format!(
                            "Upgrade to {target} failed: {error}. Rolled back to {previous}."
                        )),
                        version: from,
                        ..RecordUpdate::phase(DeploymentPhase::RolledBack)
                    }
                }
                None => RecordUpdate {
                    message: Some(error.to_string()),
                    version: from,
                    ..RecordUpdate::phase(DeploymentPhase::Failed)
                },
            }
        }
    };
    let Some(record) = &record else {
        return Ok(());
    };
    let (phase, message) = (update.phase, update.message.clone().unwrap_or_default());
    let record = set_record(ctx, record, update).await?;
    ctx.record_event(stack, phase, message).await;
    settle_records(ctx, stack, &record).await
}

async fn roll_back(
    ctx: &Context,
    stack: &Stack,
    record: &DeploymentRecord,
    previous: &str,
) -> Result<()> {
    let namespace = stack.namespace().unwrap_or_default();
    loop {
        let mut current = ctx
            .store
            .require::<Stack>(&namespace, &stack.name_any())
            .await?;
        if current.spec.version.as_deref() != record.spec.to_version.as_deref() {
            // Someone asked for something else meanwhile; their request wins.
            return Ok(());
        }
        current.spec.version = Some(previous.to_owned());
        if let Some(variables) = &record.spec.previous_variables {
            current.spec.variables = variables.clone();
        }
        current.annotations_mut().remove(DEPLOYMENT_ANNOTATION);
        match ctx.store.update(&current).await {
            Err(Error::Conflict { .. }) => continue,
            other => return other.map(drop),
        }
    }
}

async fn write_status(
    ctx: &Context,
    stack: &Stack,
    old: &StackStatus,
    new: &StackStatus,
) -> Result<()> {
    let mut new = new.clone();
    new.conditions = ready_condition(&old.conditions, &new, Timestamp::now());
    if *old != new {
        let mut updated = stack.clone();
        updated.status = Some(new);
        ctx.store.update_status(&updated).await?;
    }
    Ok(())
}

/// The `Ready` condition for a status. Its transition time moves only when its status does.
pub fn ready_condition(
    previous: &[Condition],
    status: &StackStatus,
    now: Timestamp,
) -> Vec<Condition> {
    let (state, reason, default_message) = match status.phase {
        Some(StackPhase::Running) => ("True", "Deployed", "Every service runs as specified."),
        Some(StackPhase::Deploying) => ("False", "RollingOut", "A rollout is under way."),
        Some(StackPhase::Failed) => ("False", "Failed", "The last rollout failed."),
        Some(StackPhase::Pending) | None => ("Unknown", "Pending", "Not reconciled yet."),
    };
    let since = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == state)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    vec![Condition {
        type_: "Ready".into(),
        status: state.into(),
        reason: reason.into(),
        message: status
            .message
            .clone()
            .unwrap_or_else(|| default_message.into()),
        observed_generation: status.observed_generation,
        last_transition_time: since,
    }]
}

/// A change to a deployment record's status.
struct RecordUpdate {
    phase: DeploymentPhase,
    message: Option<String>,
    services: Vec<ServiceResult>,
    version: Option<String>,
    served_by: Option<String>,
}

impl RecordUpdate {
    fn phase(phase: DeploymentPhase) -> Self {
        Self {
            phase,
            message: None,
            services: Vec::new(),
            version: None,
            served_by: None,
        }
    }
}

/// The status `update` gives `record` at `now`: the start time is kept once set.
fn record_status(
    record: &DeploymentRecord,
    update: RecordUpdate,
    now: Timestamp,
) -> DeploymentRecordStatus {
    let old = record.status.clone().unwrap_or_default();
    DeploymentRecordStatus {
        phase: update.phase,
        message: update.message,
        services: update.services,
        version: update.version,
        served_by: update.served_by,
        started_at: old.started_at.or(Some(now)),
        finished_at: update.phase.is_terminal().then_some(now),
    }
}

/// Writes a record's status and returns the record as stored.
async fn set_record(
    ctx: &Context,
    record: &DeploymentRecord,
    update: RecordUpdate,
) -> Result<DeploymentRecord> {
    let mut updated = record.clone();
    updated.status = Some(record_status(record, update, Timestamp::now()));
    ctx.store.update_status(&updated).await
}

/// The newest finished deployment records of a stack that are always kept.
pub const RECORD_HISTORY: usize = 20;
/// Finished records younger than this are kept too, so every id a hook returned keeps resolving
/// for at least this long.
pub const RECORD_RETENTION: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);
/// Most finished records kept per stack, however young.
pub const RECORD_HISTORY_MAX: usize = 1000;

/// Splits a stack's records after `done` ended: requests still pending that `done` already served
/// (to mark superseded), and finished records past retention (to delete), oldest first. A
/// finished record stays while it is among the newest [`RECORD_HISTORY`] or younger than
/// [`RECORD_RETENTION`], and never beyond [`RECORD_HISTORY_MAX`].
pub fn settle(
    records: &[DeploymentRecord],
    done: &DeploymentRecord,
    now: Timestamp,
) -> (Vec<DeploymentRecord>, Vec<DeploymentRecord>) {
    let mut mine: Vec<&DeploymentRecord> = records
        .iter()
        .filter(|r| r.spec.stack == done.spec.stack)
        .collect();
    mine.sort_by_key(|r| std::cmp::Reverse(r.spec.requested_at));
    let superseded = mine
        .iter()
        .filter(|r| {
            r.status
                .as_ref()
                .is_none_or(|s| s.phase == DeploymentPhase::Pending)
                && r.name_any() != done.name_any()
                && r.spec.requested_at <= done.spec.requested_at
        })
        .map(|r| (*r).clone())
        .collect();
    let finished = |r: &&&DeploymentRecord| {
        r.name_any() == done.name_any() || r.status.as_ref().is_some_and(|s| s.phase.is_terminal())
    };
    let mut expired: Vec<DeploymentRecord> = mine
        .iter()
        .filter(finished)
        .enumerate()
        .filter(|(rank, r)| {
            *rank >= RECORD_HISTORY_MAX
                || (*rank >= RECORD_HISTORY
                    && now.duration_since(r.spec.requested_at) > RECORD_RETENTION)
        })
        .map(|(_, r)| (*r).clone())
        .collect();
    expired.reverse();
    (superseded, expired)
}

/// Marks requests that `done` served as superseded (pointing at `done`) and trims the stack's
/// record history, in one write.
async fn settle_records(ctx: &Context, stack: &Stack, done: &DeploymentRecord) -> Result<()> {
    let namespace = stack.namespace().unwrap_or_default();
    let records = ctx.store.list::<DeploymentRecord>(Some(&namespace)).await?;
    let now = Timestamp::now();
    let (superseded, expired) = settle(&records, done, now);
    let mut writes = Vec::new();
    for record in superseded {
        let update = RecordUpdate {
            message: Some(format!(
                "Superseded by deployment {}, which carried out this request too.",
                done.name_any()
            )),
            served_by: Some(done.name_any()),
            ..RecordUpdate::phase(DeploymentPhase::Superseded)
        };
        let mut updated = record.clone();
        updated.status = Some(record_status(&record, update, now));
        writes.push(Write::UpdateStatus(encode(&updated)?));
    }
    writes.extend(expired.iter().map(|record| Write::Delete {
        kind: "DeploymentRecord".into(),
        namespace: namespace.clone(),
        name: record.name_any(),
    }));
    if writes.is_empty() {
        return Ok(());
    }
    match ctx.store.write(writes).await {
        Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeploymentRecordSpec;

    fn record(
        name: &str,
        stack: &str,
        minute: i64,
        phase: Option<DeploymentPhase>,
    ) -> DeploymentRecord {
        let mut record = DeploymentRecord::new(
            name,
            DeploymentRecordSpec {
                stack: stack.into(),
                requested_at: Timestamp::from_second(minute * 60).unwrap(),
                ..Default::default()
            },
        );
        record.status = phase.map(|phase| DeploymentRecordStatus {
            phase,
            ..Default::default()
        });
        record
    }

    fn names(records: &[DeploymentRecord]) -> Vec<String> {
        records.iter().map(|r| r.name_any()).collect()
    }

    #[test]
    fn the_ready_condition_follows_the_phase_and_keeps_its_transition_time() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let mut status = StackStatus {
            phase: Some(StackPhase::Deploying),
            observed_generation: Some(3),
            ..Default::default()
        };
        let deploying = ready_condition(&[], &status, t0);
        assert_eq!(
            (deploying[0].status.as_str(), deploying[0].reason.as_str()),
            ("False", "RollingOut")
        );
        assert_eq!(deploying[0].observed_generation, Some(3));
        status.phase = Some(StackPhase::Failed);
        status.message = Some("pulling image 'x' failed".into());
        let failed = ready_condition(&deploying, &status, t1);
        assert_eq!(
            failed[0].last_transition_time,
            Time(t0),
            "still False: the transition time stays"
        );
        assert_eq!(failed[0].message, "pulling image 'x' failed");
        status.phase = Some(StackPhase::Running);
        status.message = None;
        let ready = ready_condition(&failed, &status, t1);
        assert_eq!(
            (ready[0].status.as_str(), ready[0].reason.as_str()),
            ("True", "Deployed")
        );
        assert_eq!(ready[0].last_transition_time, Time(t1));
    }

    #[test]
    fn settling_supersedes_served_requests_and_trims_history() {
        let mut records: Vec<DeploymentRecord> = (0..RECORD_HISTORY as i64 + 2)
            .map(|i| {
                record(
                    &format!("old{i}"),
                    "shop",
                    i,
                    Some(DeploymentPhase::Succeeded),
                )
            })
            .collect();
        records.push(record("waiting", "shop", 100, None));
        records.push(record("other-stack", "web", 1, None));
        records.push(record("later", "shop", 300, None));
        let done = record("done", "shop", 200, Some(DeploymentPhase::Succeeded));
        records.push(done.clone());
        let long_after = Timestamp::from_second(30 * 86_400).unwrap();
        let (superseded, expired) = settle(&records, &done, long_after);
        assert_eq!(
            names(&superseded),
            ["waiting"],
            "only this stack's requests made before `done`"
        );
        // `done` plus the 19 newest old records stay; the three oldest go, oldest first.
        assert_eq!(names(&expired), ["old0", "old1", "old2"]);
        // Within the retention period every record stays, so every returned id resolves.
        let soon_after = Timestamp::from_second(86_400).unwrap();
        assert!(settle(&records, &done, soon_after).1.is_empty());
    }

    #[test]
    fn history_never_grows_past_its_cap() {
        let records: Vec<DeploymentRecord> = (0..RECORD_HISTORY_MAX as i64 + 5)
            .map(|i| {
                record(
                    &format!("r{i}"),
                    "shop",
                    i,
                    Some(DeploymentPhase::Superseded),
                )
            })
            .collect();
        let done = records.last().unwrap().clone();
        let now = Timestamp::from_second(RECORD_HISTORY_MAX as i64 * 60).unwrap();
        let (_, expired) = settle(&records, &done, now);
        assert_eq!(names(&expired), ["r0", "r1", "r2", "r3", "r4"]);
    }

    #[test]
    fn messages_say_what_the_rollout_did() {
        assert_eq!(describe_success("s", None, "1.0.0"), "Deployed 's' 1.0.0.");
        assert_eq!(
            describe_success("s", Some("1.0.0"), "1.0.0"),
            "Redeployed 's' at 1.0.0."
        );
        assert_eq!(
            describe_success("s", Some("1.0.0"), "1.4.0"),
            "Upgraded 's' from 1.0.0 to 1.4.0."
        );
        assert_eq!(
            describe_success("s", Some("1.4.0"), "1.1.0"),
            "Moved 's' from 1.4.0 to 1.1.0."
        );
    }

    #[test]
    fn a_record_keeps_its_start_time() {
        let mut running = record("r", "shop", 1, None);
        let t0 = Timestamp::from_second(100).unwrap();
        let t1 = Timestamp::from_second(160).unwrap();
        running.status = Some(record_status(
            &running,
            RecordUpdate::phase(DeploymentPhase::Running),
            t0,
        ));
        let done = record_status(
            &running,
            RecordUpdate::phase(DeploymentPhase::Succeeded),
            t1,
        );
        assert_eq!((done.started_at, done.finished_at), (Some(t0), Some(t1)));
    }
}
