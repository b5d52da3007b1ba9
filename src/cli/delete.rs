//! `rsgo delete`: marks a stack for deletion and waits for the server to remove it.

use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;

use super::out;
use crate::model::Stack;
use crate::store::Store;
use crate::{Error, Result};

/// Kinds `rsgo delete` removes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Deletable {
    /// A stack.
    Stack,
}

/// How long `rsgo delete` waits for the server to remove a stack's containers.
const DELETE_WAIT: Duration = Duration::from_secs(60);

/// Asks for a stack's deletion; the server removes its containers and network, then the stack.
pub async fn delete(
    store: &Arc<dyn Store>,
    what: Deletable,
    name: &str,
    environment: &str,
) -> Result<()> {
    let Deletable::Stack = what;
    store
        .delete::<Stack>(environment, name)
        .await
        .map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound {
                kind: "Stack".into(),
                name: format!("{name}' in environment '{environment}"),
            },
            other => other,
        })?;
    let deadline = tokio::time::Instant::now() + DELETE_WAIT;
    while tokio::time::Instant::now() < deadline {
        if store.get::<Stack>(environment, name).await?.is_none() {
            return out(&format!(
                "stack/{name} deleted (containers and networks removed, volumes kept)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(Error::Invalid(format!(
        "stack/{name} is marked for deletion, but no rsgo server removed it within {}s; \
         it is removed as soon as `rsgo serve` runs",
        DELETE_WAIT.as_secs()
    )))
}
