//! `GET /api/v1/deployments/{id}/events`: a deployment's progress as Server-Sent Events. Each
//! change of its phase, message or per-service results is one `deployment` event carrying the
//! same JSON as `GET /api/deployments/{id}`; the stream ends after the event with a final
//! phase. A superseded request is followed to the deployment that carried it out.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use kube::ResourceExt;

use super::access::Caller;
use super::hooks::{deployment_response, visible_record};
use super::{ApiError, AppState};
use crate::model::{DeploymentPhase, DeploymentRecord};

/// How long a stream follows a deployment at most.
const FOLLOW_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How often the record is read again when no write of this process woke the stream (writes of
/// other processes are seen this way).
const POLL: Duration = Duration::from_millis(500);

struct Follow {
    state: AppState,
    environment: String,
    current: String,
    last: Option<String>,
    deadline: tokio::time::Instant,
    wake: tokio::sync::watch::Receiver<u64>,
    done: bool,
}

/// `GET /api/v1/deployments/{id}/events`: any valid key that may read the deployment.
pub async fn deployment_events(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let record = visible_record(&state, &caller, id).await?;
    let follow = Follow {
        wake: state.store.subscribe(),
        environment: record.namespace().unwrap_or_default(),
        current: record.name_any(),
        state,
        last: None,
        deadline: tokio::time::Instant::now() + FOLLOW_LIMIT,
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        if follow.done {
            return None;
        }
        let event = follow.next().await;
        Some((Ok(event), follow))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

impl Follow {
    /// The next event: a change of the followed record, an error, or the end of the time limit.
    async fn next(&mut self) -> Event {
        loop {
            let record = match self
                .state
                .store
                .get::<DeploymentRecord>(&self.environment, &self.current)
                .await
            {
                Ok(Some(record)) => record,
                Ok(None) => {
                    self.done = true;
                    return Event::default()
                        .event("error")
                        .data(format!("deployment {} was deleted", self.current));
                }
                Err(error) => {
                    tracing::warn!(%error, "reading a followed deployment failed");
                    self.done = true;
                    return Event::default().event("error").data(
                        "reading the deployment failed; the rsgo server log has the details",
                    );
                }
            };
            let status = record.status.clone().unwrap_or_default();
            let answer = deployment_response(record);
            let text = serde_json::to_string(&answer).unwrap_or_default();
            if self.last.as_ref() != Some(&text) {
                self.last = Some(text.clone());
                match (status.phase, status.served_by) {
                    (DeploymentPhase::Superseded, Some(by)) if by != self.current => {
                        // Tell, then follow the deployment that carries the request out.
                        self.current = by;
                        self.last = None;
                    }
                    (phase, _) if phase.is_terminal() => self.done = true,
                    _ => {}
                }
                return Event::default().event("deployment").data(text);
            }
            if tokio::time::Instant::now() >= self.deadline {
                self.done = true;
                return Event::default().event("timeout").data(format!(
                    "deployment {} has not finished within {} minutes; it goes on",
                    self.current,
                    FOLLOW_LIMIT.as_secs() / 60
                ));
            }
            let _ = tokio::time::timeout(POLL, self.wake.changed()).await;
        }
    }
}
