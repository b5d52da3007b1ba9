//! `rsgo get`: stacks, deployment records and environments as a table, JSON or YAML.

use std::sync::Arc;

use clap::ValueEnum;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::{Format, out, print_as};
use crate::model::{CatalogSource, DeploymentRecord, Environment, Stack};
use crate::store::{Object, Store, encode};
use crate::{Error, Result};

/// Kinds `rsgo get` shows.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Listable {
    /// Stacks.
    Stacks,
    /// Deployment records.
    Deployments,
    /// Environments.
    Environments,
    /// Catalog sources.
    #[value(alias = "catalogsource", alias = "sources")]
    Catalogsources,
    /// Secrets: names, types and keys, never values.
    #[value(alias = "secret")]
    Secrets,
}

/// Each object as a document and as a table row.
fn rows<K: Object>(
    objects: Vec<K>,
    row: fn(&K) -> Vec<String>,
) -> Result<Vec<(Value, Vec<String>)>> {
    objects
        .iter()
        .map(|o| encode(o).map(|v| (v, row(o))))
        .collect()
}

fn stack_row(s: &Stack) -> Vec<String> {
    let status = s.status.clone().unwrap_or_default();
    vec![
        s.name_any(),
        s.spec.environment.clone(),
        s.spec.product.clone(),
        status.deployed_version.unwrap_or_else(|| "-".into()),
        status.phase.map_or("Pending".into(), |p| format!("{p:?}")),
        status.message.unwrap_or_default(),
    ]
}

fn record_row(r: &DeploymentRecord) -> Vec<String> {
    let status = r.status.clone().unwrap_or_default();
    vec![
        r.name_any(),
        r.spec.stack.clone(),
        format!("{:?}", r.spec.action),
        format!("{:?}", status.phase),
        r.spec.requested_at.to_string(),
        status.message.unwrap_or_default(),
    ]
}

fn environment_row(e: &Environment) -> Vec<String> {
    let status = e.status.clone().unwrap_or_default();
    vec![
        e.name_any(),
        e.spec
            .docker
            .as_ref()
            .map(|d| d.host.clone())
            .unwrap_or_default(),
        status.reachable.map_or("unknown".into(), |r| r.to_string()),
        status.engine_version.or(status.message).unwrap_or_default(),
    ]
}

fn source_row(c: &CatalogSource) -> Vec<String> {
    let status = c.status.clone().unwrap_or_default();
    let (kind, location) = match (&c.spec.directory, &c.spec.git) {
        (_, Some(git)) => (
            "git",
            match &git.reference {
                Some(reference) => format!("{}@{reference}", git.url),
                None => git.url.clone(),
            },
        ),
        (Some(dir), None) => ("directory", dir.path.clone()),
        (None, None) => ("none", String::new()),
    };
    vec![
        c.name_any(),
        kind.into(),
        location,
        status
            .revision
            .map(|r| r.chars().take(12).collect())
            .unwrap_or_default(),
        status
            .last_sync_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "never".into()),
        status.products_loaded.to_string(),
        status.versions_loaded.to_string(),
        status.errors.len().to_string(),
    ]
}

/// What `rsgo get` shows instead of a hidden value.
pub const HIDDEN: &str = "(hidden)";

/// Replaces the values of the variables `which` picks in a map of variables.
fn hide(variables: Option<&mut Value>, which: impl Fn(&str) -> bool) {
    if let Some(Value::Object(variables)) = variables {
        for (name, value) in variables.iter_mut() {
            if which(name) {
                *value = Value::String(HIDDEN.into());
            }
        }
    }
}

/// Hides a stack's Password variables. Until the reconciler has looked at the current spec (and
/// so knows which of its variables are Passwords), every value is hidden.
fn hide_stack_secrets(doc: &mut Value) {
    let generation = doc.pointer("/metadata/generation").cloned();
    let status = doc.get("status").cloned().unwrap_or_default();
    let current = status.get("observedGeneration").cloned() == generation;
    let hidden: Vec<String> = status
        .get("hiddenVariables")
        .and_then(|h| serde_json::from_value(h.clone()).ok())
        .unwrap_or_default();
    hide(doc.pointer_mut("/spec/variables"), |name| {
        !current || hidden.iter().any(|h| h == name)
    });
}

fn secret_row(s: &Secret) -> Vec<String> {
    let keys: Vec<&str> = s
        .data
        .iter()
        .flat_map(|data| data.keys().map(String::as_str))
        .collect();
    vec![
        s.name_any(),
        s.type_.clone().unwrap_or_else(|| "Opaque".into()),
        keys.join(","),
    ]
}

/// Prints stacks, deployment records, environments, catalog sources or secrets.
pub async fn get(
    store: &Arc<dyn Store>,
    what: Listable,
    name: Option<&str>,
    environment: Option<&str>,
    output: Option<Format>,
) -> Result<()> {
    let rows: Vec<(Value, Vec<String>)> = match what {
        Listable::Stacks => {
            let mut stacks = rows(store.list::<Stack>(environment).await?, stack_row)?;
            stacks
                .iter_mut()
                .for_each(|(doc, _)| hide_stack_secrets(doc));
            stacks
        }
        Listable::Deployments => {
            let mut records = store.list::<DeploymentRecord>(environment).await?;
            records.sort_by_key(|r| r.spec.requested_at);
            let mut records = rows(records, record_row)?;
            for (doc, _) in &mut records {
                hide(doc.pointer_mut("/spec/previousVariables"), |_| true);
            }
            records
        }
        Listable::Environments => rows(store.list::<Environment>(None).await?, environment_row)?,
        Listable::Catalogsources => rows(store.list::<CatalogSource>(None).await?, source_row)?,
        Listable::Secrets => {
            let mut secrets = rows(store.list::<Secret>(None).await?, secret_row)?;
            for (doc, _) in &mut secrets {
                hide(doc.get_mut("data"), |_| true);
            }
            secrets
        }
    };
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(_, row)| name.is_none_or(|n| row[0] == n))
        .collect();
    if let Some(name) = name
        && rows.is_empty()
    {
        return Err(Error::NotFound {
            kind: match what {
                Listable::Stacks => "Stack",
                Listable::Deployments => "Deployment",
                Listable::Environments => "Environment",
                Listable::Catalogsources => "CatalogSource",
                Listable::Secrets => "Secret",
            }
            .into(),
            name: name.into(),
        });
    }
    if let Some(format) = output {
        let value = match (name, rows.as_slice()) {
            (Some(_), [(one, _)]) => one.clone(),
            _ => {
                json!({"apiVersion": "v1", "kind": "List", "items": rows.iter().map(|(v, _)| v).collect::<Vec<_>>()})
            }
        };
        return print_as(&value, format);
    }
    let header: &[&str] = match what {
        Listable::Stacks => &[
            "NAME",
            "ENVIRONMENT",
            "PRODUCT",
            "VERSION",
            "PHASE",
            "MESSAGE",
        ],
        Listable::Deployments => &["ID", "STACK", "ACTION", "PHASE", "REQUESTED", "MESSAGE"],
        Listable::Environments => &["NAME", "DOCKER", "REACHABLE", "ENGINE"],
        Listable::Catalogsources => &[
            "NAME",
            "TYPE",
            "SOURCE",
            "REVISION",
            "LAST SYNC",
            "PRODUCTS",
            "VERSIONS",
            "ERRORS",
        ],
        Listable::Secrets => &["NAME", "TYPE", "KEYS"],
    };
    let table: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows.into_iter().map(|(_, row)| row))
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out(cells.join("  ").trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_everything_is_until_reconciled() {
        let mut reconciled = json!({
            "metadata": {"generation": 2},
            "spec": {"variables": {"PASSWORD": "s3cr3t", "PORT": "8080"}},
            "status": {"observedGeneration": 2, "hiddenVariables": ["PASSWORD"]},
        });
        hide_stack_secrets(&mut reconciled);
        assert_eq!(
            reconciled["spec"]["variables"],
            json!({"PASSWORD": HIDDEN, "PORT": "8080"})
        );
        let mut changed = json!({
            "metadata": {"generation": 3},
            "spec": {"variables": {"PASSWORD": "s3cr3t", "TOKEN": "t0k3n"}},
            "status": {"observedGeneration": 2, "hiddenVariables": ["PASSWORD"]},
        });
        hide_stack_secrets(&mut changed);
        assert_eq!(
            changed["spec"]["variables"],
            json!({"PASSWORD": HIDDEN, "TOKEN": HIDDEN}),
            "a new spec may declare new passwords"
        );
    }
}
