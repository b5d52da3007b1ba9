//! Bringing a stack's containers to its plan on a Docker engine: every image is pulled (in
//! parallel) before anything is stopped; services are then handled a dependency level at a time,
//! the services of one level in parallel, and a one-shot service must succeed (a checked one be
//! healthy) before any service that depends on it starts.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::ResourceExt;

use super::container::{self, Provenance, StackResources};
use super::steps::{self, Step};
use super::{DockerRuntime, ObservedContainer, ROLLOUT_STEPS};
use crate::catalog::{ContainerPlan, StackPlan};
use crate::model::{ServiceAction, ServiceResult, ServiceStatus, Stack};
use crate::runtime::{Outcome, Progress, Rollout, Runtime};
use crate::{Error, Result};

impl Runtime for DockerRuntime {
    fn roll_out<'a>(&'a self, rollout: Rollout<'a>) -> BoxFuture<'a, Result<Progress>> {
        async move {
            let provenance = Provenance {
                deployment: rollout.deployment,
                restarted_at: rollout.restarted_at,
            };
            apply_plan(self, rollout.plan, provenance, rollout.fresh_after)
                .await
                .map(Progress::Done)
        }
        .boxed()
    }

    /// Removes the stack's containers, then every network rsgo made for it; volumes stay.
    fn tear_down<'a>(&'a self, stack: &'a Stack) -> BoxFuture<'a, Result<()>> {
        async move {
            let (environment, name) = (&stack.spec.environment, stack.name_any());
            let _writing = self.shared.listings.writing(environment, &name);
            for container in self.observe(environment, &name).await? {
                self.remove(&container.id, &container.name).await?;
            }
            self.remove_networks(environment, &name, &[]).await
        }
        .boxed()
    }

    /// The environment's listing is taken once per pass for all its stacks.
    fn checks_drift_cheaply(&self) -> bool {
        true
    }

    fn unchanged<'a>(
        &'a self,
        plan: &'a StackPlan,
        restarted_at: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<Outcome>>> {
        self.as_listed(plan, restarted_at).boxed()
    }
}

/// Pulls, then acts on the plan. Any failed pull fails the rollout before anything is stopped.
/// A pass nothing asked for (`fresh_after` unset: a drift check) first looks at the
/// environment's listing, and is done without another engine request when the stack is as
/// planned.
async fn apply_plan(
    runtime: &DockerRuntime,
    plan: &StackPlan,
    provenance: Provenance<'_>,
    fresh_after: Option<Instant>,
) -> Result<Outcome> {
    let (env, name) = (&plan.environment, &plan.stack);
    if fresh_after.is_none() {
        if let Some(outcome) = runtime.as_listed(plan, provenance.restarted_at).await? {
            return Ok(outcome);
        }
        tracing::debug!(stack = %name, environment = %env, "the listing differs from the plan; reading the engine");
    }
    let _turn = runtime.rollout_turn().await;
    let known = runtime.known(env, name).await?;
    let writing = runtime.shared.listings.writing(env, name);
    let read;
    let observed = match &known {
        Some(listing) => listing.containers(name),
        None => {
            read = runtime.observe(env, name).await?;
            &read
        }
    };
    let steps = steps::plan(plan, observed, provenance.restarted_at);

    pull_images(runtime, plan, &steps, fresh_after).await?;

    let networks = known.as_ref().map(|listing| listing.networks(name));
    let (resources, networks) = runtime.prepare(plan, networks).await?;
    let (results, ids) = take_steps(runtime, plan, steps, &resources, provenance).await?;
    // Networks the stack no longer uses (or used under an older naming) go once nothing is on them.
    let wanted = container::network_names(plan);
    runtime
        .remove_unwanted(networks, env, name, &wanted)
        .await?;
    let running = runtime.observe_ids(env, name, &ids).await?;
    let outcome = outcome_from(plan, &running, results);
    writing.done(running, wanted);
    Ok(outcome)
}

/// Carries out the steps: removals first, then each dependency level (see
/// [`steps::levels`]), the steps of one level in parallel, at most [`ROLLOUT_STEPS`] at a time.
/// A level whose step failed is let finish, so no service is left half replaced by a cancelled
/// step, and its first error ends the rollout before the next level starts. Results come in the
/// steps' order, with the ids of the containers the services have now.
async fn take_steps(
    runtime: &DockerRuntime,
    plan: &StackPlan,
    steps: Vec<Step>,
    resources: &StackResources,
    provenance: Provenance<'_>,
) -> Result<(Vec<ServiceResult>, Vec<String>)> {
    let levels = steps::levels(plan);
    let mut batches: Vec<Vec<Step>> =
        vec![Vec::new(); levels.iter().max().map_or(0, |l| l + 1) + 1];
    for step in steps {
        match step.service() {
            None => batches[0].push(step),
            Some(index) => batches[levels[index] + 1].push(step),
        }
    }
    let mut results = Vec::new();
    let mut ids = Vec::new();
    for batch in batches {
        let done: Vec<Result<(ServiceResult, Option<String>)>> = futures::stream::iter(batch)
            .map(|step| take_step(runtime, plan, step, resources, provenance))
            .buffered(ROLLOUT_STEPS)
            .collect()
            .await;
        for result in done {
            let (result, id) = result?;
            results.push(result);
            ids.extend(id);
        }
    }
    Ok((results, ids))
}

/// Carries out one step and says what it did to the service, and the id of the container the
/// service has now (none once removed).
async fn take_step(
    runtime: &DockerRuntime,
    plan: &StackPlan,
    step: Step,
    resources: &StackResources,
    provenance: Provenance<'_>,
) -> Result<(ServiceResult, Option<String>)> {
    // A container this very rollout made before it was interrupted counts as recreated.
    let ours = |have: &ObservedContainer| provenance.deployment == Some(have.deployment.as_str());
    let (index, action, id) = match step {
        Step::Remove(have) => {
            runtime.remove(&have.id, &have.name).await?;
            let result = ServiceResult {
                service: have.service,
                action: ServiceAction::Removed,
                image_id: None,
            };
            return Ok((result, None));
        }
        Step::Create(i) => {
            let id = run_to_plan(runtime, plan, &plan.containers[i], resources, provenance).await?;
            (i, ServiceAction::Created, id)
        }
        Step::Recreate(i, have) => {
            let id = replace(
                runtime,
                plan,
                &plan.containers[i],
                &have,
                resources,
                provenance,
            )
            .await?;
            (i, ServiceAction::Recreated, id)
        }
        Step::Start(i, have) => {
            runtime.start(&have.id, &have.name).await?;
            wait_ready(runtime, &plan.containers[i], &have.id, &have.name).await?;
            let action = if ours(&have) {
                ServiceAction::Recreated
            } else {
                ServiceAction::Started
            };
            (i, action, have.id)
        }
        Step::Keep(i, have) => {
            check_kept(&plan.containers[i], &have)?;
            let action = if ours(&have) {
                ServiceAction::Recreated
            } else {
                ServiceAction::Unchanged
            };
            (i, action, have.id)
        }
    };
    let result = ServiceResult {
        service: plan.containers[index].service.clone(),
        action,
        image_id: None,
    };
    Ok((result, Some(id)))
}

/// A kept container must still do its job: a running one must not fail its health check, and a
/// one-shot one that failed stays failed until its spec changes or a redeploy.
pub(super) fn check_kept(service: &ContainerPlan, have: &ObservedContainer) -> Result<()> {
    if have.healthy == Some(false) {
        return Err(Error::Rollout(format!(
            "container {} is unhealthy",
            have.name
        )));
    }
    if service.is_init() && !have.running && have.exit_code != Some(0) {
        return Err(Error::Rollout(format!(
            "init service container {} exited with code {}",
            have.name,
            have.exit_code
                .map_or("unknown".to_owned(), |c| c.to_string())
        )));
    }
    Ok(())
}

/// Pulls the image of every service about to be (re)created, each image once and all in
/// parallel (the engine's pull limit bounds how many at a time): all of them, by pulls begun no
/// earlier than `fresh_after` when it is set, else only those the engine lacks. Nothing has been
/// stopped yet, so a failed pull changes nothing.
async fn pull_images(
    runtime: &DockerRuntime,
    plan: &StackPlan,
    steps: &[Step],
    fresh_after: Option<Instant>,
) -> Result<()> {
    let images: BTreeSet<String> = steps
        .iter()
        .filter(|step| matches!(step, Step::Create(_) | Step::Recreate(..)))
        .filter_map(Step::service)
        .map(|index| plan.containers[index].image.clone())
        .collect();
    futures::stream::iter(images)
        .map(|image| async move {
            let after = match fresh_after {
                Some(after) => after,
                None if runtime.image_id(&image).await?.is_none() => Instant::now(),
                None => return Ok(()),
            };
            runtime.pull(&image, after).await?;
            Ok::<_, Error>(())
        })
        .buffer_unordered(ROLLOUT_STEPS)
        .try_collect()
        .await
}

/// What runs after a rollout, from the stack's containers as listed: each service's container
/// and image, added to `results`.
pub(super) fn outcome_from(
    plan: &StackPlan,
    running: &[ObservedContainer],
    mut results: Vec<ServiceResult>,
) -> Outcome {
    let mut by_service: HashMap<&str, &ObservedContainer> = HashMap::new();
    for container in running {
        by_service.entry(&container.service).or_insert(container);
    }
    let mut services = Vec::new();
    for want in &plan.containers {
        let have = by_service.get(want.service.as_str());
        let image_id = have.map(|c| c.image_id.clone());
        if let Some(result) = results.iter_mut().find(|r| r.service == want.service) {
            result.image_id = image_id.clone();
        }
        services.push(ServiceStatus {
            name: want.service.clone(),
            container: container::container_name(plan, want),
            image: want.image.clone(),
            image_id,
        });
    }
    Outcome { services, results }
}

/// Runs a container and returns its id; a one-shot (`init`) one must also exit 0, and one with
/// a health check must pass it, before the next service starts.
async fn run_to_plan(
    runtime: &DockerRuntime,
    plan: &StackPlan,
    service: &ContainerPlan,
    resources: &StackResources,
    provenance: Provenance<'_>,
) -> Result<String> {
    let id = runtime.run(plan, service, resources, provenance).await?;
    let name = container::container_name(plan, service);
    wait_ready(runtime, service, &id, &name).await?;
    Ok(id)
}

/// Replaces a service's container. The new one is created under a stand-in name (see
/// [`container::standby_name`]) while the old one stops, so the creation overlaps the stop's
/// wait; then the old one is removed and the new one takes the service's name and starts. A
/// rollout cut short in between leaves the old container stopped, or only the new one under
/// either name: the next pass plans from what it finds and removes a stand-in it finds.
/// Returns the new container's id.
async fn replace(
    runtime: &DockerRuntime,
    plan: &StackPlan,
    service: &ContainerPlan,
    have: &ObservedContainer,
    resources: &StackResources,
    provenance: Provenance<'_>,
) -> Result<String> {
    let standby = container::standby_name(plan, service);
    let (created, stopped) = tokio::join!(
        runtime.create(plan, service, resources, provenance, &standby),
        runtime.stop(&have.id, &have.name),
    );
    let id = match (created, stopped) {
        (Ok(id), Ok(())) => id,
        (Ok(id), Err(error)) => {
            // The old container may still run: it stays, and the new one goes.
            if let Err(cleanup) = runtime.delete(&id, &standby).await {
                tracing::warn!(error = %cleanup, container = %standby, "removing an unused new container; the next pass removes it");
            }
            return Err(error);
        }
        (Err(error), _) => return Err(error),
    };
    let name = container::container_name(plan, service);
    runtime.delete(&have.id, &have.name).await?;
    runtime.rename(&id, &name).await?;
    runtime.start(&id, &name).await?;
    wait_ready(runtime, service, &id, &name).await?;
    Ok(id)
}

/// Waits until a started container counts as up: a one-shot one exited 0, one with a health
/// check passed it. Dependents start only then.
async fn wait_ready(
    runtime: &DockerRuntime,
    service: &ContainerPlan,
    id: &str,
    name: &str,
) -> Result<()> {
    if service.is_init() {
        runtime.wait_success(id, name).await?;
    } else if let Some(health) = &service.health {
        // The margin covers engine delays.
        let patience = health.patience() + Duration::from_secs(30);
        runtime.wait_healthy(id, name, patience).await?;
    }
    Ok(())
}
