//! `rsgo apply`, `rsgo get` and `rsgo delete`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Format, out, print_as};
use crate::model::{API_VERSION, ApiKey, CatalogSource, DeploymentRecord, Environment, Stack};
use crate::store::{Object, Store, Write, encode};
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
}

/// Kinds `rsgo delete` removes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Deletable {
    /// A stack.
    Stack,
}

/// How long `rsgo delete` waits for the server to remove a stack's containers.
const DELETE_WAIT: Duration = Duration::from_secs(60);

fn read_input(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::io("reading standard input", e))?;
        return Ok(text);
    }
    std::fs::read_to_string(file).map_err(|e| Error::io(format!("reading {}", file.display()), e))
}

/// Decodes one document into `K`, saying which document failed.
fn decode<K: Object>(doc: &Value, position: usize) -> Result<K> {
    serde_json::from_value(doc.clone())
        .map_err(|e| Error::Invalid(format!("document {position}: {e}")))
}

/// One document of an apply file, decoded and checked on its own.
#[derive(Debug, Clone)]
pub enum Document {
    /// An Environment.
    Environment(Environment),
    /// A CatalogSource.
    CatalogSource(CatalogSource),
    /// A Stack (its namespace is filled in from its environment later).
    Stack(Stack),
    /// An ApiKey.
    ApiKey(ApiKey),
}

/// The documents of an apply file with their positions (from 1); empty documents are skipped.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<(usize, Value)>> {
    let mut docs = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| Error::Yaml {
            context: format!("{source}: document {}", index + 1),
            source: e,
        })?;
        if !value.is_null() {
            docs.push((index + 1, value));
        }
    }
    if docs.is_empty() {
        return Err(Error::Invalid(format!("{source} holds no objects")));
    }
    Ok(docs)
}

/// Checks one document on its own: `apiVersion`, a kind apply takes, its fields, its name and
/// the rules of its kind. Errors name the document.
pub fn check_document(position: usize, doc: &Value) -> Result<Document> {
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version != API_VERSION {
        return Err(Error::Invalid(format!(
            "document {position}: apiVersion must be {API_VERSION}, got '{api_version}'"
        )));
    }
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let document = match kind {
        "Environment" => Document::Environment(decode(doc, position)?),
        "CatalogSource" => Document::CatalogSource(decode(doc, position)?),
        "Stack" => Document::Stack(decode(doc, position)?),
        "ApiKey" => Document::ApiKey(decode(doc, position)?),
        other => {
            return Err(Error::Invalid(format!(
                "document {position}: kind '{other}' cannot be applied; use Environment, CatalogSource, Stack or ApiKey"
            )));
        }
    };
    let value = document.encode()?;
    if value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(Error::Invalid(format!(
            "document {position}: metadata.name is required"
        )));
    }
    crate::model::validate_document(&value, true)
        .map_err(|e| Error::Invalid(format!("document {position}: {e}")))?;
    Ok(document)
}

impl Document {
    fn encode(&self) -> Result<Value> {
        match self {
            Document::Environment(o) => encode(o),
            Document::CatalogSource(o) => encode(o),
            Document::Stack(o) => encode(o),
            Document::ApiKey(o) => encode(o),
        }
    }
}

/// Applies every document or none: all are parsed and checked before one atomic write.
pub async fn apply(store: &Arc<dyn Store>, file: &Path) -> Result<()> {
    let text = read_input(file)?;
    let docs = parse_documents(&text, &file.display().to_string())?;
    let mut new_environments: BTreeMap<String, Environment> = BTreeMap::new();
    let mut prepared: Vec<(String, Value)> = Vec::new();
    for (position, doc) in &docs {
        let document = match check_document(*position, doc)? {
            Document::Environment(env) => {
                new_environments.insert(env.name_any(), env.clone());
                Document::Environment(env)
            }
            Document::Stack(mut stack) => {
                let env_name = stack.spec.environment.clone();
                let env = match new_environments.get(&env_name) {
                    Some(env) => env.clone(),
                    None => store
                        .get::<Environment>("", &env_name)
                        .await?
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "document {position}: environment '{env_name}' does not exist"
                            ))
                        })?,
                };
                let namespace = env.stack_namespace();
                match stack.metadata.namespace.as_deref() {
                    Some(ns) if ns != namespace => {
                        return Err(Error::Invalid(format!(
                            "document {position}: stacks of environment '{env_name}' live in namespace '{namespace}', not '{ns}'"
                        )));
                    }
                    _ => stack.metadata.namespace = Some(namespace),
                }
                Document::Stack(stack)
            }
            other => other,
        };
        let value = document.encode()?;
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        prepared.push((kind, value));
    }
    check_namespaces(store, &new_environments).await?;
    let mut writes = Vec::new();
    let mut report = Vec::new();
    for (kind, mut value) in prepared {
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(meta) = value["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let existing = store.get_raw(kind.clone(), namespace, name.clone()).await?;
        let verb = match &existing {
            None => "created",
            Some(old) if old.get("spec") == value.get("spec") => "unchanged",
            Some(_) => "configured",
        };
        report.push(format!("{}/{name} {verb}", kind.to_lowercase()));
        match existing {
            None => writes.push(Write::Create(value)),
            Some(_) if verb == "unchanged" => {}
            Some(old) => {
                // Like kubectl apply: fields the file does not manage stay as they are.
                for field in ["finalizers", "ownerReferences"] {
                    if let Some(kept) = old["metadata"].get(field) {
                        value["metadata"][field] = kept.clone();
                    }
                }
                writes.push(Write::Update(value))
            }
        }
    }
    store.write(writes).await?;
    for line in report {
        out(&line)?;
    }
    Ok(())
}

/// Refuses environments that would keep their stacks in the namespace of another environment:
/// their stacks and records would mix.
async fn check_namespaces(
    store: &Arc<dyn Store>,
    applied: &BTreeMap<String, Environment>,
) -> Result<()> {
    let mut all: BTreeMap<String, Environment> = store
        .list::<Environment>(None)
        .await?
        .into_iter()
        .map(|e| (e.name_any(), e))
        .collect();
    all.extend(applied.clone());
    for (name, env) in applied {
        let namespace = env.stack_namespace();
        if let Some(other) = all
            .iter()
            .find(|(other, e)| *other != name && e.stack_namespace() == namespace)
            .map(|(other, _)| other)
        {
            return Err(Error::Invalid(format!(
                "environments '{other}' and '{name}' would both keep their stacks in namespace \
                 '{namespace}'; give each environment its own namespace"
            )));
        }
    }
    Ok(())
}

/// Prints stacks, deployment records or environments.
pub async fn get(
    store: &Arc<dyn Store>,
    what: Listable,
    name: Option<&str>,
    environment: Option<&str>,
    output: Option<Format>,
) -> Result<()> {
    let rows: Vec<(Value, Vec<String>)> = match what {
        Listable::Stacks => store
            .list::<Stack>(environment)
            .await?
            .iter()
            .map(|s| {
                let status = s.status.clone().unwrap_or_default();
                let row = vec![
                    s.name_any(),
                    s.spec.environment.clone(),
                    s.spec.product.clone(),
                    status.deployed_version.unwrap_or_else(|| "-".into()),
                    status.phase.map_or("Pending".into(), |p| format!("{p:?}")),
                    status.message.unwrap_or_default(),
                ];
                encode(s).map(|v| (v, row))
            })
            .collect::<Result<_>>()?,
        Listable::Deployments => {
            let mut records = store.list::<DeploymentRecord>(environment).await?;
            records.sort_by_key(|r| r.spec.requested_at);
            records
                .iter()
                .map(|r| {
                    let status = r.status.clone().unwrap_or_default();
                    let row = vec![
                        r.name_any(),
                        r.spec.stack.clone(),
                        format!("{:?}", r.spec.action),
                        format!("{:?}", status.phase),
                        r.spec.requested_at.to_string(),
                        status.message.unwrap_or_default(),
                    ];
                    encode(r).map(|v| (v, row))
                })
                .collect::<Result<_>>()?
        }
        Listable::Environments => store
            .list::<Environment>(None)
            .await?
            .iter()
            .map(|e| {
                let status = e.status.clone().unwrap_or_default();
                let row = vec![
                    e.name_any(),
                    e.spec
                        .docker
                        .as_ref()
                        .map(|d| d.host.clone())
                        .unwrap_or_default(),
                    status.reachable.map_or("unknown".into(), |r| r.to_string()),
                    status.engine_version.or(status.message).unwrap_or_default(),
                ];
                encode(e).map(|v| (v, row))
            })
            .collect::<Result<_>>()?,
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
