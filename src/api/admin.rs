//! The admin API under `/api/v1/`: API keys, stacks, environments, catalog sources, deployments
//! and the audit trail, for keys with the `Admin` permission. Changes are recorded in the audit
//! trail in the same write as the change.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use jiff::Timestamp;
use kube::ResourceExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::access::{Audited, Caller};
use super::request::{parse_body, read_body, read_json};
use super::{ApiError, AppState};
use crate::model::{
    ApiKey, AuditEvent, CatalogSource, DeploymentRecord, Environment, Permission, STACK_LABEL,
    Stack, redact,
};
use crate::store::{Object, Write, encode};
use crate::{Error, audit, auth};

/// Most entries a listing returns when not asked for fewer.
const DEFAULT_LIMIT: usize = 100;
/// Most entries a listing returns at all.
const MOST_LIMIT: usize = 1000;

/// The admin routes; the router authenticates them, each handler checks `Admin`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/apikeys", get(list_keys).post(create_key))
        .route("/api/v1/apikeys/{name}/revoke", post(revoke_key))
        .route("/api/v1/apikeys/{name}", axum::routing::delete(delete_key))
        .route("/api/v1/stacks", get(list_stacks))
        .route("/api/v1/stacks/{environment}/{name}", get(one_stack))
        .route("/api/v1/environments", get(list_environments))
        .route("/api/v1/catalogsources", get(list_sources))
        .route("/api/v1/deployments", get(list_deployments))
        .route("/api/v1/deployments/{id}", get(one_deployment))
        .route("/api/v1/audit", get(list_audit))
}

type Answer = Result<Json<Value>, ApiError>;
type AuditedAnswer = Result<(StatusCode, Extension<Audited>, Json<Value>), ApiError>;

fn admin(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    caller.require(state, Permission::Admin)
}

/// A path segment, or 400 saying which.
fn segment<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|e| ApiError::bad_request(format!("The path is not valid: {e}.")))
}

/// The query string as `T`, or 400 naming the problem.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(value)| value)
        .map_err(|e| ApiError::bad_request(format!("Invalid query: {}.", e.body_text())))
}

fn items<K: Object>(objects: &[K], show: impl Fn(&K) -> crate::Result<Value>) -> Answer {
    let items = objects
        .iter()
        .map(show)
        .collect::<crate::Result<Vec<_>>>()?;
    Ok(Json(json!({"success": true, "items": items})))
}

/// A key as listings show it: never its hash.
fn key_view(key: &ApiKey) -> crate::Result<Value> {
    Ok(json!({
        "name": key.name_any(),
        "displayName": key.spec.display_name,
        "prefix": key.spec.prefix,
        "permissions": key.spec.permissions,
        "environment": key.spec.environment,
        "expiresAt": key.spec.expires_at,
        "state": auth::state(key, Timestamp::now()),
        "revokedAt": key.spec.revoked_at,
        "revokedReason": key.spec.revoked_reason,
        "lastUsedAt": key.status.as_ref().and_then(|s| s.last_used_at),
        "createdAt": key.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }))
}

/// `GET /api/v1/apikeys`
async fn list_keys(State(state): State<AppState>, caller: Caller) -> Answer {
    admin(&state, &caller)?;
    let mut keys = state.store.list::<ApiKey>(None).await?;
    keys.sort_by(|a, b| a.spec.display_name.cmp(&b.spec.display_name));
    items(&keys, key_view)
}

/// The body of `POST /api/v1/apikeys`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKey {
    name: String,
    permissions: Vec<Permission>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

/// `POST /api/v1/apikeys`: the key is in the answer, once.
async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> AuditedAnswer {
    admin(&state, &caller)?;
    let request: CreateKey = read_json(&state, &headers, body).await?;
    let environment = request.environment.filter(|e| !e.is_empty());
    if let Some(env) = &environment
        && state.store.get::<Environment>("", env).await?.is_none()
    {
        return Err(ApiError::bad_request(format!(
            "Environment '{env}' does not exist."
        )));
    }
    if request.expires_at.is_some_and(|at| at <= Timestamp::now()) {
        return Err(ApiError::bad_request("expiresAt is in the past."));
    }
    let key = auth::generate();
    let record = auth::key_record(
        &key,
        request.name.trim(),
        request.permissions,
        environment,
        request.expires_at,
    )
    .map_err(|e| ApiError::bad_request(format!("Cannot create the key: {e}.")))?;
    let mut event = audit::event(caller.actor(), "apikey.create", Some(record.name_any()));
    event.spec.status_code = Some(201);
    event.spec.detail = Some(Permission::names(&record.spec.permissions));
    let stored: ApiKey = audit::write_with(&state.store, Write::Create(encode(&record)?), &event)
        .await
        .map_err(|e| match e {
            Error::AlreadyExists { .. } => ApiError::new(
                StatusCode::CONFLICT,
                format!("An API key named '{}' already exists.", record.name_any()),
            ),
            other => other.into(),
        })?;
    tracing::info!(key = %stored.name_any(), by = %caller.key.spec.display_name, "API key created");
    let mut answer = key_view(&stored)?;
    super::hooks::merge(
        &mut answer,
        json!({
            "success": true,
            "message": "Created the key. Copy it now: it is not shown again.",
            "key": key.plaintext,
        }),
    );
    Ok((StatusCode::CREATED, Extension(Audited), Json(answer)))
}

/// The key named in the path.
async fn named_key(
    state: &AppState,
    name: Result<Path<String>, PathRejection>,
) -> Result<ApiKey, ApiError> {
    let name = segment(name)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("API key '{name}' not found."),
        )
    };
    if !crate::model::is_dns_subdomain(&name) {
        return Err(not_found());
    }
    state
        .store
        .get::<ApiKey>("", &name)
        .await?
        .ok_or_else(not_found)
}

/// The optional body of `POST /api/v1/apikeys/{name}/revoke`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    reason: Option<String>,
}

/// Reads an optional JSON body: none at all is `T::default()`.
async fn optional_json<T: DeserializeOwned + Default>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(state, headers, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_body(&bytes)
}

/// `POST /api/v1/apikeys/{name}/revoke`
async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> AuditedAnswer {
    admin(&state, &caller)?;
    let mut key = named_key(&state, name).await?;
    let request: Revoke = optional_json(&state, &headers, body).await?;
    if key.spec.revoked {
        state.audit.record(change_event(
            &caller,
            "apikey.revoke",
            &key,
            "already revoked",
        ));
        let answer = json!({"success": true, "message": format!("API key '{}' was already revoked.", key.spec.display_name)});
        return Ok((StatusCode::OK, Extension(Audited), Json(answer)));
    }
    auth::revoke(&mut key, request.reason);
    let event = change_event(&caller, "apikey.revoke", &key, "revoked");
    let stored: ApiKey =
        audit::write_with(&state.store, Write::Update(encode(&key)?), &event).await?;
    tracing::info!(key = %stored.name_any(), by = %caller.key.spec.display_name, "API key revoked");
    let mut answer = key_view(&stored)?;
    super::hooks::merge(
        &mut answer,
        json!({"success": true, "message": format!("Revoked API key '{}'; it is refused from now on.", stored.spec.display_name)}),
    );
    Ok((StatusCode::OK, Extension(Audited), Json(answer)))
}

fn change_event(caller: &Caller, action: &str, key: &ApiKey, detail: &str) -> AuditEvent {
    let mut event = audit::event(caller.actor(), action, Some(key.name_any()));
    event.spec.status_code = Some(200);
    event.spec.detail = Some(format!("{detail} ({})", key.spec.prefix));
    event
}

/// `DELETE /api/v1/apikeys/{name}`
async fn delete_key(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> AuditedAnswer {
    admin(&state, &caller)?;
    let key = named_key(&state, name).await?;
    let event = change_event(&caller, "apikey.delete", &key, "deleted");
    let delete = Write::Delete {
        kind: "ApiKey".into(),
        namespace: String::new(),
        name: key.name_any(),
    };
    state
        .store
        .write(audit::with_entry(&event, vec![delete])?)
        .await?;
    tracing::info!(key = %key.name_any(), by = %caller.key.spec.display_name, "API key deleted");
    let answer = json!({"success": true, "message": format!("Deleted API key '{}'.", key.spec.display_name)});
    Ok((StatusCode::OK, Extension(Audited), Json(answer)))
}

/// `GET /api/v1/stacks`
async fn list_stacks(State(state): State<AppState>, caller: Caller) -> Answer {
    admin(&state, &caller)?;
    let mut stacks = state.store.list::<Stack>(None).await?;
    stacks.sort_by(|a, b| {
        (&a.spec.environment, a.name_any()).cmp(&(&b.spec.environment, b.name_any()))
    });
    items(&stacks, redact::stack_document)
}

/// `GET /api/v1/stacks/{environment}/{name}`: the stack and its latest deployments.
async fn one_stack(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    admin(&state, &caller)?;
    let (environment, name) = segment(path)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Stack '{name}' not found in environment '{environment}'."),
        )
    };
    if !crate::model::is_dns_label(&environment) || !crate::model::is_dns_label(&name) {
        return Err(not_found());
    }
    let Some(env) = state.store.get::<Environment>("", &environment).await? else {
        return Err(not_found());
    };
    let namespace = env.stack_namespace();
    let stack = state
        .store
        .get::<Stack>(&namespace, &name)
        .await?
        .ok_or_else(not_found)?;
    let mut records = state
        .store
        .list_labelled::<DeploymentRecord>(&namespace, STACK_LABEL, &name)
        .await?;
    newest_first(&mut records);
    let deployments = records
        .iter()
        .take(DEFAULT_LIMIT)
        .map(redact::record_document)
        .collect::<crate::Result<Vec<_>>>()?;
    Ok(Json(json!({
        "success": true,
        "stack": redact::stack_document(&stack)?,
        "deployments": deployments,
    })))
}

/// `GET /api/v1/environments`
async fn list_environments(State(state): State<AppState>, caller: Caller) -> Answer {
    admin(&state, &caller)?;
    items(&state.store.list::<Environment>(None).await?, encode)
}

/// `GET /api/v1/catalogsources`
async fn list_sources(State(state): State<AppState>, caller: Caller) -> Answer {
    admin(&state, &caller)?;
    items(&state.store.list::<CatalogSource>(None).await?, encode)
}

/// Which deployments `GET /api/v1/deployments` returns.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentQuery {
    /// Only this stack's.
    stack: Option<String>,
    /// Only this environment's.
    environment: Option<String>,
    /// At most this many.
    limit: Option<usize>,
}

fn newest_first(records: &mut [DeploymentRecord]) {
    records.sort_by(|a, b| {
        (b.spec.requested_at, b.name_any()).cmp(&(a.spec.requested_at, a.name_any()))
    });
}

fn limit(wanted: Option<usize>) -> Result<usize, ApiError> {
    match wanted {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MOST_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is out of range; give 1 to {MOST_LIMIT}."
        ))),
    }
}

/// `GET /api/v1/deployments`: newest first.
async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
    wanted: Result<Query<DeploymentQuery>, QueryRejection>,
) -> Answer {
    admin(&state, &caller)?;
    let wanted = query(wanted)?;
    let limit = limit(wanted.limit)?;
    let mut records: Vec<DeploymentRecord> = state
        .store
        .list::<DeploymentRecord>(None)
        .await?
        .into_iter()
        .filter(|r| wanted.stack.as_ref().is_none_or(|s| *s == r.spec.stack))
        .filter(|r| {
            wanted
                .environment
                .as_ref()
                .is_none_or(|e| *e == r.spec.environment)
        })
        .collect();
    newest_first(&mut records);
    records.truncate(limit);
    items(&records, redact::record_document)
}

/// `GET /api/v1/deployments/{id}`
async fn one_deployment(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    admin(&state, &caller)?;
    let record = super::hooks::visible_record(&state, &caller, id).await?;
    Ok(Json(
        json!({"success": true, "deployment": redact::record_document(&record)?}),
    ))
}

/// Which entries `GET /api/v1/audit` returns.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Only this actor's.
    actor: Option<String>,
    /// Only actions starting with this, such as `apikey.` or `hook.redeploy`.
    action: Option<String>,
    /// At most this many.
    limit: Option<usize>,
}

/// `GET /api/v1/audit`: newest first, including every entry queued before the request.
async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    wanted: Result<Query<AuditQuery>, QueryRejection>,
) -> Answer {
    admin(&state, &caller)?;
    let wanted = query(wanted)?;
    let query = audit::Query {
        limit: limit(wanted.limit)?,
        actor: wanted.actor,
        action: wanted.action,
    };
    state.audit.flush().await;
    let events = audit::read(&state.store, &query).await?;
    items(&events, encode)
}
