//! The Docker runtime: containers, networks and volumes labelled `io.rsgo.*`, through bollard.
//! Docker's types stop at this module: [`container`] converts plans to them, `resources` finds
//! or makes a stack's networks and volumes, `rollout` drives a stack to its plan, and the
//! reconciler sees only the [`Runtime`](super::Runtime) trait.

pub mod container;
mod events;
mod listing;
mod pulls;
mod resources;
mod rollout;
pub mod steps;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, HealthStatusEnum, NetworkConnectRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::catalog::{ContainerPlan, StackPlan};
use crate::{Error, Result};
use container::{
    LABEL_DEPLOYMENT, LABEL_ENVIRONMENT, LABEL_MANAGED, LABEL_RESTARTED_AT, LABEL_SERVICE,
    LABEL_SPEC_HASH, LABEL_STACK,
};
pub use container::{Provenance, StackResources};
use listing::Listings;

/// Seconds a container gets to stop before it is killed.
const STOP_TIMEOUT_SECS: i32 = 10;
/// Seconds a single engine request may take (image pulls stream and are not bound by it).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// Requests rsgo has in flight on one engine at once, over every stack. Thousands of stacks
/// starting together queue here instead of timing out inside a saturated engine. Requests that
/// mostly wait (a pull's progress, a stop's grace period, a one-shot container's exit) are
/// bounded elsewhere or by what asks for them.
pub const ENGINE_REQUESTS: usize = 8;
/// Image pulls rsgo has in flight on one engine at once.
const ENGINE_PULLS: usize = 8;
/// Stacks rolling out on one engine at once; the others wait their turn in the order they
/// came. Without it a thousand stacks applied together would each get one request in turn, and
/// all would be half done before the first finished.
pub const ENGINE_ROLLOUTS: usize = 16;
/// Steps of one rollout under way at once (each still takes its turns for engine requests).
const ROLLOUT_STEPS: usize = 32;

/// A container of a stack as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    /// Engine id.
    pub id: String,
    /// Container name without the leading slash.
    pub name: String,
    /// Stack label.
    pub stack: String,
    /// Service label.
    pub service: String,
    /// Spec-hash label.
    pub spec_hash: String,
    /// Whether it runs.
    pub running: bool,
    /// Image reference it was created from.
    pub image: String,
    /// Image id it runs.
    pub image_id: String,
    /// What its health check last said, when it has one.
    pub healthy: Option<bool>,
    /// Exit code, once it has exited.
    pub exit_code: Option<i64>,
    /// Deployment record of the rollout that created it.
    pub deployment: String,
    /// Redeploy request it was created for (empty when none).
    pub restarted_at: String,
}

/// Label filters that select what rsgo made for one stack of one environment.
fn stack_filters(environment: &str, stack: &str) -> HashMap<&'static str, Vec<String>> {
    HashMap::from([(
        "label",
        vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_STACK}={stack}"),
            format!("{LABEL_ENVIRONMENT}={environment}"),
        ],
    )])
}

/// Whether `labels` say rsgo made the object for this stack of this environment.
fn owned_by(labels: &HashMap<String, String>, environment: &str, stack: &str) -> bool {
    labels.get(LABEL_MANAGED).map(String::as_str) == Some("true")
        && labels.get(LABEL_STACK).map(String::as_str) == Some(stack)
        && labels.get(LABEL_ENVIRONMENT).map(String::as_str) == Some(environment)
}

/// A container as rsgo sees it, from the engine's listing.
fn observed(c: ContainerSummary) -> ObservedContainer {
    let labels = c.labels.unwrap_or_default();
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    ObservedContainer {
        id: c.id.unwrap_or_default(),
        name: c
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        stack: label(LABEL_STACK),
        service: label(LABEL_SERVICE),
        spec_hash: label(LABEL_SPEC_HASH),
        deployment: label(LABEL_DEPLOYMENT),
        restarted_at: label(LABEL_RESTARTED_AT),
        running: c.state.is_some_and(|s| s.to_string() == "running"),
        image: c.image.unwrap_or_default(),
        image_id: c.image_id.unwrap_or_default(),
        // Every API version reports exits as "Exited (3) 2 minutes ago".
        exit_code: c.status.as_deref().and_then(|status| {
            let code = status.strip_prefix("Exited (")?;
            code[..code.find(')')?].parse().ok()
        }),
        // Every API version reports health in the status text: "Up 5 minutes (healthy)".
        healthy: c.status.as_deref().and_then(|status| {
            if status.contains("(unhealthy)") {
                Some(false)
            } else if status.contains("(healthy)") {
                Some(true)
            } else {
                None
            }
        }),
    }
}

/// A Docker engine rsgo deploys to. Clones share the engine's limits and its listings.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    shared: Arc<Shared>,
}

/// What every stack deployed to one engine shares.
struct Shared {
    /// Engine requests in flight at once, over every stack; waiting requests are served in the
    /// order they asked, so one big stack cannot starve the others.
    requests: Arc<Semaphore>,
    /// Image pulls in flight at once; separate, so a slow registry holds up no other request.
    pull_turns: Semaphore,
    /// Pulls asked for together, one per image (see `pulls`).
    pulls: Arc<pulls::Pulls>,
    /// Rollouts under way at once (see [`ENGINE_ROLLOUTS`]).
    rollouts: Semaphore,
    /// What rsgo runs on the engine, listed at most once per pass for drift checks.
    listings: Listings,
    /// What the engine's event feed reported since a listing was taken.
    changes: Arc<events::Changes>,
    /// The task that follows the feed, started by the first listing; it ends with the last
    /// clone of the runtime.
    feed: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(feed) = self.feed.get() {
            feed.abort();
        }
    }
}

/// Waits in line for one of a limit's places. The engine's limits are never closed.
pub(super) async fn turn(limit: &Semaphore) -> SemaphorePermit<'_> {
    limit
        .acquire()
        .await
        .expect("the engine's limits are never closed")
}

fn is_status(error: &DockerError, code: u16) -> bool {
    matches!(error, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Splits `registry:5000/repo:tag` into `(registry:5000/repo, tag)`; a digest stays in the name.
fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (&image[..name_start + i], &image[name_start + i + 1..]),
        None => (image, "latest"),
    }
}

impl DockerRuntime {
    /// Connects to `host` (`unix://...`, `tcp://...` or `http://...`) and negotiates the API version,
    /// so engines old (API 1.41) and new both work.
    /// A listing of an environment younger than `listing_age` serves the drift checks of all
    /// its stacks, so one listing serves a whole resync pass; while the engine's event feed
    /// reports nothing that could change it, it serves later passes too (see `events`).
    pub async fn connect(host: &str, listing_age: Duration) -> Result<Self> {
        let version = bollard::API_DEFAULT_VERSION;
        let docker = if host.starts_with("unix://") || host.starts_with('/') {
            Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, version)
        } else {
            Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, version)
        }
        .map_err(|e| Error::docker(format!("connecting to {host}"), e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| Error::docker(format!("negotiating the API version with {host}"), e))?;
        let shared = Shared {
            requests: Arc::new(Semaphore::new(ENGINE_REQUESTS)),
            pull_turns: Semaphore::new(ENGINE_PULLS),
            pulls: Arc::default(),
            rollouts: Semaphore::new(ENGINE_ROLLOUTS),
            listings: Listings::new(listing_age),
            changes: Arc::default(),
            feed: std::sync::OnceLock::new(),
        };
        Ok(Self {
            docker,
            shared: Arc::new(shared),
        })
    }

    /// Waits for a turn to roll a stack out (see [`ENGINE_ROLLOUTS`]).
    async fn rollout_turn(&self) -> SemaphorePermit<'_> {
        turn(&self.shared.rollouts).await
    }

    /// Waits for a turn to send the engine a request (see [`ENGINE_REQUESTS`]).
    async fn permit(&self) -> SemaphorePermit<'_> {
        turn(&self.shared.requests).await
    }

    /// The engine's version string.
    pub async fn engine_version(&self) -> Result<String> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| Error::docker("reading the engine version", e))?;
        Ok(version.version.unwrap_or_default())
    }

    /// Pulls `image` and returns the id it has locally, from a pull begun no earlier than
    /// `after`; rollouts that ask for the same image share such pulls (see `pulls`).
    pub async fn pull(&self, image: &str, after: Instant) -> Result<String> {
        // The pull may wait in the shared map; a weak handle keeps it from holding the runtime.
        let (docker, shared, name) = (
            self.docker.clone(),
            Arc::downgrade(&self.shared),
            image.to_owned(),
        );
        let pull = async move {
            let shared = shared.upgrade().ok_or_else(|| Error::Pull {
                image: name.clone(),
                message: "the engine was let go of before the pull began".into(),
            })?;
            DockerRuntime { docker, shared }.pull_now(&name).await
        };
        self.shared.pulls.pull(image, after, pull).await
    }

    /// Pulls `image` now and returns the id it has locally. Reads the whole progress stream, so
    /// an error reported mid-pull fails the pull.
    async fn pull_now(&self, image: &str) -> Result<String> {
        let (name, tag) = split_reference(image);
        let options = CreateImageOptionsBuilder::new()
            .from_image(name)
            .tag(tag)
            .build();
        let permit = turn(&self.shared.pull_turns).await;
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| Error::Pull {
                image: image.to_owned(),
                message: match e {
                    DockerError::DockerStreamError { error } => error,
                    DockerError::DockerResponseServerError { message, .. } => message,
                    other => other.to_string(),
                },
            })?;
        }
        drop(permit);
        self.image_id(image).await?.ok_or_else(|| Error::Pull {
            image: image.to_owned(),
            message: "the engine reported success but has no such image".into(),
        })
    }

    /// Id of a local image, if the engine has it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>> {
        let _permit = self.permit().await;
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(inspect.id),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(Error::docker(format!("inspecting image {image}"), e)),
        }
    }

    /// Every container of `stack` in `environment`, running or not.
    pub async fn observe(&self, environment: &str, stack: &str) -> Result<Vec<ObservedContainer>> {
        self.list_stack(stack, &stack_filters(environment, stack))
            .await
    }

    /// Those of the containers with the given ids that rsgo made for `stack` in `environment`.
    /// The engine answers a list by id from its index, whatever else it runs, where a list by
    /// label looks at every container it has.
    pub async fn observe_ids(
        &self,
        environment: &str,
        stack: &str,
        ids: &[String],
    ) -> Result<Vec<ObservedContainer>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut filters = stack_filters(environment, stack);
        filters.insert("id", ids.to_vec());
        self.list_stack(stack, &filters).await
    }

    /// The containers of `stack` the engine lists under `filters`, in a turn of the engine's
    /// request limit.
    async fn list_stack(
        &self,
        stack: &str,
        filters: &HashMap<&'static str, Vec<String>>,
    ) -> Result<Vec<ObservedContainer>> {
        let _permit = self.permit().await;
        self.list_containers(filters)
            .await
            .map_err(|e| Error::docker(format!("listing containers of stack {stack}"), e))
    }

    /// The containers the engine lists under `filters`, running or not.
    async fn list_containers(
        &self,
        filters: &HashMap<&'static str, Vec<String>>,
    ) -> std::result::Result<Vec<ObservedContainer>, DockerError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(filters)
            .build();
        let containers = self.docker.list_containers(Some(options)).await?;
        Ok(containers.into_iter().map(observed).collect())
    }

    /// Creates and starts a service's container, on the networks and volumes of `resources`;
    /// returns its id.
    pub async fn run(
        &self,
        plan: &StackPlan,
        service: &ContainerPlan,
        resources: &StackResources,
        provenance: Provenance<'_>,
    ) -> Result<String> {
        let name = container::container_name(plan, service);
        let id = self
            .create(plan, service, resources, provenance, &name)
            .await?;
        self.start(&id, &name).await?;
        Ok(id)
    }

    /// Creates a service's container under `name`, on the networks and volumes of `resources`,
    /// without starting it; returns its id.
    pub async fn create(
        &self,
        plan: &StackPlan,
        service: &ContainerPlan,
        resources: &StackResources,
        provenance: Provenance<'_>,
        name: &str,
    ) -> Result<String> {
        let body = container::create_body(plan, service, resources, provenance)
            .map_err(|e| Error::Task(format!("container {name}: {e}")))?;
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let _permit = self.permit().await;
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| Error::docker(format!("creating container {name}"), e))?;
        for network in service.networks.iter().skip(1) {
            let network = container::network_name(plan, network);
            let id = resources.networks.get(&network).cloned().ok_or_else(|| {
                Error::Task(format!("network {network} of {name} was not prepared"))
            })?;
            let request = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(container::endpoint(service)),
            };
            self.docker
                .connect_network(&id, request)
                .await
                .map_err(|e| Error::docker(format!("connecting {name} to network {network}"), e))?;
        }
        Ok(created.id)
    }

    /// Gives a container another name.
    pub async fn rename(&self, id: &str, name: &str) -> Result<()> {
        let options = RenameContainerOptionsBuilder::new().name(name).build();
        let _permit = self.permit().await;
        self.docker
            .rename_container(id, options)
            .await
            .map_err(|e| Error::docker(format!("giving container {id} the name {name}"), e))
    }

    /// Waits until a one-shot container exits and fails unless it exited 0.
    pub async fn wait_success(&self, id: &str, name: &str) -> Result<()> {
        let mut waits = self
            .docker
            .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
        match waits.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(DockerError::DockerContainerWaitError { error, code })) => {
                let detail = if error.is_empty() {
                    String::new()
                } else {
                    format!(": {error}")
                };
                Err(Error::Rollout(format!(
                    "init service container {name} exited with code {code}{detail}"
                )))
            }
            Some(Err(e)) => Err(Error::docker(format!("waiting for container {name}"), e)),
            None => Err(Error::Rollout(format!(
                "the engine stopped reporting on container {name}"
            ))),
        }
    }

    /// Waits until a container's health check passes. Fails when it reports unhealthy (with the
    /// check's last output), when the container stops, or after `patience`.
    pub async fn wait_healthy(
        &self,
        id: &str,
        name: &str,
        patience: std::time::Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let permit = self.permit().await;
            let inspect = self
                .docker
                .inspect_container(
                    id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .map_err(|e| Error::docker(format!("inspecting container {name}"), e))?;
            drop(permit);
            let state = inspect.state.unwrap_or_default();
            let health = state.health.unwrap_or_default();
            // What the last check said, or how it ended when it printed nothing.
            let last_output = || {
                let last = health.log.iter().flatten().last();
                let output = last
                    .and_then(|r| r.output.as_deref())
                    .unwrap_or_default()
                    .trim();
                match (output, last.and_then(|r| r.exit_code)) {
                    ("", Some(code)) => {
                        format!("the check exited with code {code} and printed nothing")
                    }
                    ("", None) => "the check has not reported yet".to_owned(),
                    (output, _) => output.chars().take(500).collect(),
                }
            };
            match health.status {
                Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Some(HealthStatusEnum::UNHEALTHY) => {
                    return Err(Error::Rollout(format!(
                        "container {name} is unhealthy: {}",
                        last_output()
                    )));
                }
                _ => {}
            }
            if state.running == Some(false) {
                return Err(Error::Rollout(format!(
                    "container {name} stopped (exit code {}) before its health check passed",
                    state.exit_code.unwrap_or_default()
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Rollout(format!(
                    "container {name} was not healthy after {}s; last check said: {}",
                    patience.as_secs(),
                    last_output()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Starts an existing container.
    pub async fn start(&self, id: &str, name: &str) -> Result<()> {
        let _permit = self.permit().await;
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| Error::docker(format!("starting container {name}"), e))
    }

    /// Stops a container, with a grace period; one already stopped or gone counts as stopped.
    /// The stop is mostly the engine waiting for the container to exit, so it takes no turn
    /// (see [`ENGINE_REQUESTS`]).
    pub async fn stop(&self, id: &str, name: &str) -> Result<()> {
        let stop = StopContainerOptionsBuilder::new()
            .t(STOP_TIMEOUT_SECS)
            .build();
        match self.docker.stop_container(id, Some(stop)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(Error::docker(format!("stopping container {name}"), e)),
        }
    }

    /// Stops (see [`Self::stop`]) and removes a container. Its volumes stay.
    pub async fn remove(&self, id: &str, name: &str) -> Result<()> {
        self.stop(id, name).await?;
        self.delete(id, name).await
    }

    /// Removes a container that is stopped or never ran (one still running is killed); one
    /// already gone counts as removed. Its volumes stay. Takes a turn of the engine's request
    /// limit.
    pub async fn delete(&self, id: &str, name: &str) -> Result<()> {
        let remove = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        let _permit = self.permit().await;
        match self.docker.remove_container(id, Some(remove)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(Error::docker(format!("removing container {name}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_reference("127.0.0.1:5000/app:v2"),
            ("127.0.0.1:5000/app", "v2")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app", "latest")
        );
        assert_eq!(split_reference("app@sha256:abc"), ("app@sha256:abc", ""));
    }
}
