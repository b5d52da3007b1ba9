//! The resource types: one definition serves the embedded store, the CRDs and the YAML users write.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod redact;
mod validation;

pub use validation::{
    check_label, dns_label, docker_name, docker_name_owner, is_dns_label, is_dns_subdomain,
    normalize_host_path, validate_document,
};

/// `apiVersion` of every rsgo resource.
pub const API_VERSION: &str = "rsgo.io/v1alpha1";
/// Annotation a redeploy hook sets; the reconciler acts when it differs from
/// `status.lastHandledRedeployAt`.
pub const REDEPLOY_ANNOTATION: &str = "rsgo.io/redeploy-requested-at";
/// Annotation naming the deployment record the next rollout of a stack reports to.
pub const DEPLOYMENT_ANNOTATION: &str = "rsgo.io/deployment-id";
/// Label holding the stack's name: on every object rsgo creates in a cluster, and on every
/// DeploymentRecord, so a stack's history is listed without reading anyone else's.
pub const STACK_LABEL: &str = "rsgo.io/stack";
/// Finalizer that keeps a Stack until its workloads are removed.
pub const CLEANUP_FINALIZER: &str = "rsgo.io/cleanup";
/// Field manager of the reconciler's writes to a Kubernetes API server: stack and record status,
/// finalizers, rollbacks, workloads and the Lease.
pub const CONTROLLER_MANAGER: &str = "rsgo-controller";
/// Field manager of the webhooks' writes: redeploy and upgrade requests, deployment records, key
/// usage, catalog source status after sync-sources.
pub const HOOKS_MANAGER: &str = "rsgo-hooks";
/// Field manager of the command line's writes (apply, delete, apikey).
pub const CLI_MANAGER: &str = "rsgo-cli";
/// Name of the environment that exists from the first start.
pub const DEFAULT_ENVIRONMENT: &str = "local";

/// Where stacks run.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rsgo.io",
    version = "v1alpha1",
    kind = "Environment",
    doc = "Where stacks run: a Docker engine or a Kubernetes namespace.",
    status = "EnvironmentStatus",
    shortname = "env",
    printcolumn = r#"{"name":"Docker","type":"string","jsonPath":".spec.docker.host"}"#,
    printcolumn = r#"{"name":"Reachable","type":"boolean","jsonPath":".status.reachable"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// A Docker engine that runs this environment's stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerEndpoint>,
    /// A Kubernetes namespace that runs this environment's stacks as Deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesTarget>,
}

impl Environment {
    /// Namespace that holds this environment's Stacks and DeploymentRecords: the Kubernetes
    /// namespace when it has one, else its own name.
    pub fn stack_namespace(&self) -> String {
        match &self.spec.kubernetes {
            Some(target) => target.namespace.clone(),
            None => self.metadata.name.clone().unwrap_or_default(),
        }
    }
}

/// Where in the cluster an environment's workloads go.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesTarget {
    /// Namespace of the workloads; in Kubernetes mode it is also where the Stacks live.
    pub namespace: String,
    /// Node directories that services may mount as hostPath volumes: a mount is allowed when
    /// its path, with `.` and `..` resolved, is one of these or lies below one. Empty (the
    /// default): no hostPath volumes at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_host_paths: Vec<String>,
    /// Lets services mount a container runtime's socket (Docker's, containerd's or CRI-O's) or
    /// a directory holding one. Whoever controls that socket controls the node. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_engine_socket: bool,
}

/// How to reach a Docker engine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerEndpoint {
    /// Engine address: `unix:///var/run/docker.sock`, `tcp://host:2375` or `http://host:2375`.
    pub host: String,
    /// Host directories that services may bind-mount: a mount is allowed when its path, with
    /// `.` and `..` resolved (and symbolic links too, when rsgo runs on the engine's host), is
    /// one of these or lies below one. Empty (the default): no bind mounts at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_host_paths: Vec<String>,
    /// Lets services mount the Docker engine's socket, or a directory holding it. Whoever
    /// controls that socket controls the host. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_engine_socket: bool,
}

/// What rsgo last saw of an environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// Whether the engine answered the last time rsgo tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// Engine version reported by the Docker engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    /// Why the engine could not be reached, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A place rsgo loads product manifests from.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rsgo.io",
    version = "v1alpha1",
    kind = "CatalogSource",
    doc = "A place rsgo loads product manifests from.",
    status = "CatalogSourceStatus",
    printcolumn = r#"{"name":"Path","type":"string","jsonPath":".spec.directory.path"}"#,
    printcolumn = r#"{"name":"Git","type":"string","jsonPath":".spec.git.url"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Versions","type":"integer","jsonPath":".status.versionsLoaded"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogSourceSpec {
    /// A local directory of manifest files, read recursively. Set this or `git`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectorySource>,
    /// A git repository of manifest files, fetched incrementally into a clone rsgo keeps. Set
    /// this or `directory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
}

/// A git repository of RSGo manifests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSource {
    /// Where the repository is: `https://`, `http://` (without credentials), `ssh://`, `git://`
    /// or `file://`. Credentials never go in the URL: use `secretRef`.
    pub url: String,
    /// A branch, tag or full commit id to read. When absent, the remote's HEAD (its default
    /// branch).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// A folder inside the repository to read instead of its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often to fetch on its own, such as `5m` or `1h` (at least `10s`). When absent, the
    /// source is fetched on `sync-sources`, on a spec change and when a stack asks for a version
    /// the catalog lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// A Secret with `username` and `password` (an access token) for an `https://` remote, or
    /// `identity` (a private key) and `known_hosts` for an `ssh://` one: in rsgo's namespace on
    /// Kubernetes, applied with `rsgo apply` in standalone mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// Names a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}

/// A directory of RSGo manifests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectorySource {
    /// Path of the directory, as seen by the rsgo server.
    pub path: String,
}

/// What the last sync of a catalog source found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSourceStatus {
    /// When the source was last synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<Timestamp>,
    /// Number of distinct products the source holds.
    #[serde(default)]
    pub products_loaded: u32,
    /// Number of product versions (manifest files) loaded.
    #[serde(default)]
    pub versions_loaded: u32,
    /// Problems found by the last sync, each naming the file and the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// For a git source, the commit the loaded catalog was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Each product the source holds, with its versions, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<LoadedProduct>,
}

/// One product of a catalog source and the versions it holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadedProduct {
    /// The product id.
    pub product: String,
    /// Its versions, newest first.
    pub versions: Vec<String>,
}

/// A deployed product: which version of which catalog product runs in which environment.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rsgo.io",
    version = "v1alpha1",
    kind = "Stack",
    doc = "A deployed product: which version of which catalog product runs in which environment.",
    namespaced,
    status = "StackStatus",
    shortname = "stk",
    printcolumn = r#"{"name":"Environment","type":"string","jsonPath":".spec.environment"}"#,
    printcolumn = r#"{"name":"Product","type":"string","jsonPath":".spec.product"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.deployedVersion"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackSpec {
    /// Environment the stack runs in.
    pub environment: String,
    /// Catalog product id (the manifest's `metadata.productId`, or its name).
    pub product: String,
    /// Which stack of a multi-stack product this is (a key of the manifest's `stacks`); unset
    /// for a single-stack product. Upgrades use this same stack of the target version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// Product version to run. When absent, the newest stable version in the catalog is used;
    /// a pre-release runs only when named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Values for the product's variables; unset ones take the manifest defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Variables whose values come from Secrets instead of this spec, so that no secret is
    /// written in it: a Secret of the stack's namespace on Kubernetes, one applied with
    /// `rsgo apply` in standalone mode. A variable is set here or in `variables`, not both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables_from: BTreeMap<String, VariableSource>,
}

/// Where a variable's value comes from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariableSource {
    /// One key of a Secret.
    pub secret_key_ref: SecretKeyRef,
}

/// One key of one Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key whose value the variable takes.
    pub key: String,
}

/// Lifecycle phase of a stack.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StackPhase {
    /// Not reconciled yet.
    Pending,
    /// A rollout is under way.
    Deploying,
    /// Every service runs as desired.
    Running,
    /// The last rollout failed; see `message`.
    Failed,
}

/// What the controller saw of a stack.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StackPhase>,
    /// Product version that runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_version: Option<String>,
    /// One entry per running service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
    /// Id of the deployment record of the last rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deployment: Option<String>,
    /// Value of the redeploy annotation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_redeploy_at: Option<String>,
    /// A sentence a person can act on when something is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Standard conditions: `Ready` tells whether every service runs as specified, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Variables whose values `rsgo get` hides: those the product version the stack runs
    /// declares as Password.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden_variables: Vec<String>,
}

/// One service of a running stack.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Service name from the manifest.
    pub name: String,
    /// Container that runs it.
    pub container: String,
    /// Image reference the container was created from.
    pub image: String,
    /// Image id (digest) the container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// What an API key may do. Serialized under the names the hooks' documentation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Permission {
    /// Call `POST /api/hooks/redeploy`.
    #[serde(rename = "Hooks.Redeploy")]
    Redeploy,
    /// Call `POST /api/hooks/upgrade`.
    #[serde(rename = "Hooks.Upgrade")]
    Upgrade,
    /// Call `POST /api/hooks/sync-sources`.
    #[serde(rename = "Hooks.SyncSources")]
    SyncSources,
    /// Call every hook.
    #[serde(rename = "Hooks.*")]
    AllHooks,
    /// Every hook, including hooks added later. It does not include `Admin`.
    #[serde(rename = "*")]
    All,
    /// The admin API under `/api/v1/` and the web console: keys, stacks, deployments, audit.
    /// Only granted by name, never by a wildcard.
    #[serde(rename = "Admin")]
    Admin,
}

impl Permission {
    /// Every permission, in the order the documentation lists them.
    pub const ALL: [Permission; 6] = [
        Permission::Redeploy,
        Permission::Upgrade,
        Permission::SyncSources,
        Permission::AllHooks,
        Permission::All,
        Permission::Admin,
    ];

    /// The name keys, manifests and messages use.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Redeploy => "Hooks.Redeploy",
            Permission::Upgrade => "Hooks.Upgrade",
            Permission::SyncSources => "Hooks.SyncSources",
            Permission::AllHooks => "Hooks.*",
            Permission::All => "*",
            Permission::Admin => "Admin",
        }
    }

    /// The permissions' names, comma-separated.
    pub fn names(permissions: &[Permission]) -> String {
        let names: Vec<_> = permissions.iter().map(|p| p.name()).collect();
        names.join(", ")
    }

    /// Whether holding this permission allows what `wanted` allows. Every hook permission is
    /// covered by `Hooks.*` and by `*`; `Admin` only by itself, so no pipeline key made with a
    /// wildcard can manage keys.
    pub fn covers(self, wanted: Permission) -> bool {
        self == wanted
            || (self == Permission::All && wanted != Permission::Admin)
            || (self == Permission::AllHooks
                && !matches!(wanted, Permission::All | Permission::Admin))
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Permission {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Permission::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| {
                format!(
                    "unknown permission '{text}'; known permissions: {}",
                    Permission::names(&Permission::ALL)
                )
            })
    }
}

/// A key that lets a pipeline call the hooks. Only its SHA-256 is stored.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rsgo.io",
    version = "v1alpha1",
    kind = "ApiKey",
    doc = "A key that lets a pipeline call the hooks. Only its SHA-256 is stored.",
    status = "ApiKeyStatus",
    printcolumn = r#"{"name":"Display name","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".spec.prefix"}"#,
    printcolumn = r#"{"name":"Revoked","type":"boolean","jsonPath":".spec.revoked"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Name people know the key by, such as "GitHub Actions Deploy".
    pub display_name: String,
    /// Lower-case hex SHA-256 of the whole key.
    pub key_hash: String,
    /// First characters of the key, to recognise it in listings.
    pub prefix: String,
    /// Granted permissions: `Hooks.Redeploy`, `Hooks.Upgrade`, `Hooks.SyncSources`, `Hooks.*`,
    /// `*` (every hook) or `Admin` (the admin API and console).
    pub permissions: Vec<Permission>,
    /// When set, the key only works for this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// When set, the key stops working at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// A revoked key is refused; the record is kept.
    #[serde(default)]
    pub revoked: bool,
    /// When the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    /// Why the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
}

/// Usage of an API key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// Last time the key authenticated a request, to within a minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
}

/// What a rollout was asked to do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeploymentAction {
    /// Recreate every service from freshly pulled images.
    #[default]
    Redeploy,
    /// Move to another catalog version.
    Upgrade,
}

/// One rollout that a hook or the CLI asked for, with a stable id (its name).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rsgo.io",
    version = "v1alpha1",
    kind = "DeploymentRecord",
    doc = "One rollout that a hook or the CLI asked for, with a stable id (its name).",
    namespaced,
    status = "DeploymentRecordStatus",
    shortname = "deprec",
    printcolumn = r#"{"name":"Stack","type":"string","jsonPath":".spec.stack"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentRecordSpec {
    /// Name of the stack rolled out.
    pub stack: String,
    /// Environment of the stack.
    pub environment: String,
    /// What was asked for.
    pub action: DeploymentAction,
    /// Version that ran before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// Version asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// Variables the stack had before an upgrade, restored by an automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_variables: Option<BTreeMap<String, String>>,
    /// Who asked: the API key's name, or `cli`.
    pub requested_by: String,
    /// When it was asked for.
    pub requested_at: Timestamp,
}

/// Lifecycle of a deployment record.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeploymentPhase {
    /// Stored; the reconciler has not started it.
    #[default]
    Pending,
    /// The reconciler is rolling it out.
    Running,
    /// Every service runs as asked.
    Succeeded,
    /// It failed; `message` says why. Nothing was stopped if images could not be pulled.
    Failed,
    /// An upgrade failed and the stack went back to the previous version.
    RolledBack,
    /// A later rollout of the same stack carried it out; `servedBy` names that rollout.
    Superseded,
}

impl DeploymentPhase {
    /// Whether the rollout has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, DeploymentPhase::Pending | DeploymentPhase::Running)
    }
}

/// How a rollout went.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecordStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: DeploymentPhase,
    /// What happened, in a sentence a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What was done to each service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceResult>,
    /// Product version the stack runs after this rollout (the previous one when it failed or
    /// rolled back), whatever was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// For a superseded request: the deployment whose rollout carried it out. Its outcome is
    /// this request's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// When the reconciler started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// What a rollout did to one service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResult {
    /// Service name.
    pub service: String,
    /// What was done to it.
    pub action: ServiceAction,
    /// Image id the service runs after the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// What a rollout did to one service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAction {
    /// It had no container: one was created.
    Created,
    /// Its container was replaced (new spec, new image or a redeploy).
    Recreated,
    /// Its stopped container was started.
    Started,
    /// It already ran as planned.
    #[default]
    Unchanged,
    /// The plan no longer has it: its container was removed.
    Removed,
    /// Its objects were applied to the cluster, which rolls them out.
    Applied,
}

/// One entry of the audit trail: who did what to what, from where, and how it ended. Written
/// by rsgo only and never changed; the oldest are removed past the retention count.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rsgo.io",
    version = "v1alpha1",
    kind = "AuditEvent",
    doc = "One entry of rsgo's audit trail: who did what to what, from where, and how it ended.",
    shortname = "audit",
    printcolumn = r#"{"name":"Time","type":"string","jsonPath":".spec.time"}"#,
    printcolumn = r#"{"name":"Actor","type":"string","jsonPath":".spec.actor.name"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"Outcome","type":"string","jsonPath":".spec.outcome"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditEventSpec {
    /// When it happened.
    pub time: Timestamp,
    /// Who acted.
    pub actor: AuditActor,
    /// What was done, such as `hook.redeploy`, `apikey.create` or `apikey.revoke`.
    pub action: String,
    /// What it was done to, such as `local/shop` for a stack or a key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The HTTP status answered, for requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Details: the refusal's reason, the deployment id, the permissions granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How many identical calls (same actor and address, action, target, outcome, status and
    /// detail, within about a second) this entry stands for, when more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Who acted, as far as rsgo knows. Never holds any part of a key beyond its display prefix.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditActor {
    /// The key's display name, or `cli` for the command line on the server.
    pub name: String,
    /// The key's display prefix (`rsgo_` and four characters), when a known key acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// The address the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// How an audited action ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum AuditOutcome {
    /// Done (for hooks: recorded; the rollout's outcome is the deployment's).
    #[default]
    Succeeded,
    /// Refused: bad or missing key, missing permission, invalid request.
    Refused,
    /// Accepted but failed.
    Failed,
}

/// The value of `key` in a Secret as text; `None` when the key is missing or not UTF-8.
pub fn secret_text(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The CustomResourceDefinitions of every rsgo kind, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        ApiKey::crd(),
        AuditEvent::crd(),
        CatalogSource::crd(),
        DeploymentRecord::crd(),
        Environment::crd(),
        Stack::crd(),
    ]
}
