//! What every hook does before it acts: read the body within limits and resolve the environment
//! the request acts on.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use kube::ResourceExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState, MAX_BODY_BYTES};
use crate::model::{ApiKey, Environment};

/// Header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The body of `POST /api/hooks/redeploy`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedeployRequest {
    /// Stack to redeploy.
    pub stack_name: String,
    /// Environment of the stack; the key's scope or the default when absent.
    #[serde(default)]
    pub environment_id: Option<String>,
    /// Answer when the rollout ends instead of when it is recorded.
    #[serde(default)]
    pub wait: bool,
}

/// The body of `POST /api/hooks/upgrade`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeRequest {
    /// Stack to upgrade.
    pub stack_name: String,
    /// Catalog version to move to.
    pub target_version: String,
    /// Environment of the stack; the key's scope or the default when absent.
    #[serde(default)]
    pub environment_id: Option<String>,
    /// Values for variables the target version declares.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Answer when the rollout ends instead of when it is recorded.
    #[serde(default)]
    pub wait: bool,
}

/// Reads a hook's JSON object body within the limits of [`read_body`].
pub(super) async fn read_json<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    parse_body(&read_body(state, headers, body).await?)
}

/// Reads a request body: refused at once when it announces more than [`MAX_BODY_BYTES`], cut
/// off when it grows past them or takes longer than the body deadline.
pub(super) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body is larger than the {} KiB limit.",
                MAX_BODY_BYTES / 1024
            ),
        )
    };
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut bytes = Vec::new();
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("Could not read the request body: {e}."))
            })?;
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let deadline = state.http.body_timeout;
    tokio::time::timeout(deadline, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "The request body did not arrive within {} s.",
                deadline.as_secs()
            ),
        )
    })?
}

/// Parses a hook's body, which must be one JSON object with only the fields of `T`.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(ApiError::bad_request(
            "Request body is empty; send a JSON object with at least stackName.",
        )),
        Some(b'{') => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}."))),
        Some(_) => Err(ApiError::bad_request(
            "Invalid request body: send a JSON object, such as {\"stackName\": \"shop\"}.",
        )),
    }
}

/// The environment a request acts on: the body's, else the key's scope, else the default.
pub(super) async fn resolve_environment(
    state: &AppState,
    requested: Option<&str>,
    key: &ApiKey,
) -> Result<Environment, ApiError> {
    let requested = requested.filter(|e| !e.is_empty());
    let environment = match (requested, &key.spec.environment) {
        (Some(wanted), Some(scope)) if wanted != scope => {
            state.refusals.refused(
                "foreign environment",
                &format!("key '{}' is limited to '{scope}'", key.spec.display_name),
            );
            crate::metrics::global().auth_failed("foreign environment");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "API key '{}' is limited to environment '{scope}' and cannot act on environment '{wanted}'.",
                    key.spec.display_name
                ),
            ));
        }
        (Some(wanted), _) => wanted.to_owned(),
        (None, Some(scope)) => scope.clone(),
        (None, None) => state.default_environment.clone(),
    };
    let Some(found) = state.store.get::<Environment>("", &environment).await? else {
        // Only a key that may act on every environment learns which exist.
        if key.spec.environment.is_some() {
            return Err(ApiError::bad_request(format!(
                "Environment '{environment}' not found."
            )));
        }
        let known: Vec<String> = state
            .store
            .list::<Environment>(None)
            .await?
            .iter()
            .map(|e| e.name_any())
            .collect();
        return Err(ApiError::bad_request(format!(
            "Environment '{environment}' not found. Known environments: {}.",
            known.join(", ")
        )));
    };
    Ok(found)
}
