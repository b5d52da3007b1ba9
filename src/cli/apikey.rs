//! `rsgo apikey`: keys are shown once at creation; only their hashes are stored.

use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde_json::json;

use super::{Format, out, print_as};
use crate::model::{ApiKey, Environment, Permission};
use crate::store::{Store, Write, encode};
use crate::{Error, Result};
use crate::{audit, auth};

/// API key commands.
#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key; only the key is printed on stdout.
    Create(CreateArgs),
    /// List keys (never their secrets).
    List {
        /// Output format; a table when absent.
        #[arg(short = 'o', long)]
        output: Option<Format>,
    },
    /// Revoke a key at once; the record is kept.
    Revoke {
        /// The key's name, display name, id or prefix.
        name_or_id: String,
        /// Why it is revoked.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Options of `apikey create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Display name, such as "GitHub Actions Deploy".
    #[arg(long)]
    name: String,
    /// Permission to grant; repeat for several.
    #[arg(long = "permission", required = true)]
    permissions: Vec<Permission>,
    /// Limit the key to this environment.
    #[arg(long)]
    environment: Option<String>,
    /// Expire after this long: `30d`, `12h`, `90m`, `1h30m`.
    #[arg(long, conflicts_with = "expires_at")]
    expires_in: Option<String>,
    /// Expire at this RFC 3339 time.
    #[arg(long)]
    expires_at: Option<String>,
    /// `json`: print `{id, name, prefix, key, ...}`. `yaml`: print an ApiKey manifest (hash only)
    /// and the key on stderr, without storing anything locally.
    #[arg(short = 'o', long)]
    output: Option<KeyOutput>,
}

/// Output of `apikey create`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyOutput {
    /// JSON with the key and its details.
    Json,
    /// An ApiKey manifest holding only the hash, for git or `kubectl apply`; the key goes to stderr.
    Yaml,
}

/// When a key created now expires, from `--expires-in` or `--expires-at`.
fn expiry_of(expires_in: Option<&str>, expires_at: Option<&str>) -> Result<Option<Timestamp>> {
    match (expires_in, expires_at) {
        (Some(after), _) => expiry(after, Timestamp::now()).map(Some),
        (None, Some(at)) => at.parse::<Timestamp>().map(Some).map_err(|e| {
            Error::Invalid(format!("--expires-at '{at}' is not an RFC 3339 time: {e}"))
        }),
        (None, None) => Ok(None),
    }
}

/// When a key created now with `--expires-in TEXT` expires (the duration grammar of
/// [`crate::duration`]); a zero length or one past the calendar's end is refused.
fn expiry(text: &str, now: Timestamp) -> Result<Timestamp> {
    let after = crate::duration::parse(text).map_err(Error::Invalid)?;
    if after.is_zero() {
        return Err(Error::Invalid(format!(
            "--expires-in {text} is no time at all; give a positive duration such as 30d"
        )));
    }
    SignedDuration::try_from(after)
        .ok()
        .and_then(|after| now.checked_add(after).ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "--expires-in {text} reaches past the year 9999; use a shorter time"
            ))
        })
}

/// Runs an API key command.
pub async fn run(store: &Arc<dyn Store>, command: ApikeyCommand) -> Result<()> {
    match command {
        ApikeyCommand::Create(args) => create(store, args).await,
        ApikeyCommand::List { output } => list(store, output).await,
        ApikeyCommand::Revoke { name_or_id, reason } => revoke(store, name_or_id, reason).await,
    }
}

/// Creates a key and prints it once.
async fn create(store: &Arc<dyn Store>, args: CreateArgs) -> Result<()> {
    let CreateArgs {
        name,
        permissions,
        environment,
        expires_in,
        expires_at,
        output,
    } = args;

    // A manifest for git names a cluster environment this store does not know.
    let manifest_only = matches!(output, Some(KeyOutput::Yaml));
    if let Some(env) = &environment
        && !manifest_only
        && store.get::<Environment>("", env).await?.is_none()
    {
        return Err(Error::Invalid(format!(
            "environment '{env}' does not exist"
        )));
    }
    let expires_at = expiry_of(expires_in.as_deref(), expires_at.as_deref())?;
    let key = auth::generate();
    let record = auth::key_record(&key, &name, permissions, environment, expires_at)
        .map_err(Error::Invalid)?;
    if manifest_only {
        print_as(&crate::store::encode(&record)?, Format::Yaml)?;
        eprintln!("{}", key.plaintext);
        eprintln!(
            "The line above is the API key '{name}' ({}). Copy it now: it is not shown again. \
             Stdout holds the manifest to commit or apply; it contains only the key's hash.",
            key.prefix
        );
        return Ok(());
    }
    let mut created = audit::event(audit::cli_actor(), "apikey.create", Some(record.name_any()));
    created.spec.detail = Some(Permission::names(&record.spec.permissions));
    let stored: ApiKey = audit::write_with(store, Write::Create(encode(&record)?), &created)
        .await
        .map_err(|e| match e {
            Error::AlreadyExists { .. } => {
                Error::Invalid(format!("an API key named '{name}' already exists"))
            }
            other => other,
        })?;
    let id = stored.uid().unwrap_or_default();
    show_created(&key, &stored, &id, output)
}

/// Prints a created key: alone on stdout (details on stderr), or as JSON.
fn show_created(
    key: &auth::NewKey,
    stored: &ApiKey,
    id: &str,
    output: Option<KeyOutput>,
) -> Result<()> {
    let (name, permissions, environment, expires_at) = (
        &stored.spec.display_name,
        &stored.spec.permissions,
        &stored.spec.environment,
        &stored.spec.expires_at,
    );
    if let Some(KeyOutput::Json) = output {
        return print_as(
            &json!({
                "id": id, "name": name, "prefix": key.prefix, "key": key.plaintext,
                "permissions": permissions, "environment": environment, "expiresAt": expires_at,
            }),
            Format::Json,
        );
    }
    out(&key.plaintext)?;
    eprintln!(
        "Created API key '{name}' (id {id}, prefix {}) with {}. Copy it now: it is not shown again.",
        key.prefix,
        Permission::names(permissions)
    );
    Ok(())
}

/// Lists keys, never their secrets.
async fn list(store: &Arc<dyn Store>, output: Option<Format>) -> Result<()> {
    let keys = store.list::<ApiKey>(None).await?;
    if let Some(format) = output {
        let items: Vec<_> = keys
            .iter()
            .map(crate::store::encode)
            .collect::<Result<_>>()?;
        return print_as(
            &json!({"apiVersion": "v1", "kind": "List", "items": items}),
            format,
        );
    }
    out(&format!(
        "{:<28} {:<10} {:<36} {:<12} {:<8} LAST USED",
        "NAME", "PREFIX", "PERMISSIONS", "ENVIRONMENT", "STATE"
    ))?;
    for key in keys {
        let state = auth::state(&key, Timestamp::now());
        let last_used = key
            .status
            .as_ref()
            .and_then(|s| s.last_used_at)
            .map(|t| t.to_string());
        out(&format!(
            "{:<28} {:<10} {:<36} {:<12} {:<8} {}",
            key.spec.display_name,
            key.spec.prefix,
            Permission::names(&key.spec.permissions),
            key.spec.environment.as_deref().unwrap_or("*"),
            state,
            last_used.as_deref().unwrap_or("never")
        ))?;
    }
    Ok(())
}

/// Revokes a key; the record stays.
async fn revoke(store: &Arc<dyn Store>, name_or_id: String, reason: Option<String>) -> Result<()> {
    let keys = store.list::<ApiKey>(None).await?;
    let matches: Vec<ApiKey> = keys
        .into_iter()
        .filter(|k| {
            k.name_any() == name_or_id
                || k.spec.display_name == name_or_id
                || k.uid().as_deref() == Some(name_or_id.as_str())
                || k.spec.prefix == name_or_id
        })
        .collect();
    let mut key = match <[ApiKey; 1]>::try_from(matches) {
        Ok([key]) => key,
        Err(found) if found.is_empty() => {
            return Err(Error::NotFound {
                kind: "ApiKey".into(),
                name: name_or_id,
            });
        }
        Err(_) => {
            return Err(Error::Invalid(format!(
                "'{name_or_id}' matches several keys; use the id"
            )));
        }
    };
    if key.spec.revoked {
        eprintln!("API key '{}' was already revoked.", key.spec.display_name);
        return Ok(());
    }
    auth::revoke(&mut key, reason);
    let revoked = audit::event(audit::cli_actor(), "apikey.revoke", Some(key.name_any()));
    let _: ApiKey = audit::write_with(store, Write::Update(encode(&key)?), &revoked).await?;
    eprintln!(
        "Revoked API key '{}' ({}).",
        key.spec.display_name, key.spec.prefix
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_the_one_duration_grammar() {
        let now = Timestamp::from_second(0).unwrap();
        assert_eq!(
            expiry("30d", now).unwrap(),
            now + SignedDuration::from_secs(30 * 86_400)
        );
        assert_eq!(
            expiry("1h30m", now).unwrap(),
            now + SignedDuration::from_secs(5_400)
        );
        assert!(expiry("0d", now).is_err());
        assert!(expiry("d", now).is_err());
        let far = expiry("3000000d", Timestamp::now())
            .unwrap_err()
            .to_string();
        assert!(far.contains("past the year 9999"), "{far}");
        let huge = expiry("106751991167300d", now).unwrap_err().to_string();
        assert!(huge.contains("is not a duration"), "{huge}");
    }
}
