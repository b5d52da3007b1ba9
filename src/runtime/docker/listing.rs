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
//!
//! The pass that follows a rollout (its own status write asks for one) mostly meets a listing
//! older than the rollout; it checks the stack against what the rollout read back when it was
//! done instead, which is as current as a listing and held to the same age.
//!
//! A rollout plans from the listing too, instead of listing its stack's containers and
//! networks (each such list costs the engine work in proportion to everything it runs), when
//! the listing still shows the stack as it is: requested after this runtime last changed the
//! stack, with the feed connected since and silent about the stack (see
//! `DockerRuntime::known`). So a thousand new stacks starting together plan from one listing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::Network;
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

/// What rsgo runs in one environment of an engine, by stack, as it was when the listing was
/// requested.
#[derive(Debug)]
pub(super) struct Listing {
    /// When it was requested.
    at: Instant,
    /// The event feed's mark from just before it was requested, if the feed was connected.
    mark: Option<events::Mark>,
    /// Every container, by its stack label.
    containers: HashMap<String, Vec<ObservedContainer>>,
    /// Every network (its id, name and labels), by its stack label.
    networks: HashMap<String, Vec<Network>>,
}

impl Listing {
    /// The containers of `stack`.
    pub(super) fn containers(&self, stack: &str) -> &[ObservedContainer] {
        self.containers.get(stack).map_or(&[], Vec::as_slice)
    }

    /// The networks of `stack`.
    pub(super) fn networks(&self, stack: &str) -> &[Network] {
        self.networks.get(stack).map_or(&[], Vec::as_slice)
    }
}

/// How many times its age a listing may serve while the event feed reports no change.
const FOLLOWED_AGES: u32 = 20;

/// How long the first listing waits for the event feed to connect.
const FEED_PATIENCE: Duration = Duration::from_secs(2);

/// One environment's newest listing; its lock is held while it is refilled, so the stacks of a
/// pass that arrive together wait for one listing instead of each making their own.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Listing>>>>;

/// The last change this runtime made to a stack.
#[derive(Debug)]
enum LastChange {
    /// Under way.
    UnderWay,
    /// Ended (done, failed or cancelled) at `at`; `left` is what a completed one left.
    Ended {
        at: Instant,
        left: Option<Arc<Left>>,
    },
}

/// What a completed rollout left: the stack's containers, read back by id when it was done,
/// and the names of the networks it prepared for them.
#[derive(Debug)]
pub(super) struct Left {
    containers: Vec<ObservedContainer>,
    networks: Vec<String>,
}

/// The last change of each stack, by `(environment, stack)`.
type Written = Mutex<HashMap<(String, String), LastChange>>;

/// The newest listing of each environment, how old one may be to serve a drift check, and the
/// last change of each stack.
pub(super) struct Listings {
    max_age: Duration,
    slots: Mutex<HashMap<String, Slot>>,
    written: Written,
}

impl Listings {
    pub(super) fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            slots: Mutex::default(),
            written: Mutex::default(),
        }
    }

    fn slot(&self, environment: &str) -> Slot {
        let mut slots = lock(&self.slots);
        slots.entry(environment.to_owned()).or_default().clone()
    }

    /// Marks a change of what `stack` has as under way until the returned guard is dropped
    /// (when the change ends, fails or is cancelled).
    pub(super) fn writing(&self, environment: &str, stack: &str) -> Writing<'_> {
        let key = (environment.to_owned(), stack.to_owned());
        lock(&self.written).insert(key.clone(), LastChange::UnderWay);
        Writing {
            written: &self.written,
            key,
            left: None,
        }
    }

    /// What `look` says of the last change this runtime made to `stack`, if any.
    fn last_change<T>(
        &self,
        environment: &str,
        stack: &str,
        look: impl FnOnce(Option<&LastChange>) -> T,
    ) -> T {
        let key = (environment.to_owned(), stack.to_owned());
        look(lock(&self.written).get(&key))
    }

    /// Whether `listing` was requested after the last change this runtime made to `stack` ended
    /// (and none is under way).
    fn after_last_write(&self, listing: &Listing, environment: &str, stack: &str) -> bool {
        self.last_change(environment, stack, |last| match last {
            None => true,
            Some(LastChange::UnderWay) => false,
            Some(LastChange::Ended { at, .. }) => *at < listing.at,
        })
    }

    /// What the last change of `stack` left, if it completed less than a listing's age ago.
    fn left(&self, environment: &str, stack: &str) -> Option<Arc<Left>> {
        self.last_change(environment, stack, |last| match last {
            Some(LastChange::Ended { at, left }) if at.elapsed() < self.max_age => left.clone(),
            _ => None,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A change of a stack under way (see [`Listings::writing`]).
pub(super) struct Writing<'a> {
    written: &'a Written,
    key: (String, String),
    left: Option<Left>,
}

impl Writing<'_> {
    /// Ends a completed change, which left `containers` (read back when it was done) on
    /// `networks`.
    pub(super) fn done(mut self, containers: Vec<ObservedContainer>, networks: Vec<String>) {
        self.left = Some(Left {
            containers,
            networks,
        });
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let key = std::mem::take(&mut self.key);
        let ended = LastChange::Ended {
            at: Instant::now(),
            left: self.left.take().map(Arc::new),
        };
        lock(self.written).insert(key, ended);
    }
}

impl DockerRuntime {
    /// What a rollout that nothing asked for (a resync's drift check) would find: when the
    /// environment's listing shows the stack exactly as planned (every container kept, every
    /// network there and no other), the outcome, with nothing sent to the engine but the
    /// listing; otherwise `None`, and the caller takes the exact path. A listing requested
    /// before this runtime last changed the stack tells nothing about it; then what the last
    /// rollout read back when it was done serves instead, while younger than a listing may be.
    pub(super) async fn as_listed(
        &self,
        plan: &StackPlan,
        restarted_at: Option<&str>,
    ) -> Result<Option<Outcome>> {
        let (environment, stack) = (&plan.environment, &plan.stack);
        let listing = self.listing(environment).await?;
        let listings = &self.shared.listings;
        let left;
        let (containers, mut networks): (&[ObservedContainer], Vec<&str>) =
            if listings.after_last_write(&listing, environment, stack) {
                let networks = listing.networks(stack).iter();
                let names = networks.filter_map(|n| n.name.as_deref()).collect();
                (listing.containers(stack), names)
            } else if let Some(found) = listings.left(environment, stack) {
                // The listing is older than the stack's last rollout, whose read-back is as
                // young as a listing may be.
                left = found;
                let names = left.networks.iter().map(String::as_str).collect();
                (&left.containers, names)
            } else {
                return Ok(None);
            };
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
        let want = container::network_names(plan);
        let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
        networks.sort_unstable();
        want.sort_unstable();
        if networks != want {
            return Ok(None);
        }
        Ok(Some(outcome_from(plan, containers, results)))
    }

    /// The environment's newest listing when it shows `stack` as it is now, so a rollout can
    /// plan from it instead of asking the engine: it was requested after this runtime last
    /// changed the stack, and the event feed has stayed connected since and reported nothing
    /// about the stack (for at most [`FOLLOWED_AGES`] times the drift checks' age, as they). A
    /// listing is made only when the environment has none: at a start of many new stacks one
    /// listing serves them all. Without the feed, rollouts read the engine. A change made behind
    /// rsgo's back can be missed only while its event is on its way.
    pub(super) async fn known(
        &self,
        environment: &str,
        stack: &str,
    ) -> Result<Option<Arc<Listing>>> {
        let newest = self.shared.listings.slot(environment).lock().await.clone();
        let listing = match newest {
            Some(listing) => listing,
            None => self.listing(environment).await?,
        };
        let max_age = self.shared.listings.max_age * FOLLOWED_AGES;
        let current = listing.at.elapsed() < max_age
            && listing.mark.is_some_and(|mark| {
                self.shared
                    .changes
                    .stack_unchanged_since(environment, stack, mark)
            })
            && self
                .shared
                .listings
                .after_last_write(&listing, environment, stack);
        Ok(current.then_some(listing))
    }

    /// The environment's listing, made afresh when the last one is older than the limit.
    async fn listing(&self, environment: &str) -> Result<Arc<Listing>> {
        let slot = self.shared.listings.slot(environment);
        let mut slot = slot.lock().await;
        let changes = &self.shared.changes;
        let mut feed_started = false;
        self.shared.feed.get_or_init(|| {
            feed_started = true;
            let feed = events::follow(
                self.docker.clone(),
                self.shared.requests.clone(),
                changes.clone(),
            );
            tokio::spawn(feed).abort_handle()
        });
        let max_age = self.shared.listings.max_age;
        if let Some(listing) = slot.as_ref() {
            let age = listing.at.elapsed();
            let followed = age < max_age * FOLLOWED_AGES
                && listing
                    .mark
                    .is_some_and(|mark| changes.unchanged_since(environment, mark));
            if age < max_age || followed {
                return Ok(listing.clone());
            }
        }
        // The feed connects in moments; the first listing waits for it, so that it has a mark
        // and serves rollouts too (see `known`).
        let patience = if feed_started {
            FEED_PATIENCE
        } else {
            Duration::ZERO
        };
        let mark = changes.mark_connected(patience).await;
        let listing = Arc::new(self.list_environment(environment, mark).await?);
        tracing::debug!(
            %environment,
            stacks = listing.containers.len(),
            "listed what rsgo runs in the environment"
        );
        *slot = Some(listing.clone());
        Ok(listing)
    }

    /// One container list and one network list, of everything rsgo made in `environment`;
    /// `mark` is the feed's, taken just before.
    async fn list_environment(
        &self,
        environment: &str,
        mark: Option<events::Mark>,
    ) -> Result<Listing> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_ENVIRONMENT}={environment}"),
            ],
        )]);
        let at = Instant::now();
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
        let mut listing = Listing {
            at,
            mark,
            containers: HashMap::new(),
            networks: HashMap::new(),
        };
        for container in containers {
            listing
                .containers
                .entry(container.stack.clone())
                .or_default()
                .push(container);
        }
        for network in networks {
            let labels = network.labels.unwrap_or_default();
            if let Some(stack) = labels.get(LABEL_STACK).cloned() {
                let kept = Network {
                    id: network.id,
                    name: network.name,
                    labels: Some(labels),
                    ..Network::default()
                };
                listing.networks.entry(stack).or_default().push(kept);
            }
        }
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing_now() -> Listing {
        Listing {
            at: Instant::now(),
            mark: None,
            containers: HashMap::new(),
            networks: HashMap::new(),
        }
    }

    #[test]
    fn a_listing_shows_a_stack_only_if_requested_after_its_last_change_ended() {
        let listings = Listings::new(Duration::from_secs(30));
        let before = listing_now();
        assert!(
            listings.after_last_write(&before, "prod", "shop"),
            "a stack this runtime never changed"
        );
        let writing = listings.writing("prod", "shop");
        let during = listing_now();
        for listing in [&before, &during] {
            assert!(
                !listings.after_last_write(listing, "prod", "shop"),
                "a change is under way"
            );
        }
        assert!(
            listings.after_last_write(&before, "prod", "cart"),
            "another stack"
        );
        assert!(
            listings.after_last_write(&before, "staging", "shop"),
            "the same stack name in another environment"
        );
        drop(writing);
        std::thread::sleep(Duration::from_millis(2));
        let after = listing_now();
        assert!(
            !listings.after_last_write(&during, "prod", "shop"),
            "requested while the change was under way"
        );
        assert!(listings.after_last_write(&after, "prod", "shop"));
    }

    #[test]
    fn what_a_completed_rollout_read_back_serves_while_younger_than_a_listing_may_be() {
        let listings = Listings::new(Duration::from_millis(200));
        assert!(listings.left("prod", "shop").is_none(), "never changed");
        let writing = listings.writing("prod", "shop");
        assert!(listings.left("prod", "shop").is_none(), "under way");
        writing.done(Vec::new(), vec!["prod_shop_default".to_owned()]);
        let left = listings.left("prod", "shop").expect("just done");
        assert_eq!(left.networks, ["prod_shop_default"]);
        assert!(listings.left("prod", "cart").is_none(), "another stack");
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            listings.left("prod", "shop").is_none(),
            "older than a listing may be"
        );

        drop(listings.writing("prod", "shop"));
        assert!(
            listings.left("prod", "shop").is_none(),
            "a change that did not complete left nothing known"
        );
    }

    #[test]
    fn a_change_cut_short_still_counts_as_a_change() {
        let listings = Listings::new(Duration::from_secs(30));
        let before = listing_now();
        let cancelled = async {
            let _writing = listings.writing("prod", "shop");
            std::future::pending::<()>().await;
        };
        // Polled once, then dropped mid-way, as a rollout is when its task is aborted.
        let mut cancelled = Box::pin(cancelled);
        let waker = futures::task::noop_waker();
        let mut context = std::task::Context::from_waker(&waker);
        assert!(cancelled.as_mut().poll(&mut context).is_pending());
        assert!(!listings.after_last_write(&before, "prod", "shop"));
        drop(cancelled);
        assert!(
            !listings.after_last_write(&before, "prod", "shop"),
            "the listing was requested before the change ended"
        );
    }
}
