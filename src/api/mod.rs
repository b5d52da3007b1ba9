//! The HTTP API: the three CI hooks, deployment status and its live events, the admin API, the
//! web console, metrics and health probes.

mod access;
mod admin;
mod console;

mod error;
mod events;
mod guard;
mod hooks;
pub mod refusals;
mod request;
pub mod responses;
pub mod server;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use access::Caller;
pub use error::ApiError;
pub use guard::{AuthGuard, DEFAULT_FAILURES_PER_MINUTE};
pub use refusals::RefusalLog;
pub use request::{API_KEY_HEADER, RedeployRequest, UpgradeRequest, parse_body};
pub use server::{HttpLimits, serve};

use crate::audit::AuditLog;
use crate::catalog::sync::SharedCatalog;
use crate::store::Store;

/// Largest request body a hook accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest request target (path and query) rsgo answers.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request head (request line and headers) rsgo answers.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// What the handlers share. Every middleware layer and extractor clones it per request, so a
/// clone is one reference count: the parts live in [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
pub struct Shared {
    /// Desired state; the handlers' only way to change anything.
    pub store: Arc<dyn Store>,
    /// Products, for validating upgrades and for sync-sources.
    pub catalog: Arc<SharedCatalog>,
    /// Environment used when neither the request nor the key names one.
    pub default_environment: String,
    /// Called after sync-sources reloaded the catalog, so stacks waiting for a product act.
    pub catalog_synced: Arc<tokio::sync::Notify>,
    /// The API keys, indexed by hash.
    pub keys: crate::auth::KeyIndex,
    /// Limits on clients; the hooks enforce the body deadline.
    pub http: HttpLimits,
    /// Refused requests, logged without flooding the log.
    pub refusals: Arc<RefusalLog>,
    /// Failed authentications per source address, and the addresses over their budget.
    pub guard: Arc<AuthGuard>,
    /// The audit trail's queue for entries not written with a change.
    pub audit: Arc<AuditLog>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl AppState {
    /// State with default limits, a guard allowing [`DEFAULT_FAILURES_PER_MINUTE`] and an audit
    /// trail keeping [`crate::audit::DEFAULT_RETENTION`] entries. Needs a Tokio runtime: it
    /// starts the audit writer.
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<SharedCatalog>,
        keys: crate::auth::KeyIndex,
        default_environment: impl Into<String>,
    ) -> Self {
        Shared {
            audit: AuditLog::start(store.clone(), crate::audit::DEFAULT_RETENTION),
            store,
            catalog,
            default_environment: default_environment.into(),
            catalog_synced: Default::default(),
            keys,
            http: Default::default(),
            refusals: Default::default(),
            guard: Arc::new(AuthGuard::new(DEFAULT_FAILURES_PER_MINUTE)),
        }
        .into()
    }
}

/// The router with every route rsgo serves.
pub fn router(state: AppState) -> Router {
    // Every route here needs a valid key; its handler checks the permission.
    let authenticated = Router::new()
        .route("/api/hooks/redeploy", post(hooks::redeploy))
        .route("/api/hooks/upgrade", post(hooks::upgrade))
        .route("/api/hooks/sync-sources", post(hooks::sync_sources))
        .route("/api/deployments/{id}", get(hooks::deployment))
        .route(
            "/api/v1/deployments/{id}/events",
            get(events::deployment_events),
        )
        .merge(admin::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authenticate,
        ));
    Router::new()
        .merge(authenticated)
        .merge(console::routes())

        .route("/metrics", get(|| async { metrics_text() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(hooks::ready))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "No such route. The hooks are POST /api/hooks/redeploy, /api/hooks/upgrade and /api/hooks/sync-sources; the admin API is under /api/v1/.",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed on this route: the hooks take POST, the status pages GET; the README lists the admin API's methods.")
        })
        .layer(axum::middleware::from_fn(check_head))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard_authentication,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::account,
        ))
        .with_state(state)
}

/// `GET /metrics`: the Prometheus text format.
fn metrics_text() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::global().render(),
    )
        .into_response()
}

/// Answers over-long request targets (414) and heads (431) with the JSON every error has.
async fn check_head(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("The request target is longer than {MAX_URI_BYTES} bytes."),
        )
        .into_response();
    }
    let head: usize = target
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > MAX_HEAD_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "The request head is larger than {} KiB.",
                MAX_HEAD_BYTES / 1024
            ),
        )
        .into_response();
    }
    next.run(request).await
}
