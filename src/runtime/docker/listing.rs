//! Drift checks from one listing per environment. A resync pass looks at every stack; asking the
//! engine about each one (its containers, its networks) would cost a few requests per stack per
//! pass. Instead the first stack of a pass lists everything rsgo runs in the environment, with
//! one container list and one network list by label, and every stack of the pass is checked
//! against that. A stack the listing shows exactly as planned needs nothing more; any difference
//! (or any doubt) sends it down the exact path, which reads the engine afresh. So a listing can
//! only ever delay the repair of drift that happened after it was taken, by less than its age.
//!
//! A listing older than that still serves while the engine's event feed (see `events`) has
//! stayed connected and reported nothing that could change it since before it was requested,
//! up to [`FOLLOWED_AGES`] times its age: the feed is what makes it current, and the limit
//! bounds the delay when the feed misses something without breaking (an event the engine
//! dropped for a slow reader, a remote engine's connection lost without a reset).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::container::{self, LABEL_ENVIRONMENT, LABEL_MANAGED, LABEL_STACK};
use super::events;
use super::rollout::{check_kept, outcome_from};
use super::steps::{self, Step};
use super::{DockerRuntime, ObservedContainer};
use crate::catalog::StackPlan;
use crate::model::{ServiceAction, ServiceResult};
use crate::runtime::Outcome;
use crate::{Error, Result};

/// What rsgo runs in one environment of an engine, by stack.
#[derive(Debug, Default)]
struct Listing {
    /// Every container, by its stack label.
    containers: HashMap<String, Vec<ObservedContainer>>,
    /// Every network's name, by its stack label.
    networks: HashMap<String, Vec<String>>,
}

/// How many times its age a listing may serve while the event feed reports no change.
const FOLLOWED_AGES: u32 = 20;

/// A listing as it was taken.
struct Taken {
    /// When it was requested.
    at: Instant,
    /// The event feed's mark from just before it was requested, if the feed was connected.
    mark: Option<events::Mark>,
    listing: Arc<Listing>,
}

/// One environment's newest listing; its lock is held while it is refilled, so the stacks of a
/// pass that arrive together wait for one listing instead of each making their own.
type Slot = Arc<tokio::sync::Mutex<Option<Taken>>>;

/// The newest listing of each environment, and how old one may be to serve a drift check.
pub(super) struct Listings {
    max_age: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Listings {
    pub(super) fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            slots: Mutex::default(),
        }
    }

    fn slot(&self, environment: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(environment.to_owned()).or_default().clone()
    }
}

impl DockerRuntime {
    /// What a rollout that nothing asked for (a resync's drift check) would find: when the
    /// environment's listing shows the stack exactly as planned (every container kept, every
    /// network there and no other), the outcome, with nothing sent to the engine but the
    /// listing; otherwise `None`, and the caller takes the exact path.
    pub(super) async fn as_listed(
        &self,
        plan: &StackPlan,
        restarted_at: Option<&str>,
    ) -> Result<Option<Outcome>> {
        let listing = self.listing(&plan.environment).await?;
        let containers = listing
            .containers
            .get(&plan.stack)
            .map_or(&[][..], Vec::as_slice);
        let mut results = Vec::with_capacity(containers.len());
        for step in steps::plan(plan, containers, restarted_at) {
            let Step::Keep(index, have) = step else {
                return Ok(None);
            };
            if check_kept(&plan.containers[index], &have).is_err() {
                return Ok(None);
            }
            results.push(ServiceResult {
                service: have.service,
                action: ServiceAction::Unchanged,
                image_id: None,
            });
        }
        let mut have = listing
            .networks
            .get(&plan.stack)
            .cloned()
            .unwrap_or_default();
        let mut want = container::network_names(plan);
        have.sort();
        want.sort();
        if have != want {
            return Ok(None);
        }
        Ok(Some(outcome_from(plan, containers, results)))
    }

    /// The environment's listing, made afresh when the last one is older than the limit.
    async fn listing(&self, environment: &str) -> Result<Arc<Listing>> {
        let slot = self.shared.listings.slot(environment);
        let mut slot = slot.lock().await;
        let changes = &self.shared.changes;
        self.shared.feed.get_or_init(|| {
            let feed = events::follow(
                self.docker.clone(),
                self.shared.requests.clone(),
                changes.clone(),
            );
            tokio::spawn(feed).abort_handle()
        });
        let max_age = self.shared.listings.max_age;
        if let Some(taken) = slot.as_ref() {
            let age = taken.at.elapsed();
            let followed = age < max_age * FOLLOWED_AGES
                && taken
                    .mark
                    .is_some_and(|mark| changes.unchanged_since(environment, mark));
            if age < max_age || followed {
                return Ok(taken.listing.clone());
            }
        }
        let mark = changes.mark(environment);
        let at = Instant::now();
        let listing = Arc::new(self.list_environment(environment).await?);
        tracing::debug!(
            %environment,
            stacks = listing.containers.len(),
            "listed what rsgo runs in the environment"
        );
        *slot = Some(Taken {
            at,
            mark,
            listing: listing.clone(),
        });
        Ok(listing)
    }

    /// One container list and one network list, of everything rsgo made in `environment`.
    async fn list_environment(&self, environment: &str) -> Result<Listing> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_ENVIRONMENT}={environment}"),
            ],
        )]);
        let _permit = self.permit().await;
        let containers = self.list_containers(&filters).await.map_err(|e| {
            Error::docker(
                format!("listing containers of environment {environment}"),
                e,
            )
        })?;
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| {
                Error::docker(format!("listing networks of environment {environment}"), e)
            })?;
        let mut listing = Listing::default();
        for container in containers {
            listing
                .containers
                .entry(container.stack.clone())
                .or_default()
                .push(container);
        }
        for network in networks {
            let labels = network.labels.unwrap_or_default();
            if let (Some(stack), Some(name)) = (labels.get(LABEL_STACK), network.name) {
                listing
                    .networks
                    .entry(stack.clone())
                    .or_default()
                    .push(name);
            }
        }
        Ok(listing)
    }
}
