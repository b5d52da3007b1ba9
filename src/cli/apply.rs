//! `rsgo apply`: every document checked first, then one atomic write.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::Value;

use super::out;
use crate::model::{API_VERSION, ApiKey, CatalogSource, Environment, Stack};
use crate::store::{CONTENT_FIELDS, Object, Store, Write, encode};
use crate::{Error, Result};

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
    /// A Secret (v1) holding credentials, `stringData` already folded into `data`.
    Secret(Secret),
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
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let expected = if kind == "Secret" { "v1" } else { API_VERSION };
    if api_version != expected {
        return Err(Error::Invalid(format!(
            "document {position}: apiVersion must be {expected}, got '{api_version}'"
        )));
    }
    let document = match kind {
        "Environment" => Document::Environment(decode(doc, position)?),
        "CatalogSource" => Document::CatalogSource(decode(doc, position)?),
        "Stack" => Document::Stack(decode(doc, position)?),
        "ApiKey" => Document::ApiKey(decode(doc, position)?),
        "Secret" => Document::Secret(secret(doc, position)?),
        other => {
            return Err(Error::Invalid(format!(
                "document {position}: kind '{other}' cannot be applied; use Environment, CatalogSource, Stack, ApiKey or Secret"
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

/// The types of Secret rsgo reads.
const SECRET_TYPES: [&str; 3] = [
    "Opaque",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
];

/// Decodes a Secret and folds `stringData` into `data`, as the API server does. Errors never
/// quote a value: a decoding error of serde could.
fn secret(doc: &Value, position: usize) -> Result<Secret> {
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let refuse =
        |reason: &str| Error::Invalid(format!("document {position}: Secret '{name}': {reason}"));
    let mut secret: Secret = serde_json::from_value(doc.clone()).map_err(|_| {
        refuse("must have metadata, and data values in base64 (stringData takes plain text); nothing else is read")
    })?;
    if secret
        .metadata
        .namespace
        .as_deref()
        .is_some_and(|ns| !ns.is_empty())
    {
        return Err(refuse(
            "standalone rsgo keeps Secrets without a namespace; remove metadata.namespace",
        ));
    }
    if let Some(kind) = secret
        .type_
        .as_deref()
        .filter(|t| !SECRET_TYPES.contains(t))
    {
        return Err(refuse(&format!(
            "type '{kind}' is not one rsgo reads ({})",
            SECRET_TYPES.join(", ")
        )));
    }
    let mut data = secret.data.take().unwrap_or_default();
    for (key, value) in secret.string_data.take().unwrap_or_default() {
        data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
    }
    if let Some(key) = data.keys().find(|k| !is_secret_key(k)) {
        return Err(refuse(&format!(
            "key '{}' is not made of letters, digits, '-', '_' and '.'",
            key.chars().take(64).collect::<String>()
        )));
    }
    secret.data = Some(data);
    Ok(secret)
}

/// A Secret's key as Kubernetes allows it.
fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Document {
    fn encode(&self) -> Result<Value> {
        match self {
            Document::Environment(o) => encode(o),
            Document::CatalogSource(o) => encode(o),
            Document::Stack(o) => encode(o),
            Document::ApiKey(o) => encode(o),
            Document::Secret(o) => encode(o),
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
            Some(old) if same_content(old, &value) => "unchanged",
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

/// Whether an applied document says what the stored one says: spec, or a Secret's data and type.
fn same_content(stored: &Value, applied: &Value) -> bool {
    CONTENT_FIELDS
        .iter()
        .all(|field| stored.get(field) == applied.get(field))
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
