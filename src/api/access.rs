//! Who is calling: the API key of a request is checked once, before its handler runs, and the
//! handler receives the key as a [`Caller`]. Every answer of the API is then accounted for:
//! hook metrics, and an audit entry for each hook call, each admin change and each refusal
//! (unless the handler already wrote one with its change).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::request::API_KEY_HEADER;
use super::{ApiError, AppState};
use crate::auth::{self, KeyRejection};
use crate::model::{ApiKey, ApiKeyStatus, AuditActor, AuditOutcome, Permission};
use crate::store::Store;
use crate::{audit, metrics};

/// How often a key's last-used time is written at most.
const LAST_USED_GRANULARITY: SignedDuration = SignedDuration::from_secs(60);
/// The hook routes, the only paths hook metrics are kept for (so no client can make up labels).
const HOOK_ROUTES: [&str; 3] = [
    "/api/hooks/redeploy",
    "/api/hooks/upgrade",
    "/api/hooks/sync-sources",
];
/// Longest error message kept in an audit entry.
const MOST_DETAIL: usize = 300;

/// The authenticated key of a request and the address it came from.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key, as the index holds it.
    pub key: Arc<ApiKey>,
    /// The peer address of the connection.
    pub address: Option<IpAddr>,
}

impl Caller {
    /// Refuses with 403 unless the key grants `permission`.
    pub fn require(&self, state: &AppState, permission: Permission) -> Result<(), ApiError> {
        if auth::grants(&self.key.spec.permissions, permission) {
            return Ok(());
        }
        let name = &self.key.spec.display_name;
        state.refusals.refused(
            "missing permission",
            &format!("key '{name}' lacks {permission}"),
        );
        metrics::global().auth_failed("missing permission");
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("API key '{name}' lacks the permission '{permission}'."),
        ))
    }

    /// The audit trail's name for this caller.
    pub fn actor(&self) -> AuditActor {
        audit::key_actor(&self.key, self.address)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error (route without authentication).",
            )
        })
    }
}

/// Marks a response whose audit entry the handler wrote with its change.
#[derive(Debug, Clone, Copy)]
pub struct Audited;

/// The address a request came from, when the server knows it.
pub fn peer(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// Checks the request's key, then runs the handler with it as a [`Caller`].
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(API_KEY_HEADER)
        .map(|v| v.to_str().unwrap_or_default());
    let address = peer(&request);
    let checked = match auth::presented_hash(presented) {
        Ok(wanted) => match state.keys.lookup(&wanted).await {
            Ok(found) => auth::verify(&wanted, found, Timestamp::now()),
            Err(error) => return ApiError::from(error).into_response(),
        },
        Err(rejection) => Err(rejection),
    };
    let key = match checked {
        Ok(key) => key,
        Err(rejection) => return refuse(&state, rejection),
    };
    record_use(&state.store, &key).await;
    let caller = Caller { key, address };
    let actor = caller.actor();
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(actor);
    response
}

/// 401 for a key that does not authenticate; logged with its reason, never any part of the key.
fn refuse(state: &AppState, rejection: KeyRejection) -> Response {
    state.refusals.refused(rejection.label(), "");
    metrics::global().auth_failed(rejection.label());
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, rejection.message()).into_response();
    response.extensions_mut().insert(Refusal(rejection.label()));
    response
}

/// Why a request was refused, for its audit entry.
#[derive(Debug, Clone, Copy)]
pub struct Refusal(pub &'static str);

/// Records when a key was used, at most once a minute, so requests are not all writes.
async fn record_use(store: &std::sync::Arc<dyn Store>, key: &ApiKey) {
    let now = Timestamp::now();
    let last = key.status.as_ref().and_then(|s| s.last_used_at);
    if last.is_some_and(|at| now.duration_since(at) < LAST_USED_GRANULARITY) {
        return;
    }
    let mut used = key.clone();
    used.status = Some(ApiKeyStatus {
        last_used_at: Some(now),
    });
    if let Err(error) = store.update_status(&used).await {
        tracing::warn!(key = %key.name_any(), %error, "recording the key's last use failed");
    }
}

/// The audit trail's name for what a request to `path` does.
fn action_of(method: &Method, path: &str) -> String {
    if let Some(hook) = path.strip_prefix("/api/hooks/") {
        return format!("hook.{hook}");
    }
    // `apikeys` → `apikey`, as the handlers that record their own entries name them.
    let resource = path
        .trim_start_matches("/api/v1/")
        .trim_start_matches("/api/")
        .split('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches('s');
    let verb = match *method {
        Method::GET | Method::HEAD => "read",
        Method::DELETE => "delete",
        _ if path.ends_with("/revoke") => "revoke",
        _ => "create",
    };
    format!("{resource}.{verb}")
}

/// Runs the request, then counts it (hook metrics) and records it in the audit trail when it
/// is a hook call, an admin change or a refusal that the handler did not record itself.
pub async fn account(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Probes, metrics and the console are neither counted nor audited.
    if !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let address = peer(&request);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let hook = HOOK_ROUTES.iter().find(|route| **route == path);
    if let Some(route) = hook {
        metrics::global().hook_answered(route, status.as_u16(), started.elapsed());
    }
    let refused = matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    );
    // A change is audited when a known key asked for it; unauthenticated ones are refusals.
    let known = response.extensions().get::<AuditActor>().cloned();
    let change = known.is_some() && !matches!(method, Method::GET | Method::HEAD);
    if response.extensions().get::<Audited>().is_some() || !(hook.is_some() || change || refused) {
        return response;
    }
    let actor = known.unwrap_or_else(|| AuditActor {
        name: "unknown".into(),
        key_prefix: None,
        address: address.map(|a| a.to_string()),
    });
    let mut event = audit::event(actor, &action_of(&method, &path), None);
    event.spec.status_code = Some(status.as_u16());
    event.spec.outcome = match status.as_u16() {
        200..=299 => AuditOutcome::Succeeded,
        400..=499 => AuditOutcome::Refused,
        _ => AuditOutcome::Failed,
    };
    event.spec.detail = match response.extensions().get::<Refusal>() {
        Some(Refusal(reason)) => Some((*reason).to_owned()),
        // Upgrade errors may quote variables; only the status is kept for them.
        None if path == "/api/hooks/upgrade" => None,
        None => response
            .extensions()
            .get::<super::error::ErrorMessage>()
            .map(|m| m.0.chars().take(MOST_DETAIL).collect()),
    };
    state.audit.record(event);
    response
}
