//! `rsgo get`: stacks, deployment records and environments as a table, JSON or YAML.

use std::sync::Arc;

use clap::ValueEnum;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::{Format, out, print_as};
use crate::model::{CatalogSource, DeploymentRecord, Environment, Stack, redact};
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
                .for_each(|(doc, _)| redact::hide_stack_secrets(doc));
            stacks
        }
        Listable::Deployments => {
            let mut records = store.list::<DeploymentRecord>(environment).await?;
            records.sort_by_key(|r| r.spec.requested_at);
            let mut records = rows(records, record_row)?;
            for (doc, _) in &mut records {
                redact::hide(doc.pointer_mut("/spec/previousVariables"), |_| true);
            }
            records
        }
        Listable::Environments => rows(store.list::<Environment>(None).await?, environment_row)?,
        Listable::Catalogsources => rows(store.list::<CatalogSource>(None).await?, source_row)?,
        Listable::Secrets => {
            let mut secrets = rows(store.list::<Secret>(None).await?, secret_row)?;
            for (doc, _) in &mut secrets {
                redact::hide(doc.get_mut("data"), |_| true);
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
    print_table(header, rows.into_iter().map(|(_, row)| row))
}

/// Prints rows under a header, each column as wide as its widest cell.
fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> Result<()> {
    let table: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows)
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

/// Prints the audit trail, newest first.
pub async fn audit(
    store: &Arc<dyn Store>,
    query: &crate::audit::Query,
    output: Option<Format>,
) -> Result<()> {
    let events = crate::audit::read(store, query).await?;
    if let Some(format) = output {
        let items = events.iter().map(encode).collect::<Result<Vec<_>>>()?;
        return print_as(
            &json!({"apiVersion": "v1", "kind": "List", "items": items}),
            format,
        );
    }
    let rows = events.iter().map(|e| {
        let spec = &e.spec;
        let actor = match (&spec.actor.key_prefix, &spec.actor.address) {
            (Some(prefix), Some(address)) => format!("{} ({prefix}, {address})", spec.actor.name),
            (Some(prefix), None) => format!("{} ({prefix})", spec.actor.name),
            (None, Some(address)) => format!("{} ({address})", spec.actor.name),
            (None, None) => spec.actor.name.clone(),
        };
        let mut detail = spec.detail.clone().unwrap_or_default();
        if let Some(count) = spec.count {
            detail = format!("{count}x {detail}");
        }
        vec![
            spec.time.to_string(),
            actor,
            spec.action.clone(),
            spec.target.clone().unwrap_or_else(|| "-".into()),
            format!("{:?}", spec.outcome),
            spec.status_code.map_or("-".into(), |c| c.to_string()),
            detail,
        ]
    });
    print_table(
        &[
            "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "STATUS", "DETAIL",
        ],
        rows,
    )
}
