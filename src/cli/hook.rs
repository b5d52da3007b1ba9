//! `rsgo hook`: call a hook from a pipeline and follow the rollout to its end. The server and
//! key come from `RSGO_URL` and `RSGO_API_KEY`, never from the command line (where other users
//! of the machine and the pipeline's log could read the key).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::api::API_KEY_HEADER;
use crate::{Error, Result};

/// The hooks `rsgo hook` calls.
#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Redeploy a stack with freshly pulled images, and follow the rollout.
    Redeploy {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// Its environment; the key's or the server's default when absent.
        #[arg(long)]
        environment: Option<String>,
        /// How to follow.
        #[command(flatten)]
        follow: Follow,
    },
    /// Upgrade a stack to another catalog version, and follow the rollout.
    Upgrade {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The catalog version to move to.
        #[arg(long)]
        version: String,
        /// Its environment; the key's or the server's default when absent.
        #[arg(long)]
        environment: Option<String>,
        /// A variable for the new version, `NAME=VALUE`; repeat for several.
        #[arg(long = "var", value_parser = variable)]
        variables: Vec<(String, String)>,
        /// How to follow.
        #[command(flatten)]
        follow: Follow,
    },
    /// Sync every catalog source now.
    SyncSources,
}

/// How `rsgo hook` follows a rollout.
#[derive(Debug, Args)]
pub struct Follow {
    /// Return once the request is recorded instead of following the rollout.
    #[arg(long)]
    no_follow: bool,
}

fn variable(text: &str) -> std::result::Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("'{text}' is not NAME=VALUE"))
}

/// What `rsgo hook` needs to reach the server.
struct Target {
    url: String,
    key: String,
    client: reqwest::Client,
}

impl Target {
    fn from_env() -> Result<Self> {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| Error::Invalid(format!("{name} is not set; rsgo hook reads the server's URL from RSGO_URL and the API key from RSGO_API_KEY")))
        };
        let url = read("RSGO_URL")?.trim_end_matches('/').to_owned();
        let key = read("RSGO_API_KEY")?.trim().to_owned();
        if !crate::auth::is_well_formed(&key) {
            return Err(Error::Invalid(
                "RSGO_API_KEY is not an rsgo key ('rsgo_' followed by 32 letters and digits)"
                    .into(),
            ));
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("rsgo-hook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Task(format!("setting up HTTP: {e}")))?;
        Ok(Self { url, key, client })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        request
            .header(API_KEY_HEADER, &self.key)
            .send()
            .await
            .map_err(|e| {
                Error::Unreachable(format!("cannot reach {}: {}", self.url, full_error(&e)))
            })
    }

    /// POSTs a hook; the JSON answer when it is a success, else an error with its message.
    async fn post(&self, path: &str, body: Option<Value>) -> Result<Value> {
        let mut request = self.client.post(format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = self.send(request).await?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Error::Unreachable(format!("reading the answer: {e}")))?;
        let answer: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| json!({"message": text}));
        if !status.is_success() {
            return Err(Error::Invalid(format!(
                "{path} answered {status}: {}",
                answer["message"].as_str().unwrap_or("no message")
            )));
        }
        Ok(answer)
    }
}

/// An error with its sources, which say what actually failed (refused connection, TLS).
fn full_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs a hook command; an error (and a non-zero exit) when the request is refused or the
/// rollout does not succeed.
pub async fn run(command: HookCommand) -> Result<()> {
    let target = Target::from_env()?;
    let (path, body, follow) = match command {
        HookCommand::Redeploy {
            stack,
            environment,
            follow,
        } => (
            "/api/hooks/redeploy",
            json!({"stackName": stack, "environmentId": environment}),
            !follow.no_follow,
        ),
        HookCommand::Upgrade {
            stack,
            version,
            environment,
            variables,
            follow,
        } => {
            let variables: BTreeMap<String, String> = variables.into_iter().collect();
            (
                "/api/hooks/upgrade",
                json!({"stackName": stack, "targetVersion": version, "environmentId": environment, "variables": variables}),
                !follow.no_follow,
            )
        }
        HookCommand::SyncSources => {
            let answer = target.post("/api/hooks/sync-sources", None).await?;
            say(answer["message"].as_str().unwrap_or("Synced."));
            return Ok(());
        }
    };
    let answer = target.post(path, Some(body)).await?;
    say(answer["message"].as_str().unwrap_or("Accepted."));
    let id = answer["deploymentId"]
        .as_str()
        .ok_or_else(|| Error::Task("the answer names no deployment".into()))?;
    say(&format!("deployment {id}"));
    if !follow {
        return Ok(());
    }
    follow_events(&target, id).await
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Follows the deployment's events until it ends; an error unless it succeeded.
async fn follow_events(target: &Target, id: &str) -> Result<()> {
    let url = format!("{}/api/v1/deployments/{id}/events", target.url);
    let mut response = target
        .send(target.client.get(url).header("accept", "text/event-stream"))
        .await?;
    if !response.status().is_success() {
        return Err(Error::Invalid(format!(
            "following deployment {id} was refused: {}",
            response.status()
        )));
    }
    let terminal = std::io::stdout().is_terminal();
    let mut printer = Printer::default();
    let mut buffer = String::new();
    let mut last: Option<Value> = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Error::Unreachable(format!("following deployment {id}: {e}")))?
    {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (event, data) = parse_event(&block);
            match event.as_str() {
                "deployment" => {
                    let state: Value = serde_json::from_str(&data).unwrap_or_default();
                    printer.show(&state, terminal);
                    last = Some(state);
                }
                "" => {}
                other => return Err(Error::Rollout(format!("deployment {id}: {other}: {data}"))),
            }
        }
    }
    let last =
        last.ok_or_else(|| Error::Unreachable(format!("deployment {id}: no progress received")))?;
    let phase = last["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" {
        return Ok(());
    }
    Err(Error::Rollout(format!(
        "deployment {id} ended {phase}: {}",
        last["message"].as_str().unwrap_or("no message")
    )))
}

/// The event name and data of one Server-Sent Events block.
fn parse_event(block: &str) -> (String, String) {
    let (mut event, mut data) = (String::new(), Vec::new());
    for line in block.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(text) = line.strip_prefix("data:") {
            data.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
        }
    }
    (event, data.join("\n"))
}

/// Prints what changed since the last event: the phase, then each service's result.
#[derive(Default)]
struct Printer {
    phase: String,
    services: BTreeMap<String, String>,
}

impl Printer {
    fn show(&mut self, state: &Value, terminal: bool) {
        let id = state["deploymentId"].as_str().unwrap_or_default();
        let phase = state["phase"].as_str().unwrap_or_default().to_owned();
        if phase != self.phase {
            let message = state["message"].as_str().unwrap_or_default();
            let line = format!("{id}: {phase} {message}");
            if terminal {
                say(&format!("\x1b[1m{}\x1b[0m", line.trim_end()));
            } else {
                say(line.trim_end());
            }
            self.phase = phase;
        }
        for service in state["services"].as_array().into_iter().flatten() {
            let name = service["service"].as_str().unwrap_or_default().to_owned();
            let action = service["action"].as_str().unwrap_or_default().to_owned();
            if self.services.get(&name) != Some(&action) {
                say(&format!("  {name}: {action}"));
                self.services.insert(name, action);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_split_into_name_and_data() {
        assert_eq!(
            parse_event("event: deployment\ndata: {\"a\":1}\n\n"),
            ("deployment".into(), "{\"a\":1}".into())
        );
        assert_eq!(parse_event(":\n\n"), (String::new(), String::new()));
        assert!(variable("A=b=c").is_ok_and(|(n, v)| n == "A" && v == "b=c"));
        assert!(variable("=x").is_err());
    }
}
