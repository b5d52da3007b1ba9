//! The engine's change feed. A resync pass checks every stack against one listing of the
//! environment (see `listing`); at 1,000 stacks that listing is about 1.6 MB of JSON for the
//! engine to write and for rsgo to read, every pass, though between passes usually nothing
//! changed. So rsgo follows the engine's events about containers and networks, and a listing
//! keeps serving later passes while the feed has been connected throughout and has reported
//! nothing that could change it. The feed is followed from the engine's first listing on.
//!
//! The feed is asked for events since a second before the engine's own clock read just before
//! connecting, so a change the engine makes while the subscription is still on its way is
//! reported too. When the feed breaks (or cannot be opened), every listing is taken afresh
//! each pass, as without it, until it is connected again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;

use tokio::sync::Semaphore;

use super::container::{LABEL_ENVIRONMENT, LABEL_MANAGED, LABEL_STACK};
use super::turn;
use crate::model::docker_name_owner;
use crate::reconcile::retry_delay;

/// A feed that stayed connected this long was healthy: the next failure waits the shortest
/// delay again.
const HEALTHY: Duration = Duration::from_secs(60);

/// What the engine's feed has reported, in a form listings can compare against: every change
/// gets the next number, and the last number is kept for what it could touch.
#[derive(Debug, Default)]
pub(super) struct Changes {
    state: Mutex<State>,
    /// Woken when the feed connects.
    connects: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The number of the newest change.
    newest: u64,
    /// Whether the feed is connected.
    connected: bool,
    /// The last change that could touch the listing of any environment: the feed connecting
    /// or breaking, a network whose name tells no environment.
    everything: u64,
    /// The last changes in each environment.
    environments: HashMap<String, EnvironmentChanges>,
}

/// The last changes reported in one environment.
#[derive(Debug, Default)]
struct EnvironmentChanges {
    /// The last change of any of its objects.
    any: u64,
    /// The last change of an object that tells no stack (so could be any stack's).
    unowned: u64,
    /// The last change of each stack's objects.
    stacks: HashMap<String, u64>,
}

/// Where the feed stood when a listing was requested: the number of its newest change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark(u64);

/// What an event can change.
#[derive(Debug, PartialEq, Eq)]
enum Change<'a> {
    /// No listing.
    Nothing,
    /// What one stack of one environment has (`(environment, stack)`).
    Stack(&'a str, &'a str),
    /// What any stack of one environment has.
    Environment(&'a str),
    /// Any listing.
    Everything,
}

impl Changes {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mark to take before a listing is requested: `None` while the feed is not connected.
    pub(super) fn mark(&self) -> Option<Mark> {
        let state = self.state();
        state.connected.then_some(Mark(state.newest))
    }

    /// A mark as [`Self::mark`] gives, waiting up to `patience` for the feed to connect.
    pub(super) async fn mark_connected(&self, patience: Duration) -> Option<Mark> {
        let connected = self.connects.notified();
        if let Some(mark) = self.mark() {
            return Some(mark);
        }
        // A connection after the check above wakes `connected`, which was made before it.
        let _ = tokio::time::timeout(patience, connected).await;
        self.mark()
    }

    /// Whether nothing that could change the listing of `environment` happened since `mark`
    /// was taken: the feed stayed connected and reported nothing about it.
    pub(super) fn unchanged_since(&self, environment: &str, mark: Mark) -> bool {
        let state = self.state();
        let last = state.environments.get(environment).map_or(0, |e| e.any);
        state.quiet_since(mark) && last <= mark.0
    }

    /// Whether nothing that could change what the listing of `environment` shows of `stack`
    /// happened since `mark` was taken.
    pub(super) fn stack_unchanged_since(&self, environment: &str, stack: &str, mark: Mark) -> bool {
        let state = self.state();
        let last = state.environments.get(environment).map_or(0, |e| {
            e.unowned.max(e.stacks.get(stack).copied().unwrap_or(0))
        });
        state.quiet_since(mark) && last <= mark.0
    }

    fn record(&self, change: Change<'_>) {
        let owner = match change {
            Change::Nothing => return,
            Change::Stack(environment, stack) => Some((environment, Some(stack))),
            Change::Environment(environment) => Some((environment, None)),
            Change::Everything => None,
        };
        let mut state = self.state();
        state.newest += 1;
        let number = state.newest;
        let Some((environment, stack)) = owner else {
            state.everything = number;
            return;
        };
        let changes = state
            .environments
            .entry(environment.to_owned())
            .or_default();
        changes.any = number;
        match stack {
            Some(stack) => {
                changes.stacks.insert(stack.to_owned(), number);
            }
            None => changes.unowned = number,
        }
    }

    fn set_connected(&self, connected: bool) {
        self.state().connected = connected;
        self.record(Change::Everything);
        if connected {
            self.connects.notify_waiters();
        }
    }
}

impl State {
    /// Whether the feed has stayed connected since `mark` and reported nothing that could touch
    /// every listing.
    fn quiet_since(&self, mark: Mark) -> bool {
        self.connected && self.everything <= mark.0
    }
}

/// What an event can change in a listing. Listings show rsgo's containers and its networks. An
/// event about a container rsgo made changes what its stack has (from its labels), except the
/// commands run in it (health checks run that way; their results arrive as `health_status`
/// events). A network's events carry no labels, only its name: one made or removed changes
/// what the stack its name tells has (`<environment>_<stack>_<network>`, see `docker_name`), or
/// every listing when the name has another form; a container attached or detached changes none.
fn change(event: &EventMessage) -> Change<'_> {
    let action = event.action.as_deref().unwrap_or_default();
    let attributes = event
        .actor
        .as_ref()
        .and_then(|actor| actor.attributes.as_ref());
    let label = |key: &str| attributes.and_then(|a| a.get(key)).map(String::as_str);
    match event.typ {
        Some(EventMessageTypeEnum::NETWORK) => match action {
            "connect" | "disconnect" => Change::Nothing,
            _ => match label("name").and_then(docker_name_owner) {
                Some((environment, stack)) => Change::Stack(environment, stack),
                None => Change::Everything,
            },
        },
        Some(EventMessageTypeEnum::CONTAINER) => {
            if label(LABEL_MANAGED) != Some("true") || action.starts_with("exec_") {
                return Change::Nothing;
            }
            match (label(LABEL_ENVIRONMENT), label(LABEL_STACK)) {
                (Some(environment), Some(stack)) => Change::Stack(environment, stack),
                (Some(environment), None) => Change::Environment(environment),
                (None, _) => Change::Everything,
            }
        }
        _ => Change::Nothing,
    }
}

/// The engine's clock, in whole seconds since the epoch.
async fn engine_clock(docker: &Docker) -> Result<i64, String> {
    let info = docker.info().await.map_err(|e| e.to_string())?;
    let time = info
        .system_time
        .ok_or_else(|| "the engine did not tell its time".to_owned())?;
    let time: jiff::Timestamp = time
        .parse()
        .map_err(|e| format!("the engine's time {time:?}: {e}"))?;
    Ok(time.as_second())
}

/// Follows the engine's events into `changes` for as long as it is polled, connecting again
/// after a break. Reading the engine's clock takes a turn among the engine's `requests`; the
/// feed itself only waits, and takes none.
pub(super) async fn follow(docker: Docker, requests: Arc<Semaphore>, changes: Arc<Changes>) {
    let filters = HashMap::from([("type", vec!["container", "network"])]);
    let mut failures = 0;
    loop {
        let connected_at = Instant::now();
        let clock = {
            let _turn = turn(&requests).await;
            engine_clock(&docker).await
        };
        match clock {
            Ok(now) => {
                let since = (now - 1).to_string();
                let options = EventsOptionsBuilder::new()
                    .since(&since)
                    .filters(&filters)
                    .build();
                let mut events = docker.events(Some(options));
                changes.set_connected(true);
                let ended = loop {
                    match events.next().await {
                        Some(Ok(event)) => changes.record(change(&event)),
                        Some(Err(error)) => break error.to_string(),
                        None => break "the engine ended it".to_owned(),
                    }
                };
                changes.set_connected(false);
                tracing::debug!(reason = %ended, "the engine's event feed broke");
            }
            Err(error) => tracing::debug!(%error, "cannot follow the engine's events"),
        }
        failures = if connected_at.elapsed() >= HEALTHY {
            1
        } else {
            failures + 1
        };
        tokio::time::sleep(retry_delay(failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn event(typ: EventMessageTypeEnum, action: &str, labels: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("0123".into()),
                attributes: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn events_change_what_their_stack_has_or_their_environment_or_everything() {
        let ours = [
            (LABEL_MANAGED, "true"),
            (LABEL_ENVIRONMENT, "prod"),
            (LABEL_STACK, "shop"),
            ("name", "web"),
        ];
        let container = |action, labels| event(EventMessageTypeEnum::CONTAINER, action, labels);
        let network =
            |action, name| event(EventMessageTypeEnum::NETWORK, action, &[("name", name)]);
        for action in ["die", "destroy", "start", "health_status: unhealthy"] {
            assert_eq!(
                change(&container(action, &ours)),
                Change::Stack("prod", "shop")
            );
        }
        let stackless = container(
            "die",
            &[(LABEL_MANAGED, "true"), (LABEL_ENVIRONMENT, "prod")],
        );
        assert_eq!(change(&stackless), Change::Environment("prod"));
        for action in ["create", "destroy"] {
            let ours = network(action, "prod_shop_default");
            assert_eq!(change(&ours), Change::Stack("prod", "shop"), "{action}");
            let other = network(action, "bridge2");
            assert_eq!(change(&other), Change::Everything, "{action}");
        }
        let unlabelled = container("die", &[(LABEL_MANAGED, "true")]);
        assert_eq!(change(&unlabelled), Change::Everything);
        let nothing = [
            container("exec_start: true", &ours),
            container("die", &[("name", "other")]),
            container("die", &[(LABEL_MANAGED, "false")]),
            network("connect", "prod_shop_default"),
            network("disconnect", "bridge2"),
            event(EventMessageTypeEnum::IMAGE, "pull", &ours),
        ];
        for e in &nothing {
            assert_eq!(change(e), Change::Nothing, "{:?}", e.action);
        }
    }

    #[test]
    fn a_mark_holds_while_the_feed_stays_connected_and_quiet() {
        let changes = Changes::default();
        assert_eq!(changes.mark(), None, "not connected yet");
        changes.set_connected(true);
        let mark = changes.mark().expect("connected");
        assert!(changes.unchanged_since("prod", mark));
        changes.record(Change::Stack("staging", "shop"));
        assert!(
            changes.unchanged_since("prod", mark),
            "another environment's container changed"
        );
        changes.record(Change::Stack("prod", "shop"));
        assert!(
            !changes.unchanged_since("prod", mark),
            "one of its containers changed"
        );
        let mark = changes.mark().expect("connected");
        changes.record(Change::Environment("prod"));
        assert!(
            !changes.unchanged_since("prod", mark),
            "a container of no stack changed"
        );
        let mark = changes.mark().expect("connected");
        changes.record(Change::Everything);
        assert!(!changes.unchanged_since("prod", mark), "a network changed");
        let mark = changes.mark().expect("connected");
        changes.set_connected(false);
        changes.set_connected(true);
        assert!(
            !changes.unchanged_since("prod", mark),
            "the feed broke and came back: events may have been missed"
        );
    }

    #[test]
    fn a_stacks_mark_holds_while_nothing_of_that_stack_changes() {
        let changes = Changes::default();
        changes.set_connected(true);
        let mark = changes.mark().expect("connected");
        changes.record(Change::Stack("prod", "cart"));
        changes.record(Change::Stack("staging", "shop"));
        assert!(
            changes.stack_unchanged_since("prod", "shop", mark),
            "other stacks changed"
        );
        assert!(!changes.unchanged_since("prod", mark));
        changes.record(Change::Stack("prod", "shop"));
        assert!(!changes.stack_unchanged_since("prod", "shop", mark));
        assert!(changes.stack_unchanged_since("prod", "cart", changes.mark().unwrap()));

        for (change, why) in [
            (Change::Environment("prod"), "a container of no stack"),
            (Change::Everything, "a network of no stack"),
        ] {
            let mark = changes.mark().expect("connected");
            changes.record(change);
            assert!(
                !changes.stack_unchanged_since("prod", "shop", mark),
                "{why}"
            );
        }
        let mark = changes.mark().expect("connected");
        changes.set_connected(false);
        assert_eq!(changes.mark(), None);
        assert!(
            !changes.stack_unchanged_since("prod", "shop", mark),
            "the feed broke"
        );
    }

    /// Polls `done` every 100 ms for at most 30 s.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..300 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what} did not happen within 30 s");
    }

    /// Against the local engine, as every test that needs one.
    #[tokio::test]
    async fn the_engines_feed_reports_a_network_made_behind_rsgos_back() {
        let docker = Docker::connect_with_unix(
            "unix:///var/run/docker.sock",
            30,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("the local engine's socket");
        let changes = Arc::new(Changes::default());
        let requests = Arc::new(Semaphore::new(1));
        let feed = tokio::spawn(follow(docker.clone(), requests, changes.clone()));
        eventually("connecting to the feed", || changes.mark().is_some()).await;
        // A mark that holds for a second: the events replayed from the second before
        // connecting (and any other engine activity) have passed.
        let mut mark = changes.mark().expect("connected");
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if changes.unchanged_since("any", mark) {
                break;
            }
            mark = changes.mark().expect("connected");
        }
        assert!(
            changes.unchanged_since("any", mark),
            "the engine never went quiet"
        );
        let name = format!("rsgo-feed-test-{}", std::process::id());
        let network = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            ..Default::default()
        };
        docker.create_network(network).await.expect("a network");
        eventually("the feed reporting the new network", || {
            !changes.unchanged_since("any", mark)
        })
        .await;
        docker.remove_network(&name).await.expect("removing it");
        feed.abort();
    }
}
