//! A stack's status and its `Ready` condition.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::Context;
use crate::Result;
use crate::model::{Stack, StackPhase, StackStatus};

/// Writes `new` as the stack's status (with its `Ready` condition) when it differs from `old`.
pub(super) async fn write_status(
    ctx: &Context,
    stack: &Stack,
    old: &StackStatus,
    mut new: StackStatus,
) -> Result<()> {
    new.conditions = ready_condition(&old.conditions, &new, Timestamp::now());
    if *old != new {
        let mut updated = stack.clone();
        updated.status = Some(new);
        ctx.store.update_status(&updated).await?;
    }
    Ok(())
}

/// The `Ready` condition for a status. Its transition time moves only when its status does.
pub fn ready_condition(
    previous: &[Condition],
    status: &StackStatus,
    now: Timestamp,
) -> Vec<Condition> {
    let (state, reason, default_message) = match status.phase {
        Some(StackPhase::Running) => ("True", "Deployed", "Every service runs as specified."),
        Some(StackPhase::Deploying) => ("False", "RollingOut", "A rollout is under way."),
        Some(StackPhase::Failed) => ("False", "Failed", "The last rollout failed."),
        Some(StackPhase::Pending) | None => ("Unknown", "Pending", "Not reconciled yet."),
    };
    let since = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == state)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    vec![Condition {
        type_: "Ready".into(),
        status: state.into(),
        reason: reason.into(),
        message: status
            .message
            .clone()
            .unwrap_or_else(|| default_message.into()),
        observed_generation: status.observed_generation,
        last_transition_time: since,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_condition_follows_the_phase_and_keeps_its_transition_time() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let mut status = StackStatus {
            phase: Some(StackPhase::Deploying),
            observed_generation: Some(3),
            ..Default::default()
        };
        let deploying = ready_condition(&[], &status, t0);
        assert_eq!(
            (deploying[0].status.as_str(), deploying[0].reason.as_str()),
            ("False", "RollingOut")
        );
        assert_eq!(deploying[0].observed_generation, Some(3));
        status.phase = Some(StackPhase::Failed);
        status.message = Some("pulling image 'x' failed".into());
        let failed = ready_condition(&deploying, &status, t1);
        assert_eq!(
            failed[0].last_transition_time,
            Time(t0),
            "still False: the transition time stays"
        );
        assert_eq!(failed[0].message, "pulling image 'x' failed");
        status.phase = Some(StackPhase::Running);
        status.message = None;
        let ready = ready_condition(&failed, &status, t1);
        assert_eq!(
            (ready[0].status.as_str(), ready[0].reason.as_str()),
            ("True", "Deployed")
        );
        assert_eq!(ready[0].last_transition_time, Time(t1));
    }
}
