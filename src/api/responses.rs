//! The bodies the hooks answer with, in the order the contract documents their fields:
//! `success` and `message` first, then the rest.

use jiff::Timestamp;
use serde::Serialize;

use crate::model::{DeploymentAction, DeploymentPhase, ServiceResult};

/// `POST /api/hooks/redeploy` succeeded.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedeployResponse {
    /// Always true.
    pub success: bool,
    /// What was done.
    pub message: String,
    /// Id of the deployment record.
    pub deployment_id: String,
    /// The stack.
    pub stack_name: String,
    /// The version being redeployed.
    pub stack_version: String,
    /// Where the record can be read.
    pub status_url: String,
    /// With `wait`: the deployment whose rollout carried this request, when it was another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// `POST /api/hooks/upgrade` succeeded.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeResponse {
    /// Always true.
    pub success: bool,
    /// What was done.
    pub message: String,
    /// Id of the deployment record.
    pub deployment_id: String,
    /// The version the stack was asked to run before.
    pub previous_version: String,
    /// The version it is asked to run now.
    pub new_version: String,
    /// Where the record can be read.
    pub status_url: String,
    /// With `wait`: the deployment whose rollout carried this request, when it was another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// `POST /api/hooks/sync-sources` succeeded.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    /// Always true.
    pub success: bool,
    /// Product versions the catalog holds.
    pub stacks_loaded: usize,
    /// Sources read.
    pub sources_synced: usize,
    /// What was done.
    pub message: String,
}

/// `GET /api/deployments/{id}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentResponse {
    /// Always true.
    pub success: bool,
    /// What happened, once the rollout says.
    pub message: Option<String>,
    /// The record's id.
    pub deployment_id: String,
    /// The stack.
    pub stack_name: String,
    /// The stack's environment.
    pub environment_id: String,
    /// What was asked for.
    pub action: DeploymentAction,
    /// Version asked to move from.
    pub from_version: Option<String>,
    /// Version asked for.
    pub to_version: Option<String>,
    /// Version that runs after the rollout.
    pub version: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: Timestamp,
    /// Where the rollout is.
    pub phase: DeploymentPhase,
    /// For a superseded request, the deployment that carried it out.
    pub served_by: Option<String>,
    /// What was done to each service.
    pub services: Vec<ServiceResult>,
    /// When the rollout started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
}
