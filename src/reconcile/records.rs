//! Deployment records: how a rollout ended, in the record that asked for it; rolling a failed
//! upgrade back; superseding the requests a rollout served; trimming the history.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use super::status::write_status;
use crate::catalog;
use crate::model::{
    DEPLOYMENT_ANNOTATION, DeploymentAction, DeploymentPhase, DeploymentRecord,
    DeploymentRecordStatus, STACK_LABEL, ServiceResult, Stack, StackPhase, StackStatus,
};
use crate::runtime::Outcome;
use crate::store::{Store, Write, encode};
use crate::{Error, Result};

/// How a reconcile ended: the stack's new status, the record it reports to, and the version it
/// deployed (none when it could not even render one).
pub(super) struct Done {
    pub(super) status: StackStatus,
    pub(super) record: Option<DeploymentRecord>,
    pub(super) version: Option<String>,
}

/// What a finished rollout did, in words: from the version that ran before to the one that runs
/// now, whatever the request that started it asked for.
fn describe_success(stack: &str, from: Option<&str>, to: &str) -> String {
    let newer = |from: &str| {
        matches!(
            (catalog::parse_version(from), catalog::parse_version(to)),
            (Ok(a), Ok(b)) if b > a
        )
    };
    match from {
        None => format!("Deployed '{stack}' {to}."),
        Some(from) if from == to => format!("Redeployed '{stack}' at {to}."),
        Some(from) if newer(from) => format!("Upgraded '{stack}' from {from} to {to}."),
        Some(from) => format!("Moved '{stack}' from {from} to {to}."),
    }
}

/// Writes the stack status and the deployment record for a finished (or failed) reconcile,
/// rolling a failed upgrade back to the version the stack was at before.
pub(super) async fn finish(
    ctx: &Context,
    stack: &Stack,
    old_status: &StackStatus,
    done: Done,
    result: Result<&Outcome, &Error>,
) -> Result<()> {
    let Done {
        status,
        record,
        version,
    } = done;
    let update = match result {
        Ok(outcome) => {
            let to = version.as_deref();
            succeeded(ctx, stack, old_status, status, record.as_ref(), to, outcome).await?
        }
        Err(error) => failed(ctx, stack, old_status, status, record.as_ref(), error).await?,
    };
    let (Some(record), Some(update)) = (&record, update) else {
        return Ok(());
    };
    let (phase, message) = (update.phase, update.message.clone().unwrap_or_default());
    let record = set_record(ctx, record, update).await?;
    ctx.record_event(stack, phase, message).await;
    settle_records(ctx, stack, &record).await
}

/// Records a finished rollout in the stack's status, and says what its record should become.
async fn succeeded(
    ctx: &Context,
    stack: &Stack,
    old_status: &StackStatus,
    mut status: StackStatus,
    record: Option<&DeploymentRecord>,
    version: Option<&str>,
    outcome: &Outcome,
) -> Result<Option<RecordUpdate>> {
    status.phase = Some(StackPhase::Running);
    status.services = outcome.services.clone();
    status.message = None;
    if let Some(version) = version {
        status.deployed_version = Some(version.to_owned());
    }
    write_status(ctx, stack, old_status, status).await?;
    let Some(record) = record else {
        return Ok(None);
    };
    let from = old_status.deployed_version.as_deref();
    let to = version.unwrap_or_default();
    Ok(Some(RecordUpdate {
        message: Some(describe_success(&record.spec.stack, from, to)),
        services: outcome.results.clone(),
        version: version.map(str::to_owned),
        ..RecordUpdate::phase(DeploymentPhase::Succeeded)
    }))
}

/// Records a failed rollout in the stack's status, rolls a failed upgrade back, and says what
/// the record should become.
async fn failed(
    ctx: &Context,
    stack: &Stack,
    old_status: &StackStatus,
    mut status: StackStatus,
    record: Option<&DeploymentRecord>,
    error: &Error,
) -> Result<Option<RecordUpdate>> {
    let from = old_status.deployed_version.clone();
    // The version a failed upgrade goes back to.
    let previous = record.and_then(|r| match r.spec.action {
        DeploymentAction::Upgrade => r.spec.from_version.clone(),
        DeploymentAction::Redeploy => None,
    });
    let target = record
        .and_then(|r| r.spec.to_version.clone())
        .unwrap_or_default();
    // A failed upgrade is not a failed stack yet: it is on its way back.
    (status.phase, status.message) = match &previous {
        Some(previous) => (
            Some(StackPhase::Deploying),
            Some(format!(
                "Upgrade to {target} failed: {error}; rolling back to {previous}."
            )),
        ),
        None => (Some(StackPhase::Failed), Some(error.to_string())),
    };
    write_status(ctx, stack, old_status, status).await?;
    let Some(record) = record else {
        return Ok(None);
    };
    Ok(Some(match previous {
        Some(previous) => {
            roll_back(ctx, stack, record, &previous).await?;
            RecordUpdate {
                message: Some(format!(
                    "Upgrade to {target} failed: {error}. Rolled back to {previous}."
                )),
                version: from,
                ..RecordUpdate::phase(DeploymentPhase::RolledBack)
            }
        }
        None => RecordUpdate {
            message: Some(error.to_string()),
            version: from,
            ..RecordUpdate::phase(DeploymentPhase::Failed)
        },
    }))
}

async fn roll_back(
    ctx: &Context,
    stack: &Stack,
    record: &DeploymentRecord,
    previous: &str,
) -> Result<()> {
    let namespace = stack.namespace().unwrap_or_default();
    crate::retry::on_conflict(|| async {
        let mut current = ctx
            .store
            .require::<Stack>(&namespace, &stack.name_any())
            .await?;
        if current.spec.version.as_deref() != record.spec.to_version.as_deref() {
            // Someone asked for something else meanwhile; their request wins.
            return Ok(());
        }
        current.spec.version = Some(previous.to_owned());
        if let Some(variables) = &record.spec.previous_variables {
            current.spec.variables = variables.clone();
        }
        current.annotations_mut().remove(DEPLOYMENT_ANNOTATION);
        ctx.store.update(&current).await.map(drop)
    })
    .await
}

/// A change to a deployment record's status.
pub(super) struct RecordUpdate {
    phase: DeploymentPhase,
    message: Option<String>,
    services: Vec<ServiceResult>,
    version: Option<String>,
    served_by: Option<String>,
}

impl RecordUpdate {
    pub(super) fn phase(phase: DeploymentPhase) -> Self {
        Self {
            phase,
            message: None,
            services: Vec::new(),
            version: None,
            served_by: None,
        }
    }
}

/// The status `update` gives `record` at `now`: the start time is kept once set.
fn record_status(
    record: &DeploymentRecord,
    update: RecordUpdate,
    now: Timestamp,
) -> DeploymentRecordStatus {
    let old = record.status.clone().unwrap_or_default();
    DeploymentRecordStatus {
        phase: update.phase,
        message: update.message,
        services: update.services,
        version: update.version,
        served_by: update.served_by,
        started_at: old.started_at.or(Some(now)),
        finished_at: update.phase.is_terminal().then_some(now),
    }
}

/// Writes a record's status and returns the record as stored.
pub(super) async fn set_record(
    ctx: &Context,
    record: &DeploymentRecord,
    update: RecordUpdate,
) -> Result<DeploymentRecord> {
    let mut updated = record.clone();
    let status = record_status(record, update, Timestamp::now());
    let phase = status.phase;
    updated.status = Some(status);
    let stored = ctx.store.update_status(&updated).await?;
    if phase.is_terminal() {
        ctx.remember_ended(&stored);
        crate::metrics::global()
            .rollout_finished(&format!("{:?}", record.spec.action), &format!("{phase:?}"));
    }
    Ok(stored)
}

/// The newest finished deployment records of a stack that are always kept.
pub const RECORD_HISTORY: usize = 20;
/// Finished records younger than this are kept too, so every id a hook returned keeps resolving
/// for at least this long.
pub const RECORD_RETENTION: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);
/// Most finished records kept per stack, however young.
pub const RECORD_HISTORY_MAX: usize = 1000;

/// Splits a stack's records after `done` ended: requests still pending that `done` already served
/// (to mark superseded), and finished records past retention (to delete), oldest first. A
/// finished record stays while it is among the newest [`RECORD_HISTORY`] or younger than
/// [`RECORD_RETENTION`], and never beyond [`RECORD_HISTORY_MAX`].
pub fn settle(
    records: &[DeploymentRecord],
    done: &DeploymentRecord,
    now: Timestamp,
) -> (Vec<DeploymentRecord>, Vec<DeploymentRecord>) {
    let mut mine: Vec<&DeploymentRecord> = records
        .iter()
        .filter(|r| r.spec.stack == done.spec.stack)
        .collect();
    mine.sort_by_key(|r| std::cmp::Reverse(r.spec.requested_at));
    let superseded = mine
        .iter()
        .filter(|r| {
            r.status
                .as_ref()
                .is_none_or(|s| s.phase == DeploymentPhase::Pending)
                && r.name_any() != done.name_any()
                && r.spec.requested_at <= done.spec.requested_at
        })
        .map(|r| (*r).clone())
        .collect();
    let finished = |r: &&&DeploymentRecord| {
        r.name_any() == done.name_any() || r.status.as_ref().is_some_and(|s| s.phase.is_terminal())
    };
    let mut expired: Vec<DeploymentRecord> = mine
        .iter()
        .filter(finished)
        .enumerate()
        .filter(|(rank, r)| {
            *rank >= RECORD_HISTORY_MAX
                || (*rank >= RECORD_HISTORY
                    && now.duration_since(r.spec.requested_at) > RECORD_RETENTION)
        })
        .map(|(_, r)| (*r).clone())
        .collect();
    expired.reverse();
    (superseded, expired)
}

/// Marks requests that `done` served as superseded (pointing at `done`) and trims the stack's
/// record history, in one write.
async fn settle_records(ctx: &Context, stack: &Stack, done: &DeploymentRecord) -> Result<()> {
    let namespace = stack.namespace().unwrap_or_default();
    let records = ctx
        .store
        .list_labelled::<DeploymentRecord>(&namespace, STACK_LABEL, &stack.name_any())
        .await?;
    let now = Timestamp::now();
    let (superseded, expired) = settle(&records, done, now);
    let mut writes = Vec::new();
    for record in superseded {
        let update = RecordUpdate {
            message: Some(format!(
                "Superseded by deployment {}, which carried out this request too.",
                done.name_any()
            )),
            served_by: Some(done.name_any()),
            ..RecordUpdate::phase(DeploymentPhase::Superseded)
        };
        let mut updated = record.clone();
        updated.status = Some(record_status(&record, update, now));
        writes.push(Write::UpdateStatus(encode(&updated)?));
    }
    writes.extend(expired.iter().map(|record| Write::Delete {
        kind: "DeploymentRecord".into(),
        namespace: namespace.clone(),
        name: record.name_any(),
    }));
    if writes.is_empty() {
        return Ok(());
    }
    match ctx.store.write(writes).await {
        Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Labels the DeploymentRecords written before records carried their stack's label, so that
/// trimming a stack's history finds them. Runs when the reconciler starts; a record already
/// labelled is not written again. Returns how many were labelled.
pub(super) async fn label_history(store: &Arc<dyn Store>) -> Result<usize> {
    let unlabelled: Vec<DeploymentRecord> = store
        .list::<DeploymentRecord>(None)
        .await?
        .into_iter()
        .filter(|r| !r.labels().contains_key(STACK_LABEL))
        .collect();
    for chunk in unlabelled.chunks(500) {
        let writes = chunk
            .iter()
            .map(|record| {
                let mut labelled = record.clone();
                labelled
                    .labels_mut()
                    .insert(STACK_LABEL.into(), record.spec.stack.clone());
                encode(&labelled).map(Write::Update)
            })
            .collect::<Result<Vec<_>>>()?;
        match store.write(writes).await {
            // Changed or gone meanwhile: the next start labels what is left.
            Ok(_) | Err(Error::Conflict { .. } | Error::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(unlabelled.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeploymentRecordSpec;

    fn record(
        name: &str,
        stack: &str,
        minute: i64,
        phase: Option<DeploymentPhase>,
    ) -> DeploymentRecord {
        let mut record = DeploymentRecord::new(
            name,
            DeploymentRecordSpec {
                stack: stack.into(),
                requested_at: Timestamp::from_second(minute * 60).unwrap(),
                ..Default::default()
            },
        );
        record.status = phase.map(|phase| DeploymentRecordStatus {
            phase,
            ..Default::default()
        });
        record
    }

    fn names(records: &[DeploymentRecord]) -> Vec<String> {
        records.iter().map(|r| r.name_any()).collect()
    }

    #[test]
    fn settling_supersedes_served_requests_and_trims_history() {
        let mut records: Vec<DeploymentRecord> = (0..RECORD_HISTORY as i64 + 2)
            .map(|i| {
                record(
                    &format!("old{i}"),
                    "shop",
                    i,
                    Some(DeploymentPhase::Succeeded),
                )
            })
            .collect();
        records.push(record("waiting", "shop", 100, None));
        records.push(record("other-stack", "web", 1, None));
        records.push(record("later", "shop", 300, None));
        let done = record("done", "shop", 200, Some(DeploymentPhase::Succeeded));
        records.push(done.clone());
        let long_after = Timestamp::from_second(30 * 86_400).unwrap();
        let (superseded, expired) = settle(&records, &done, long_after);
        assert_eq!(
            names(&superseded),
            ["waiting"],
            "only this stack's requests made before `done`"
        );
        // `done` plus the 19 newest old records stay; the three oldest go, oldest first.
        assert_eq!(names(&expired), ["old0", "old1", "old2"]);
        // Within the retention period every record stays, so every returned id resolves.
        let soon_after = Timestamp::from_second(86_400).unwrap();
        assert!(settle(&records, &done, soon_after).1.is_empty());
    }

    #[test]
    fn history_never_grows_past_its_cap() {
        let records: Vec<DeploymentRecord> = (0..RECORD_HISTORY_MAX as i64 + 5)
            .map(|i| {
                record(
                    &format!("r{i}"),
                    "shop",
                    i,
                    Some(DeploymentPhase::Superseded),
                )
            })
            .collect();
        let done = records.last().unwrap().clone();
        let now = Timestamp::from_second(RECORD_HISTORY_MAX as i64 * 60).unwrap();
        let (_, expired) = settle(&records, &done, now);
        assert_eq!(names(&expired), ["r0", "r1", "r2", "r3", "r4"]);
    }

    #[test]
    fn messages_say_what_the_rollout_did() {
        assert_eq!(describe_success("s", None, "1.0.0"), "Deployed 's' 1.0.0.");
        assert_eq!(
            describe_success("s", Some("1.0.0"), "1.0.0"),
            "Redeployed 's' at 1.0.0."
        );
        assert_eq!(
            describe_success("s", Some("1.0.0"), "1.4.0"),
            "Upgraded 's' from 1.0.0 to 1.4.0."
        );
        assert_eq!(
            describe_success("s", Some("1.4.0"), "1.1.0"),
            "Moved 's' from 1.4.0 to 1.1.0."
        );
    }

    #[test]
    fn a_record_keeps_its_start_time() {
        let mut running = record("r", "shop", 1, None);
        let t0 = Timestamp::from_second(100).unwrap();
        let t1 = Timestamp::from_second(160).unwrap();
        running.status = Some(record_status(
            &running,
            RecordUpdate::phase(DeploymentPhase::Running),
            t0,
        ));
        let done = record_status(
            &running,
            RecordUpdate::phase(DeploymentPhase::Succeeded),
            t1,
        );
        assert_eq!((done.started_at, done.finished_at), (Some(t0), Some(t1)));
    }

    #[tokio::test]
    async fn older_records_get_their_stack_label_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SqliteStore::open(dir.path()).unwrap());
        for (name, stack, labelled) in [
            ("a", "shop", false),
            ("b", "shop", true),
            ("c", "blog", false),
        ] {
            let mut record = record(name, stack, 1, None);
            record.metadata.namespace = Some("local".into());
            if labelled {
                record.labels_mut().insert(STACK_LABEL.into(), stack.into());
            }
            store.create(&record).await.unwrap();
        }
        let listed = |stack: &'static str| {
            let store = store.clone();
            async move {
                let records = store
                    .list_labelled::<DeploymentRecord>("local", STACK_LABEL, stack)
                    .await
                    .unwrap();
                records.iter().map(|r| r.name_any()).collect::<Vec<_>>()
            }
        };
        assert_eq!(listed("shop").await, ["b"]);
        assert_eq!(label_history(&store).await.unwrap(), 2);
        assert_eq!(listed("shop").await, ["a", "b"]);
        assert_eq!(listed("blog").await, ["c"]);
        assert_eq!(
            label_history(&store).await.unwrap(),
            0,
            "nothing is written twice"
        );
    }
}
