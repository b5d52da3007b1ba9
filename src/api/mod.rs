//! The HTTP API: the three CI hooks, deployment status, and health probes.

mod error;
mod hooks;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::catalog::Catalog;
use crate::store::Store;

/// Largest request body a hook accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Desired state; the handlers' only way to change anything.
    pub store: Arc<dyn Store>,
    /// Products, for validating upgrades and for sync-sources.
    pub catalog: Arc<RwLock<Catalog>>,
    /// Environment used when neither the request nor the key names one.
    pub default_environment: String,
    /// Called after sync-sources reloaded the catalog, so stacks waiting for a product act.
    pub catalog_synced: Arc<tokio::sync::Notify>,
    /// In-memory keys (Kubernetes store); `None` reads keys from the store on each request,
    /// which the embedded store answers locally and exactly.
    pub keys: Option<crate::auth::KeyIndex>,
}

/// The router with every route rsgo serves.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/hooks/redeploy", post(hooks::redeploy))
        .route("/api/hooks/upgrade", post(hooks::upgrade))
        .route("/api/hooks/sync-sources", post(hooks::sync_sources))
        .route("/api/deployments/{id}", get(hooks::deployment))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(hooks::ready))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "No such route. The hooks are POST /api/hooks/redeploy, /api/hooks/upgrade and /api/hooks/sync-sources.",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed: the hooks take POST, the status pages GET.")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
