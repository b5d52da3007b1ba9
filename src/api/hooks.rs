//! Hook handlers: authenticate, validate, record desired state and a deployment record. They
//! never touch a runtime; the reconciler does the rollout.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use rand::RngExt;
use serde_json::{Value, json};

use super::access::{Audited, Caller};
use super::request::{RedeployRequest, UpgradeRequest, read_json, resolve_environment};
use super::responses::{DeploymentResponse, RedeployResponse, SyncResponse, UpgradeResponse};
use super::{ApiError, AppState};
use crate::catalog::{self, render_with_secrets, sync, variables};
use crate::model::{
    DEPLOYMENT_ANNOTATION, DeploymentAction, DeploymentPhase, DeploymentRecord,
    DeploymentRecordSpec, Environment, Permission, REDEPLOY_ANNOTATION, STACK_LABEL, Stack,
};
use crate::store::{Store, Write, encode};
use crate::{Error, Result, audit, retry};

/// How long `"wait": true` waits for a rollout before answering.
const WAIT_LIMIT: Duration = Duration::from_secs(15 * 60);

/// A new deployment id: 96 random bits in hex.
fn new_deployment_id() -> String {
    hex::encode(rand::rng().random::<[u8; 12]>())
}

fn status_url(id: &str) -> String {
    format!("/api/deployments/{id}")
}

/// The deployment a request may join instead of making its own: the stack's latest request, when
/// it asks for the same `action` and the reconciler has not taken it up yet. Joining it serves the
/// new request fully: nothing of that rollout has happened yet, images included.
async fn pending_request(
    store: &std::sync::Arc<dyn Store>,
    stack: &Stack,
    action: DeploymentAction,
) -> Result<Option<DeploymentRecord>> {
    let Some(id) = stack.annotations().get(DEPLOYMENT_ANNOTATION) else {
        return Ok(None);
    };
    let namespace = stack.namespace().unwrap_or_default();
    Ok(store
        .get::<DeploymentRecord>(&namespace, id)
        .await?
        .filter(|record| record.status.is_none() && record.spec.action == action))
}

/// Reads the stack, lets `change` derive the desired stack and the record, and stores both with
/// the request's audit entry in one atomic write, retrying from a fresh read when another writer
/// changed the stack meanwhile. With `join`, a request of that action that the stack already has
/// waiting is answered instead (and its audit entry queued).
async fn request_rollout<F>(
    state: &AppState,
    env: &Environment,
    stack_name: &str,
    caller: &Caller,
    join: Option<DeploymentAction>,
    change: F,
) -> Result<(Stack, DeploymentRecord), ApiError>
where
    F: Fn(&Stack) -> Result<(Stack, DeploymentRecordSpec), ApiError>,
{
    let store = &state.store;
    let (environment, namespace) = (env.name_any(), env.stack_namespace());
    let entry = |action: DeploymentAction, id: &str, joined: bool| {
        let hook = match action {
            DeploymentAction::Redeploy => "hook.redeploy",
            DeploymentAction::Upgrade => "hook.upgrade",
        };
        let mut event = audit::event(
            caller.actor(),
            hook,
            Some(format!("{environment}/{stack_name}")),
        );
        event.spec.status_code = Some(200);
        event.spec.detail = Some(if joined {
            format!("joined waiting deployment {id}")
        } else {
            format!("deployment {id}")
        });
        event
    };
    // Store failures (a lost race among them) are the outer error; a request the change refuses
    // is the inner one, and is answered at once.
    let attempt = || async {
        let Some(stack) = store.get::<Stack>(&namespace, stack_name).await? else {
            return Ok(Err(ApiError::bad_request(format!(
                "Stack '{stack_name}' not found in environment '{environment}'."
            ))));
        };
        if let Some(action) = join
            && let Some(waiting) = pending_request(store, &stack, action).await?
        {
            state.audit.record(entry(action, &waiting.name_any(), true));
            return Ok(Ok((stack, waiting)));
        }
        let (mut desired, mut spec) = match change(&stack) {
            Ok(changed) => changed,
            Err(refused) => return Ok(Err(refused)),
        };
        spec.requested_by = caller.key.spec.display_name.clone();
        let id = new_deployment_id();
        let event = entry(spec.action, &id, false);
        desired
            .annotations_mut()
            .insert(DEPLOYMENT_ANNOTATION.into(), id.clone());
        let record = DeploymentRecord {
            metadata: ObjectMeta {
                name: Some(id),
                namespace: Some(namespace.clone()),
                labels: Some([(STACK_LABEL.to_owned(), stack.name_any())].into()),
                // Owned by the stack: deleting the stack deletes its history.
                owner_references: stack.owner_ref(&()).map(|owner| vec![owner]),
                ..Default::default()
            },
            spec,
            status: None,
        };
        let writes = audit::with_entry(
            &event,
            vec![
                Write::Create(encode(&record)?),
                Write::Update(encode(&desired)?),
            ],
        )?;
        store.write(writes).await?;
        Ok(Ok((stack, record)))
    };
    match retry::on_conflict(attempt).await {
        Ok(answer) => answer,
        Err(Error::Conflict { .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Stack '{stack_name}' is being changed by many requests at once; retry shortly."
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Waits until a deployment record reaches a final phase. A superseded request is answered by
/// the rollout that carried it out: its record is followed to that one.
async fn wait_for(
    store: &std::sync::Arc<dyn Store>,
    environment: &str,
    id: &str,
) -> Result<DeploymentRecord, ApiError> {
    let mut wake = store.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    let mut current = id.to_owned();
    loop {
        let record = store
            .require::<DeploymentRecord>(environment, &current)
            .await?;
        let status = record.status.clone().unwrap_or_default();
        match (status.phase, status.served_by) {
            (DeploymentPhase::Superseded, Some(served_by)) if served_by != current => {
                current = served_by;
                continue;
            }
            (phase, _) if phase.is_terminal() => return Ok(record),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "Deployment {id} has not finished yet; follow it at {}.",
                    status_url(id)
                ),
            )
            .with(json!({"deploymentId": id})));
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), wake.changed()).await;
    }
}

/// Turns the finished record that served request `id` into the hook's answer: the success body
/// (naming the serving deployment when it was another), or a failure with its message.
fn rollout_result<T>(
    id: &str,
    record: &DeploymentRecord,
    success: impl FnOnce(Option<String>) -> T,
) -> Result<Json<T>, ApiError> {
    let status = record.status.clone().unwrap_or_default();
    let served_by = Some(record.name_any()).filter(|by| by != id);
    if status.phase == DeploymentPhase::Succeeded {
        return Ok(Json(success(served_by)));
    }
    let mut extra = json!({"deploymentId": id, "phase": status.phase, "statusUrl": status_url(id)});
    if let Some(by) = served_by {
        merge(&mut extra, json!({"servedBy": by}));
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        status
            .message
            .unwrap_or_else(|| format!("Deployment ended as {:?}.", status.phase)),
    )
    .with(extra))
}

/// `POST /api/hooks/redeploy`
pub async fn redeploy(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(Extension<Audited>, Json<RedeployResponse>), ApiError> {
    caller.require(&state, Permission::Redeploy)?;
    let key = &caller.key;
    let request: RedeployRequest = read_json(&state, &headers, body).await?;
    if request.stack_name.is_empty() {
        return Err(ApiError::bad_request("stackName must not be empty."));
    }
    let env = resolve_environment(&state, request.environment_id.as_deref(), key).await?;
    let (environment, namespace) = (env.name_any(), env.stack_namespace());
    let (stack, record) = request_rollout(
        &state,
        &env,
        &request.stack_name,
        &caller,
        Some(DeploymentAction::Redeploy),
        |stack| {
            let mut desired = stack.clone();
            desired
                .annotations_mut()
                .insert(REDEPLOY_ANNOTATION.into(), Timestamp::now().to_string());
            let version = desired_version(stack);
            let spec = DeploymentRecordSpec {
                stack: stack.name_any(),
                environment: environment.clone(),
                action: DeploymentAction::Redeploy,
                from_version: version.clone(),
                to_version: version,
                previous_variables: None,
                requested_by: String::new(),
                requested_at: Timestamp::now(),
            };
            Ok((desired, spec))
        },
    )
    .await?;
    let id = record.name_any();
    tracing::info!(stack = %request.stack_name, %environment, deployment = %id, key = %key.spec.display_name, "redeploy requested");
    let answer = |served_by| RedeployResponse {
        success: true,
        message: format!(
            "Successfully triggered redeploy of '{}'.",
            request.stack_name
        ),
        deployment_id: id.clone(),
        stack_name: request.stack_name.clone(),
        stack_version: desired_version(&stack).unwrap_or_default(),
        status_url: status_url(&id),
        served_by,
    };
    if request.wait {
        let record = wait_for(&state.store, &namespace, &id).await?;
        return rollout_result(&id, &record, answer).map(|json| (Extension(Audited), json));
    }
    Ok((Extension(Audited), Json(answer(None))))
}

/// The version a stack is asked to run: its pinned version, else the one it runs.
fn desired_version(stack: &Stack) -> Option<String> {
    stack.spec.version.clone().or_else(|| {
        stack
            .status
            .as_ref()
            .and_then(|s| s.deployed_version.clone())
    })
}

/// `POST /api/hooks/upgrade`
pub async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(Extension<Audited>, Json<UpgradeResponse>), ApiError> {
    caller.require(&state, Permission::Upgrade)?;
    let key = &caller.key;
    let request: UpgradeRequest = read_json(&state, &headers, body).await?;
    if request.stack_name.is_empty() {
        return Err(ApiError::bad_request("stackName must not be empty."));
    }
    let env = resolve_environment(&state, request.environment_id.as_deref(), key).await?;
    let (environment, namespace) = (env.name_any(), env.stack_namespace());
    let target = catalog::parse_version(&request.target_version)
        .map_err(|e| ApiError::bad_request(format!("targetVersion {e}.")))?;
    // The values of variables taken from Secrets, read once: the new version is rendered with
    // them before anything is stored.
    let mut from_secrets = BTreeMap::new();
    if let Some(stack) = state
        .store
        .get::<Stack>(&namespace, &request.stack_name)
        .await?
    {
        sync::ensure_version(
            &state.store,
            &state.catalog,
            &stack.spec.product,
            Some(&target.to_string()),
            sync::MissPolicy::EveryMiss,
        )
        .await?;
        from_secrets = crate::reconcile::secret_values(&state.store, &stack)
            .await
            .map_err(|e| ApiError::bad_request(format!("Cannot upgrade to {target}: {e}.")))?;
    }
    let (_, record) = request_rollout(&state, &env, &request.stack_name, &caller, None, |stack| {
        upgraded(&state, &env, &request, &target, &from_secrets, stack)
    })
    .await?;
    let id = record.name_any();
    let previous = record.spec.from_version.clone().unwrap_or_default();
    tracing::info!(stack = %request.stack_name, %environment, deployment = %id, from = %previous, to = %target, "upgrade requested");
    let answer = |served_by| UpgradeResponse {
        success: true,
        message: format!(
            "Successfully upgraded '{}' from {previous} to {target}.",
            request.stack_name
        ),
        deployment_id: id.clone(),
        previous_version: previous.clone(),
        new_version: target.to_string(),
        status_url: status_url(&id),
        served_by,
    };
    if request.wait {
        let record = wait_for(&state.store, &namespace, &id).await?;
        return rollout_result(&id, &record, answer).map(|json| (Extension(Audited), json));
    }
    Ok((Extension(Audited), Json(answer(None))))
}

/// The stack an upgrade asks for, and its record: the target must be in the catalog and newer
/// than what the stack is asked to run, the request may only set declared variables, and the
/// result must render in the stack's environment.
fn upgraded(
    state: &AppState,
    env: &Environment,
    request: &UpgradeRequest,
    target: &semver::Version,
    from_secrets: &BTreeMap<String, String>,
    stack: &Stack,
) -> Result<(Stack, DeploymentRecordSpec), ApiError> {
    let catalog = state.catalog.read()?;
    let product = &stack.spec.product;
    let pv = catalog.find(product, &target.to_string()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Version '{}' of product '{product}' is not in the catalog. Available versions: {}.",
            request.target_version,
            catalog.available(product)
        ))
    })?;
    // Compared with what the stack is asked to run, not with what runs now: an upgrade
    // still rolling out counts, so two upgrades in a row can never go backwards.
    let desired = desired_version(stack);
    if let Some(desired) = &desired
        && let Ok(desired_version) = catalog::parse_version(desired)
        && *target <= desired_version
    {
        return Err(ApiError::bad_request(format!(
            "Stack '{}' is at {desired}; targetVersion {target} is not newer, and upgrades never go back. Available versions: {}.",
            stack.name_any(),
            catalog.available(product)
        )));
    }
    let part = stack.spec.stack.as_deref();
    let declared = &pv
        .stack(part)
        .map_err(|e| ApiError::bad_request(format!("Cannot upgrade to {target}: {e}.")))?
        .variables;
    let unknown = variables::undeclared(declared, request.variables.keys());
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Cannot upgrade to {target}: variable(s) {} are not declared by {product} {target}; \
             a request may only set declared variables.",
            unknown.join(", ")
        )));
    }
    let mut secret_refs = BTreeMap::new();
    for (name, source) in &stack.spec.variables_from {
        if request.variables.contains_key(name) {
            return Err(ApiError::bad_request(format!(
                "Cannot upgrade to {target}: variable {name} takes its value from Secret '{}' \
                 (spec.variablesFrom); a request cannot set it.",
                source.secret_key_ref.name
            )));
        }
        if !declared.contains_key(name) {
            return Err(ApiError::bad_request(format!(
                "Cannot upgrade to {target}: variable {name} (from Secret '{}') is not declared by \
                 {product} {target}; remove it from spec.variablesFrom first.",
                source.secret_key_ref.name
            )));
        }
        secret_refs.insert(name.clone(), source.secret_key_ref.clone());
    }
    // Stored values the new version no longer declares are dropped; the record keeps them
    // for a rollback.
    let mut merged: BTreeMap<String, String> = stack
        .spec
        .variables
        .iter()
        .filter(|(name, _)| declared.contains_key(*name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    merged.extend(request.variables.clone());
    let mut values = merged.clone();
    values.extend(from_secrets.clone());
    render_with_secrets(&stack.name_any(), env, &pv, part, &values, &secret_refs)
        .map_err(|e| ApiError::bad_request(format!("Cannot upgrade to {target}: {e}.")))?;
    let mut desired_stack = stack.clone();
    desired_stack.spec.version = Some(target.to_string());
    desired_stack.spec.variables = merged;
    let spec = DeploymentRecordSpec {
        stack: stack.name_any(),
        environment: env.name_any(),
        action: DeploymentAction::Upgrade,
        from_version: desired,
        to_version: Some(target.to_string()),
        previous_variables: Some(stack.spec.variables.clone()),
        requested_by: String::new(),
        requested_at: Timestamp::now(),
    };
    Ok((desired_stack, spec))
}

/// Adds the fields of the object `extra` to the object `body`.
pub(super) fn merge(body: &mut Value, extra: Value) {
    if let (Some(map), Value::Object(extra)) = (body.as_object_mut(), extra) {
        map.extend(extra);
    }
}

/// `POST /api/hooks/sync-sources`: no body needed.
pub async fn sync_sources(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SyncResponse>, ApiError> {
    caller.require(&state, Permission::SyncSources)?;
    let report = sync::sync_all(&state.store, &state.catalog).await?;
    state.catalog_synced.notify_one();
    if report.errors.is_empty() {
        return Ok(Json(SyncResponse {
            success: true,
            stacks_loaded: report.versions_loaded,
            sources_synced: report.sources_synced,
            message: format!(
                "Synced {} source(s), loaded {} stack(s).",
                report.sources_synced, report.versions_loaded
            ),
        }));
    }
    let message = format!(
        "Sync found {} problem(s); sources that failed keep their last good catalog: {}",
        report.errors.len(),
        report.errors.join("; ")
    );
    let extra = json!({"stacksLoaded": report.versions_loaded, "sourcesSynced": report.sources_synced, "errors": report.errors});
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).with(extra))
}

/// `GET /api/deployments/{id}`: any valid key may read a record of an environment it may act on.
pub async fn deployment(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeploymentResponse>, ApiError> {
    let record = visible_record(&state, &caller, id).await?;
    Ok(Json(deployment_response(record)))
}

/// The deployment record named in the path, if `caller` may see it: any valid key may read the
/// records of the environments it may act on.
pub(super) async fn visible_record(
    state: &AppState,
    caller: &Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<DeploymentRecord, ApiError> {
    let key = &caller.key;
    let Path(id) = id.map_err(|e| {
        ApiError::bad_request(format!("The deployment id in the path is not valid: {e}."))
    })?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Deployment '{id}' not found."),
        )
    };
    // Ids are object names; anything else cannot exist, and must not reach a lookup.
    if !crate::model::is_dns_subdomain(&id) {
        return Err(not_found());
    }
    state
        .store
        .find::<DeploymentRecord>(&id)
        .await?
        .filter(|r| {
            key.spec
                .environment
                .as_ref()
                .is_none_or(|scope| *scope == r.spec.environment)
        })
        .ok_or_else(not_found)
}

/// The answer of `GET /api/deployments/{id}` for a record.
pub(super) fn deployment_response(record: DeploymentRecord) -> DeploymentResponse {
    let status = record.status.clone().unwrap_or_default();
    DeploymentResponse {
        success: true,
        message: status.message,
        deployment_id: record.name_any(),
        stack_name: record.spec.stack,
        environment_id: record.spec.environment,
        action: record.spec.action,
        from_version: record.spec.from_version,
        to_version: record.spec.to_version,
        version: status.version,
        requested_by: record.spec.requested_by,
        requested_at: record.spec.requested_at,
        phase: status.phase,
        served_by: status.served_by,
        services: status.services,
        started_at: status.started_at,
        finished_at: status.finished_at,
    }
}

/// `GET /readyz`: ready when the store answers and the key index is loaded.
pub async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if !state.keys.is_ready() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "API keys are still loading.",
        ));
    }
    state.store.list::<Environment>(None).await?;
    state.store.writable().await.map_err(|error| {
        tracing::warn!(%error, "the store cannot take writes");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The store cannot take writes (is the data disk full?).",
        )
    })?;
    Ok("ready")
}
