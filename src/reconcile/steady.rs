//! Steady passes. A resync pass finds nearly every stack as the last pass left it: the same
//! stored stack, environment and catalog entry, and workloads that still run as planned. Reading,
//! checking and rendering all of that again for every stack was most of a pass's CPU, so after a
//! pass that found a stack steady the reconciler keeps what it rendered and found; the next pass
//! over the stack, when none of those inputs changed, only asks the runtime whether the
//! workloads still match (on Docker, from the environment's listing, taken once per pass).
//!
//! A kept pass never causes an action. When anything differs, or the runtime cannot tell, the
//! pass takes the full path, which reads the store afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, reflector::Store as Reflected};

use super::{Context, stack_key};
use crate::catalog::{ProductVersion, StackPlan};
use crate::model::{Environment, REDEPLOY_ANNOTATION, ServiceStatus, Stack};
use crate::store::Store;

/// What a steady pass over a stack rendered and found, and the inputs it came from.
struct Steady {
    /// The stack's `resourceVersion` the pass read: any write to the stack (spec, annotations,
    /// status, deletion) changes it.
    stack: String,
    /// Its environment's `resourceVersion`.
    environment: String,
    /// The catalog entry the plan was rendered from; a catalog sync replaces every entry.
    version: Arc<ProductVersion>,
    /// The rendered plan.
    plan: StackPlan,
    /// The services as the pass found them (and as the stack's status records them).
    services: Vec<ServiceStatus>,
}

/// The kept steady passes, one per stack, and the Environments as the store's change feed shows
/// them.
#[derive(Default)]
pub(super) struct SteadyPasses {
    kept: Mutex<HashMap<String, Arc<Steady>>>,
    /// Set by each run of the controller, from its own watch of Environments.
    environments: Mutex<Option<Reflected<Environment>>>,
}

impl SteadyPasses {
    fn kept(&self) -> MutexGuard<'_, HashMap<String, Arc<Steady>>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn environment(&self, name: &str) -> Option<Arc<Environment>> {
        let environments = self.environments.lock().unwrap_or_else(|e| e.into_inner());
        environments.as_ref()?.get(&ObjectRef::new(name))
    }

    /// Starts afresh for a run of the controller: forgets every kept pass, and follows the
    /// Environments of `store` for as long as the returned future is polled.
    pub(super) fn follow_environments(
        &self,
        store: Arc<dyn Store>,
    ) -> impl Future<Output = ()> + use<> {
        self.kept().clear();
        let (reader, writer) = reflector::store::<Environment>();
        *self.environments.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
        store
            .watch::<Environment>()
            .reflect(writer)
            .for_each(|_| std::future::ready(()))
    }

    /// Keeps a pass that found `stack` (as read) steady in `env`, with the plan rendered from
    /// `version`. Stacks whose variables come from Secrets are not kept: a Secret can change
    /// without the stack changing.
    pub(super) fn keep(
        &self,
        stack: &Stack,
        env: &Environment,
        version: Arc<ProductVersion>,
        plan: StackPlan,
        services: Vec<ServiceStatus>,
    ) {
        let (Some(stack_version), Some(env_version)) =
            (stack.resource_version(), env.resource_version())
        else {
            return;
        };
        if !stack.spec.variables_from.is_empty() {
            return;
        }
        let key = stack_key(&stack.namespace().unwrap_or_default(), &stack.name_any());
        let steady = Steady {
            stack: stack_version,
            environment: env_version,
            version,
            plan,
            services,
        };
        self.kept().insert(key, Arc::new(steady));
    }

    /// Forgets what was kept for a stack.
    pub(super) fn forget(&self, namespace: &str, stack: &str) {
        self.kept().remove(&stack_key(namespace, stack));
    }

    /// Whether `stack`, exactly as it was when its last steady pass was kept, is still steady:
    /// same stack, environment and catalog entry, and the runtime sees every workload as
    /// planned. Any doubt (an error included) answers `false`, and the full pass finds out.
    pub(super) async fn still_steady(&self, stack: &Stack, ctx: &Context) -> bool {
        let key = stack_key(&stack.namespace().unwrap_or_default(), &stack.name_any());
        let Some(kept) = self.kept().get(&key).cloned() else {
            return false;
        };
        if stack.metadata.resource_version.as_ref() != Some(&kept.stack) {
            return false;
        }
        let Some(env) = self.environment(&stack.spec.environment) else {
            return false;
        };
        if env.metadata.resource_version.as_ref() != Some(&kept.environment) {
            return false;
        }
        let same_version = ctx.catalog.read().is_ok_and(|catalog| {
            catalog
                .resolve(&stack.spec.product, stack.spec.version.as_deref())
                .is_some_and(|current| Arc::ptr_eq(&current, &kept.version))
        });
        if !same_version {
            return false;
        }
        let Ok(runtime) = ctx.runtime(&env).await else {
            return false;
        };
        let restarted_at = stack.annotations().get(REDEPLOY_ANNOTATION);
        let found = runtime
            .unchanged(&kept.plan, restarted_at.map(String::as_str))
            .await;
        matches!(found, Ok(Some(outcome)) if outcome.services == kept.services)
    }
}
