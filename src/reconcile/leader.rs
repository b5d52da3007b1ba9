//! Leader election on a coordination.k8s.io Lease: every replica serves the hooks, only the
//! holder of the Lease reconciles. A leader that cannot renew stops acting before its Lease can
//! expire, so two reconcilers never act at once.

use std::future::Future;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::model::CONTROLLER_MANAGER;
use crate::{Error, Result};

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that has not renewed for this long stops reconciling (well before the Lease expires).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between attempts to acquire or renew.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// One Lease and who we are.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl LeaseLock {
    /// A lock on the Lease `name` in `api`'s namespace, held as `identity` (the pod name).
    pub fn new(api: Api<Lease>, name: &str, identity: &str) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Takes the Lease when it is free or expired, renews it when we hold it. `Ok(true)` means
    /// we hold it now. Writes carry the resourceVersion read, so of two contenders one wins.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool> {
        let post = PostParams {
            field_manager: Some(CONTROLLER_MANAGER.into()),
            ..Default::default()
        };
        let kube_error = |e| Error::kube(format!("lease {}", self.name), e);
        let Some(current) = self.api.get_opt(&self.name).await.map_err(kube_error)? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&post, &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status))
                    if status.is_already_exists() || status.is_conflict() =>
                {
                    Ok(false)
                }
                Err(e) => Err(kube_error(e)),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration =
            SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|renewed| renewed.0 + duration <= now);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        if !ours && !expired && !free {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut next = current.clone();
        next.spec = Some(self.spec(now, acquired, transitions));
        match self.api.replace(&self.name, &post, &next).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(e) => Err(kube_error(e)),
        }
    }
}

/// Runs `work` whenever this replica holds the Lease, and stops it as soon as renewal has failed
/// for [`RENEW_DEADLINE`]. Never returns.
pub async fn lead<F, Fut>(lock: LeaseLock, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match lock.try_acquire_or_renew(Timestamp::now()).await {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(RETRY_PERIOD).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "leader election failed; retrying");
                tokio::time::sleep(RETRY_PERIOD).await;
                continue;
            }
        }
        tracing::info!(identity = %lock.identity, "became leader; reconciling");
        crate::metrics::global().set_leader(true);
        let task = tokio::spawn(work());
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY_PERIOD).await;
            match lock.try_acquire_or_renew(Timestamp::now()).await {
                Ok(true) => renewed = tokio::time::Instant::now(),
                Ok(false) => break,
                Err(error) => tracing::warn!(%error, "renewing the lease failed"),
            }
            if renewed.elapsed() >= RENEW_DEADLINE {
                break;
            }
        }
        task.abort();
        crate::metrics::global().set_leader(false);
        tracing::warn!(identity = %lock.identity, "lost the lease; stopped reconciling");
    }
}
