//! The reconciler: level-triggered and idempotent. It reads a Stack from the store, hands its
//! plan to the runtime of its environment, and writes status and deployment records back.
//!
//! [`run`] wires kube-runtime's controller to the store's change feed; [`reconcile`] handles one
//! stack (`rollout` for one that should run, `finalize` for one being deleted); `records` and
//! `status` write what came of it; `environments` keeps a runtime per Environment; `steady`
//! spares resync passes over stacks that nothing changed.

mod environments;
pub mod leader;
mod records;
mod rollout;
mod status;
mod steady;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, reflector};
use kube::{Resource, ResourceExt};

use crate::catalog::sync::SharedCatalog;
use crate::model::{
    CLEANUP_FINALIZER, DEPLOYMENT_ANNOTATION, DeploymentPhase, Environment, REDEPLOY_ANNOTATION,
    Stack,
};
use crate::runtime::Runtime;
use crate::store::{Store, Write, encode};
use crate::{Error, Result};
pub use environments::{Environments, retry_delay};
pub use records::{RECORD_HISTORY, RECORD_HISTORY_MAX, RECORD_RETENTION, settle};
pub use status::ready_condition;

/// The values of the variables a stack takes from keys of Secrets (`variablesFrom`). A missing
/// Secret or key is an invalid spec, named in the error (never with a value).
pub async fn secret_values(
    store: &Arc<dyn Store>,
    stack: &Stack,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut values = std::collections::BTreeMap::new();
    let namespace = store.secrets_namespace(&stack.namespace().unwrap_or_default());
    for (variable, source) in &stack.spec.variables_from {
        let wanted = &source.secret_key_ref;
        let secret = store
            .get::<k8s_openapi::api::core::v1::Secret>(&namespace, &wanted.name)
            .await?
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "variable '{variable}' takes its value from Secret '{}', which does not exist",
                    wanted.name
                ))
            })?;
        let value = crate::model::secret_text(&secret, &wanted.key).ok_or_else(|| {
            Error::Invalid(format!(
                "variable '{variable}': Secret '{}' has no key '{}' (as UTF-8 text)",
                wanted.name, wanted.key
            ))
        })?;
        values.insert(variable.clone(), value);
    }
    Ok(values)
}

/// A stack's key in the reconciler's memory: namespace and name.
fn stack_key(namespace: &str, stack: &str) -> String {
    format!("{namespace}/{stack}")
}

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
    /// often, and each Docker engine is checked again this often.
    resync: Duration,
    environments: Environments,
    kube: Option<kube::Client>,
    recorder: Option<Recorder>,
    /// Per stack (`namespace/name`), the id of its latest deployment record known to have
    /// ended. An ended record never starts again, so a steady pass over a stack whose status
    /// names that record need not read it to learn it has nothing to report to.
    ended: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// What the last pass over each steady stack rendered and found.
    steady: steady::SteadyPasses,
}

impl Context {
    /// A context over a store and a catalog.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<SharedCatalog>) -> Self {
        Self {
            store,
            catalog,
            resync: DEFAULT_RESYNC,
            environments: Environments::new(None, DEFAULT_RESYNC),
            kube: None,
            recorder: None,
            ended: Default::default(),
            steady: Default::default(),
        }
    }

    fn ended(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether deployment `id` of `stack` is known to have ended.
    fn has_ended(&self, stack: &Stack, id: &str) -> bool {
        let key = stack_key(&stack.namespace().unwrap_or_default(), &stack.name_any());
        self.ended().get(&key).is_some_and(|known| known == id)
    }

    /// Remembers a record that ended (one in a final phase).
    fn remember_ended(&self, record: &crate::model::DeploymentRecord) {
        let key = stack_key(&record.namespace().unwrap_or_default(), &record.spec.stack);
        self.ended().insert(key, record.name_any());
    }

    /// Forgets a deleted stack.
    fn forget(&self, stack: &Stack) {
        let (namespace, name) = (stack.namespace().unwrap_or_default(), stack.name_any());
        self.ended().remove(&stack_key(&namespace, &name));
        self.steady.forget(&namespace, &name);
    }

    /// Sets the resync period (default 30 s).
    pub fn with_resync(mut self, period: Duration) -> Self {
        self.resync = period;
        self.environments = Environments::new(self.kube.clone(), period);
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
        self.environments = Environments::new(self.kube.clone(), self.resync);
        self
    }

    /// The runtime of an environment.
    async fn runtime(&self, env: &Environment) -> Result<Arc<dyn Runtime>> {
        self.environments.runtime(&self.store, env).await
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

/// Runs the controller until the process ends: every Stack change and every catalog sync
/// (`catalog_synced`) reconciles; every `resync` period, each stack is reconciled unless it is
/// found steady: unchanged since a pass that found it running as planned (and still so in its
/// environment's listing) or refused it.
pub async fn run(ctx: Arc<Context>, resync: Duration, catalog_synced: Arc<tokio::sync::Notify>) {
    match records::label_history(&ctx.store).await {
        Ok(0) => {}
        Ok(labelled) => tracing::info!(
            labelled,
            "labelled older deployment records with their stack"
        ),
        Err(error) => tracing::warn!(%error, "could not label older deployment records"),
    }
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
    let environments = ctx.steady.follow_environments(ctx.store.clone());
    let passes = resync_passes(ticks, reader.clone(), ctx.clone());
    let controller = Controller::for_stream(stacks, reader)
        .reconcile_on(passes)
        .reconcile_all_on(synced)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                // error_policy already logged reconciler failures; this adds the controller's view.
                tracing::debug!(%error, "reconcile ended with an error");
            }
        });
    futures::future::join(controller, environments).await;
}

/// How many stacks of a resync pass are checked against their kept steady pass at once.
const STEADY_CHECKS: usize = 32;

/// On every tick, the stacks the controller knows that a full reconcile must look at: every one
/// except those whose kept steady pass still holds (see [`steady`]). Those are counted in the
/// metrics as `steady` and cost the controller nothing.
fn resync_passes(
    ticks: impl futures::Stream<Item = ()> + Send + 'static,
    stacks: reflector::Store<Stack>,
    ctx: Arc<Context>,
) -> impl futures::Stream<Item = ObjectRef<Stack>> + Send + 'static {
    ticks.flat_map(move |()| {
        let ctx = ctx.clone();
        futures::stream::iter(stacks.state())
            .map(move |stack| {
                let ctx = ctx.clone();
                async move {
                    if ctx.steady.still_steady(&stack, &ctx).await {
                        crate::metrics::global().found_steady();
                        None
                    } else {
                        Some(ObjectRef::from_obj(&*stack))
                    }
                }
            })
            .buffer_unordered(STEADY_CHECKS)
            .filter_map(std::future::ready)
    })
}

fn error_policy(stack: Arc<Stack>, error: &Error, _ctx: Arc<Context>) -> Action {
    if matches!(error, Error::Unreachable(_)) {
        // Said once for the whole environment when its engine went out of reach; a line per
        // stack per retry would flood the log with thousands of stacks.
        tracing::debug!(stack = %stack.name_any(), %error, "reconcile waits for the engine; retrying");
    } else {
        tracing::warn!(stack = %stack.name_any(), kind = error.label(), %error, "reconcile failed; retrying");
    }
    Action::requeue(RETRY_AFTER)
}

/// Reconciles one stack, counted in the metrics.
pub async fn reconcile(trigger: Arc<Stack>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_stack(trigger, ctx).await;
    crate::metrics::global().reconciled(result.is_ok(), started.elapsed());
    result
}

async fn reconcile_stack(trigger: Arc<Stack>, ctx: Arc<Context>) -> Result<Action> {
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
    match rollout::rollout(&stack, &ctx).await {
        // A spec that cannot be deployed waits for a change; retrying it as it is cannot help.
        Err(error) if error.is_invalid_spec() => {
            tracing::info!(stack = %stack.name_any(), %error, "stack cannot be deployed as specified");
            Ok(Action::await_change())
        }
        other => other,
    }
}

/// Removes a deleted stack's workloads through its environment's runtime (never its volumes or
/// claims), then the Stack itself.
async fn finalize(stack: &Stack, ctx: &Context) -> Result<Action> {
    let name = stack.name_any();
    if let Some(env) = ctx
        .store
        .get::<Environment>("", &stack.spec.environment)
        .await?
    {
        ctx.runtime(&env).await?.tear_down(stack).await?;
    }
    // Releasing the finalizer lets the store remove the stack.
    let mut released = stack.clone();
    released.finalizers_mut().retain(|f| f != CLEANUP_FINALIZER);
    ctx.store
        .write(vec![Write::Update(encode(&released)?)])
        .await?;
    ctx.forget(stack);
    tracing::info!(stack = %name, "stack deleted; volumes kept");
    Ok(Action::await_change())
}
