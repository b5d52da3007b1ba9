//! Prometheus metrics, served at `/metrics` in the text exposition format. One set per process,
//! as a scrape sees one process.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A hook route and the status it answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The route, such as `/api/hooks/redeploy`.
    pub route: String,
    /// The HTTP status code.
    pub status: u16,
}

/// A hook route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The route, such as `/api/hooks/redeploy`.
    pub route: String,
}

/// Why an authentication failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Such as `unknown key` or `missing permission`.
    pub reason: String,
}

/// How something ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, `error` or `steady` (a reconcile), or a deployment phase.
    pub result: String,
}

/// A rollout's action and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionOutcome {
    /// `Redeploy` or `Upgrade`.
    pub action: String,
    /// The final phase: `Succeeded`, `Failed`, `RolledBack` or `Superseded`.
    pub outcome: String,
}

/// Every metric rsgo exports.
pub struct Metrics {
    registry: Registry,
    hook_requests: Family<RouteStatus, Counter>,
    hook_duration: Family<Route, Histogram>,
    auth_failures: Family<Reason, Counter>,
    reconciles: Family<Outcome, Counter>,
    reconcile_duration: Histogram,
    rollouts: Family<ActionOutcome, Counter>,
    catalog_syncs: Family<Outcome, Counter>,
    leader: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Histogram buckets in seconds, from a millisecond to ten minutes.
fn buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 600.0,
    ]
    .into_iter()
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("rsgo");
        let hook_requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "hook_requests",
            "Hook requests answered, by route and status code",
            hook_requests.clone(),
        );
        let hook_duration =
            Family::<Route, Histogram>::new_with_constructor(|| Histogram::new(buckets()));
        registry.register(
            "hook_request_duration_seconds",
            "Time to answer a hook request, by route",
            hook_duration.clone(),
        );
        let auth_failures = Family::<Reason, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused for their key, by reason",
            auth_failures.clone(),
        );
        let reconciles = Family::<Outcome, Counter>::default();
        registry.register(
            "reconciles",
            "Stack reconciles, by result",
            reconciles.clone(),
        );
        let reconcile_duration = Histogram::new(buckets());
        registry.register(
            "reconcile_duration_seconds",
            "Time one stack reconcile took",
            reconcile_duration.clone(),
        );
        let rollouts = Family::<ActionOutcome, Counter>::default();
        registry.register(
            "rollouts",
            "Finished rollouts, by action and final phase",
            rollouts.clone(),
        );
        let catalog_syncs = Family::<Outcome, Counter>::default();
        registry.register(
            "catalog_syncs",
            "Catalog source syncs, by result",
            catalog_syncs.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process runs the reconciler (holds the lock or the Lease), else 0",
            leader.clone(),
        );
        Self {
            registry,
            hook_requests,
            hook_duration,
            auth_failures,
            reconciles,
            reconcile_duration,
            rollouts,
            catalog_syncs,
            leader,
        }
    }

    /// Counts a hook request answered with `status` after `elapsed`.
    pub fn hook_answered(&self, route: &str, status: u16, elapsed: Duration) {
        self.hook_requests
            .get_or_create(&RouteStatus {
                route: route.to_owned(),
                status,
            })
            .inc();
        self.hook_duration
            .get_or_create(&Route {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request refused for its key.
    pub fn auth_failed(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a stack reconcile that took `elapsed`.
    pub fn reconciled(&self, ok: bool, elapsed: Duration) {
        self.reconciles
            .get_or_create(&Outcome {
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a resync pass over a stack that found it steady without a full reconcile.
    pub fn found_steady(&self) {
        self.reconciles
            .get_or_create(&Outcome {
                result: "steady".to_owned(),
            })
            .inc();
    }

    /// Counts a rollout that ended in `phase`.
    pub fn rollout_finished(&self, action: &str, phase: &str) {
        self.rollouts
            .get_or_create(&ActionOutcome {
                action: action.to_owned(),
                outcome: phase.to_owned(),
            })
            .inc();
    }

    /// Counts a sync of one catalog source.
    pub fn catalog_synced(&self, ok: bool) {
        self.catalog_syncs
            .get_or_create(&Outcome {
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    /// Says whether this process runs the reconciler now.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding the metrics failed");
        }
        text
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
