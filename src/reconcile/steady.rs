//! Steady passes. A resync pass finds nearly every stack as the last pass left it: the same
//! stored stack, environment and catalog entry, and workloads that still run as planned (or a
//! spec that still cannot be deployed). Reading, checking and rendering all of that again for
//! every stack was most of a pass's CPU, so after a pass that found a stack steady the
//! reconciler keeps what it rendered and found; the next pass over the stack, when none of those
//! inputs changed, only asks the runtime whether the workloads still match (on Docker, from the
//! environment's listing, taken once per pass), or, for a refused stack, nothing at all.
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
use crate::catalog::sync::{self, SharedCatalog};
use crate::catalog::{ProductVersion, StackPlan};
use crate::model::{Environment, REDEPLOY_ANNOTATION, ServiceStatus, Stack};
use crate::store::Store;

/// What a steady pass over a stack came from and what it found.
struct Steady {
    /// The stack's `resourceVersion` the pass read: any write to the stack (spec, annotations,
    /// status, deletion) changes it.
    stack: String,
    /// Its environment and catalog entry.
    inputs: Inputs,
    found: Found,
}

/// What a pass over a stack depends on besides the stack itself.
#[derive(Clone)]
pub(super) struct Inputs {
    /// The environment's `resourceVersion`.
    environment: String,
    /// The catalog entry of the stack's product version, if the catalog has it; a sync that
    /// reads the entry's source again replaces it, changed or not.
    version: Option<Arc<ProductVersion>>,
}

impl PartialEq for Inputs {
    fn eq(&self, other: &Self) -> bool {
        self.environment == other.environment
            && match (&self.version, &other.version) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

/// What a steady pass found.
enum Found {
    /// Every workload runs as this plan says, and the status records these services.
    Running {
        plan: StackPlan,
        services: Vec<ServiceStatus>,
    },
    /// The stack cannot be deployed as specified; its status says why.
    Refused,
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

    /// The stack's environment as the change feed shows it, and what the stack's pass depends
    /// on now; `None` while the environment is not known. Taken before a full pass reads the
    /// store, it can only be as new as what the pass reads, never newer: a change in between
    /// shows as a difference at the next check.
    pub(super) fn inputs(
        &self,
        stack: &Stack,
        catalog: &SharedCatalog,
    ) -> Option<(Arc<Environment>, Inputs)> {
        let env = self.environment(&stack.spec.environment)?;
        let version = catalog
            .read()
            .ok()?
            .resolve(&stack.spec.product, stack.spec.version.as_deref());
        let inputs = Inputs {
            environment: env.resource_version()?,
            version,
        };
        Some((env, inputs))
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

    /// Keeps a pass that found `stack` (as read) running in `env` as planned, with the plan
    /// rendered from `version`.
    pub(super) fn keep_running(
        &self,
        stack: &Stack,
        env: &Environment,
        version: Arc<ProductVersion>,
        plan: StackPlan,
        services: Vec<ServiceStatus>,
    ) {
        let Some(environment) = env.resource_version() else {
            return;
        };
        let inputs = Inputs {
            environment,
            version: Some(version),
        };
        self.keep(stack, inputs, Found::Running { plan, services });
    }

    /// Keeps a pass that found `stack` (as read) impossible to deploy as specified, given
    /// `inputs` taken before the pass.
    pub(super) fn keep_refused(&self, stack: &Stack, inputs: Inputs) {
        self.keep(stack, inputs, Found::Refused);
    }

    /// Stacks whose variables come from Secrets are not kept: a Secret can change without the
    /// stack changing.
    fn keep(&self, stack: &Stack, inputs: Inputs, found: Found) {
        let Some(stack_version) = stack.resource_version() else {
            return;
        };
        if !stack.spec.variables_from.is_empty() {
            return;
        }
        let key = stack_key(&stack.namespace().unwrap_or_default(), &stack.name_any());
        let steady = Steady {
            stack: stack_version,
            inputs,
            found,
        };
        self.kept().insert(key, Arc::new(steady));
    }

    /// Forgets what was kept for a stack.
    pub(super) fn forget(&self, namespace: &str, stack: &str) {
        self.kept().remove(&stack_key(namespace, stack));
    }

    /// Whether `stack`, exactly as it was when its last steady pass was kept, is still steady:
    /// same stack, environment and catalog entry, and either still refused or seen by the
    /// runtime with every workload as planned. Any doubt (an error included) answers `false`,
    /// and the full pass finds out.
    pub(super) async fn still_steady(&self, stack: &Stack, ctx: &Context) -> bool {
        let key = stack_key(&stack.namespace().unwrap_or_default(), &stack.name_any());
        let Some(kept) = self.kept().get(&key).cloned() else {
            return false;
        };
        if stack.metadata.resource_version.as_ref() != Some(&kept.stack) {
            return false;
        }
        if matches!(kept.found, Found::Refused) {
            // A version the catalog lacks is looked for in the sources as a full pass would:
            // at most once per period, however many stacks miss one.
            let (product, version) = (&stack.spec.product, stack.spec.version.as_deref());
            let policy = sync::MissPolicy::OncePer(ctx.resync);
            if sync::ensure_version(&ctx.store, &ctx.catalog, product, version, policy)
                .await
                .is_err()
            {
                return false;
            }
        }
        let Some((env, inputs)) = self.inputs(stack, &ctx.catalog) else {
            return false;
        };
        if inputs != kept.inputs {
            return false;
        }
        let Found::Running { plan, services } = &kept.found else {
            return true;
        };
        let Ok(runtime) = ctx.runtime(&env).await else {
            return false;
        };
        let restarted_at = stack.annotations().get(REDEPLOY_ANNOTATION);
        let found = runtime
            .unchanged(plan, restarted_at.map(String::as_str))
            .await;
        matches!(found, Ok(Some(outcome)) if &outcome.services == services)
    }
}
