//! The Kubernetes runtime: a stack's workloads ([`workloads`], each service's pod built by `pod`)
//! applied server-side to its Environment's namespace, and their rollout read as
//! `kubectl rollout status` reads it.

mod pod;
mod workloads;

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::{Resource, ResourceExt};

pub use workloads::{
    RESTARTED_AT_ANNOTATION, SERVICE_LABEL, SPEC_HASH_ANNOTATION, Workloads, claim_name,
    deployment_name, job_name, workloads,
};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Outcome, Progress, Rollout as RuntimeRollout, Runtime};
use crate::catalog::StackPlan;
use crate::model::{STACK_LABEL, ServiceAction, ServiceResult, ServiceStatus, Stack, dns_label};

/// How far the Deployments of a stack have rolled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every Deployment runs its newest spec on all replicas.
    Complete,
    /// Still rolling; the text says what is missing.
    Progressing(String),
    /// A Deployment gave up (progress deadline exceeded); the text says which and why.
    Failed(String),
}

/// Reads the rollout state from Deployments as the API server reports them (like `kubectl rollout status`).
pub fn rollout_state(deployments: &[Deployment]) -> Rollout {
    let mut waiting = Vec::new();
    for deployment in deployments {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let status = deployment.status.clone().unwrap_or_default();
        if let Some(failed) = status.conditions.iter().flatten().find(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }) {
            return Rollout::Failed(format!(
                "deployment {name} did not roll out: {}",
                failed.message.clone().unwrap_or_default()
            ));
        }
        let wanted = deployment.spec.replicas.unwrap_or(1);
        let observed =
            status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let available = status.available_replicas.unwrap_or(0);
        let total = status.replicas.unwrap_or(0);
        if !observed || updated < wanted || available < wanted || total > updated {
            waiting.push(format!(
                "{name}: {updated}/{wanted} updated, {available} available"
            ));
        }
    }
    if waiting.is_empty() {
        Rollout::Complete
    } else {
        Rollout::Progressing(waiting.join("; "))
    }
}

/// Applies a stack's workloads to a cluster and reads their rollout.
#[derive(Clone)]
pub struct KubeRuntime {
    client: kube::Client,
    namespace: String,
}

impl KubeRuntime {
    /// A runtime for the workloads of `namespace`, over `client`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
        }
    }

    async fn apply_all<K>(&self, objects: &[K]) -> crate::Result<Vec<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let namespace = self.namespace.as_str();
        let api: kube::Api<K> = kube::Api::namespaced(self.client.clone(), namespace);
        let params = kube::api::PatchParams::apply(crate::model::CONTROLLER_MANAGER).force();
        let mut applied = Vec::new();
        for object in objects {
            let name = object.name_any();
            let kind = K::kind(&());
            // Never take over an object rsgo did not make for this very stack.
            let existing = api
                .get_opt(&name)
                .await
                .map_err(|e| crate::Error::kube(format!("reading {kind} {namespace}/{name}"), e))?;
            if let Some(existing) = existing {
                let wanted = object.labels().get(STACK_LABEL);
                let labels = existing.labels();
                let ours = labels
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some("rsgo");
                if !ours || labels.get(STACK_LABEL) != wanted {
                    let owner = match labels.get(STACK_LABEL) {
                        Some(other) if ours => format!("stack '{other}'"),
                        _ => "something other than rsgo".to_owned(),
                    };
                    return Err(crate::Error::Invalid(format!(
                        "{kind} '{name}' in namespace '{namespace}' belongs to {owner}; rename the service \
                         or run the stack in another environment"
                    )));
                }
            }
            let result = api
                .patch(&name, &params, &kube::api::Patch::Apply(object))
                .await
                .map_err(|e| {
                    crate::Error::kube(format!("applying {kind} {namespace}/{name}"), e)
                })?;
            applied.push(result);
        }
        Ok(applied)
    }

    /// Deletes the objects of kind `K` rsgo made for `stack` that are not in `keep`; their
    /// dependents (a Job's pods) go with them.
    async fn prune<K>(&self, stack: &str, keep: &[String]) -> crate::Result<()>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let namespace = self.namespace.as_str();
        let api: kube::Api<K> = kube::Api::namespaced(self.client.clone(), namespace);
        let selector = format!(
            "{STACK_LABEL}={},app.kubernetes.io/managed-by=rsgo",
            dns_label(stack)
        );
        let kind = K::kind(&());
        let existing = api
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map_err(|e| crate::Error::kube(format!("listing {kind}s of stack {stack}"), e))?;
        for object in existing.items {
            let name = object.name_any();
            if !keep.contains(&name) {
                api.delete(&name, &kube::api::DeleteParams::background())
                    .await
                    .map_err(|e| {
                        crate::Error::kube(format!("deleting {kind} {namespace}/{name}"), e)
                    })?;
            }
        }
        Ok(())
    }

    /// Applies claims, Services and the Jobs of one-shot services server-side, then the
    /// Deployments whose Jobs have succeeded; removes the Deployments, Services and Jobs the
    /// stack no longer has (claims stay). Returns how far the rollout got: a failed Job fails it,
    /// a running one holds back the Deployments that depend on it.
    pub async fn apply(&self, stack: &str, workloads: &Workloads) -> crate::Result<Rollout> {
        self.apply_all(&workloads.claims).await?;
        self.apply_all(&workloads.services).await?;
        let jobs = self.apply_all(&workloads.jobs).await?;
        let mut done = BTreeSet::new();
        let mut running = Vec::new();
        for job in &jobs {
            match job_state(job) {
                JobState::Succeeded => {
                    done.insert(job.name_any());
                }
                JobState::Running => running.push(job.name_any()),
                JobState::Failed(reason) => return Ok(Rollout::Failed(reason)),
            }
        }
        let ready: Vec<Deployment> = workloads
            .deployments
            .iter()
            .zip(&workloads.waits_for)
            .filter(|(_, waits)| waits.iter().all(|job| done.contains(job)))
            .map(|(deployment, _)| deployment.clone())
            .collect();
        let deployments = self.apply_all(&ready).await?;
        self.prune::<Service>(stack, &names(&workloads.services))
            .await?;
        self.prune::<Deployment>(stack, &names(&workloads.deployments))
            .await?;
        self.prune::<Job>(stack, &names(&workloads.jobs)).await?;
        if ready.len() < workloads.deployments.len() {
            return Ok(Rollout::Progressing(format!(
                "waiting for one-shot service job(s) {}",
                running.join(", ")
            )));
        }
        Ok(rollout_state(&deployments))
    }

    /// Removes a stack's Deployments, Services and Jobs; its claims (data) stay.
    pub async fn teardown(&self, stack: &str) -> crate::Result<()> {
        self.prune::<Service>(stack, &[]).await?;
        self.prune::<Deployment>(stack, &[]).await?;
        self.prune::<Job>(stack, &[]).await
    }
}

impl Runtime for KubeRuntime {
    fn roll_out<'a>(
        &'a self,
        rollout: RuntimeRollout<'a>,
    ) -> BoxFuture<'a, crate::Result<Progress>> {
        async move {
            let (stack, plan) = (rollout.stack, rollout.plan);
            let workloads = workloads(stack, plan, rollout.restarted_at).map_err(|source| {
                crate::Error::Render {
                    product: stack.spec.product.clone(),
                    version: plan.version.clone(),
                    source,
                }
            })?;
            match self.apply(&stack.name_any(), &workloads).await? {
                Rollout::Complete => Ok(Progress::Done(outcome(stack, plan, rollout.restarted_at))),
                Rollout::Progressing(progress) => Ok(Progress::Progressing(progress)),
                Rollout::Failed(reason) => Err(crate::Error::Rollout(reason)),
            }
        }
        .boxed()
    }

    fn tear_down<'a>(&'a self, stack: &'a Stack) -> BoxFuture<'a, crate::Result<()>> {
        async move { self.teardown(&stack.name_any()).await }.boxed()
    }
}

/// What a completed rollout reports: one entry per service, naming its Deployment or (for a
/// one-shot service) its Job.
fn outcome(stack: &Stack, plan: &StackPlan, restarted_at: Option<&str>) -> Outcome {
    let name = stack.name_any();
    let services = plan
        .containers
        .iter()
        .map(|c| ServiceStatus {
            name: c.service.clone(),
            container: if c.is_init() {
                job_name(&name, c, restarted_at)
            } else {
                deployment_name(&name, &c.service)
            },
            image: c.image.clone(),
            image_id: None,
        })
        .collect();
    let results = plan
        .containers
        .iter()
        .map(|c| ServiceResult {
            service: c.service.clone(),
            action: ServiceAction::Applied,
            image_id: None,
        })
        .collect();
    Outcome { services, results }
}

/// The names of built objects.
fn names<K: Resource>(objects: &[K]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| o.meta().name.clone())
        .collect()
}

/// Where a one-shot service's Job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Its pod is still to run or running.
    Running,
    /// Its pod exited 0.
    Succeeded,
    /// Its pod failed; the text says which Job and why.
    Failed(String),
}

/// Reads a Job's state as the Job controller reports it.
pub fn job_state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind && c.status == "True")
            .cloned()
    };
    if condition("Complete").is_some() || status.succeeded.unwrap_or(0) > 0 {
        return JobState::Succeeded;
    }
    if let Some(failed) = condition("Failed") {
        return JobState::Failed(format!(
            "one-shot service job {} failed: {}",
            job.name_any(),
            failed
                .message
                .or(failed.reason)
                .unwrap_or_else(|| "its pod did not exit 0".into())
        ));
    }
    if status.failed.unwrap_or(0) > 0 {
        return JobState::Failed(format!(
            "one-shot service job {} failed: its pod did not exit 0",
            job.name_any()
        ));
    }
    JobState::Running
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_status(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-prod-web", "generation": generation},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn rollout_state_reads_like_kubectl_rollout_status() {
        let done = with_status(
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
        );
        assert_eq!(
            rollout_state(std::slice::from_ref(&done)),
            Rollout::Complete
        );
        let unseen = with_status(
            3,
            serde_json::json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
        );
        assert!(
            matches!(rollout_state(&[done.clone(), unseen]), Rollout::Progressing(m) if m.contains("shop-prod-web"))
        );
        let old_pod_left = with_status(
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}),
        );
        assert!(matches!(
            rollout_state(&[old_pod_left]),
            Rollout::Progressing(_)
        ));
        let stuck = with_status(
            2,
            serde_json::json!({"observedGeneration": 2, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet has timed out progressing."}
            ]}),
        );
        assert_eq!(
            rollout_state(&[stuck]),
            Rollout::Failed(
                "deployment shop-prod-web did not roll out: ReplicaSet has timed out progressing."
                    .into()
            )
        );
    }

    #[test]
    fn job_states_follow_the_job_controller() {
        let with = |status: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": status}))
                .unwrap()
        };
        assert_eq!(
            job_state(&with(serde_json::json!({"active": 1}))),
            JobState::Running
        );
        assert_eq!(
            job_state(&with(serde_json::json!({"succeeded": 1}))),
            JobState::Succeeded
        );
        let failed = with(serde_json::json!({"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}));
        assert_eq!(
            job_state(&failed),
            JobState::Failed(
                "one-shot service job j failed: Job has reached the specified backoff limit".into()
            )
        );
    }
}
