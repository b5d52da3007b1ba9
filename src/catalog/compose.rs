//! docker-compose products: a folder with a compose file, an optional override file merged over
//! it, and `.env` defaults, read into the same stack definition an RSGo manifest makes. Every
//! key rsgo cannot honour is reported by name; none is read and then ignored.

use std::collections::{BTreeMap, BTreeSet};

use semver::Version;
use serde_yaml_ng::{Mapping, Value};

use super::manifest::{Command, HealthCheck, Scalar, Service, Variable};
use super::{ManifestProblem, Metadata, parse_version};

/// Names of the compose file, in the order compose looks for them.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Names of the override file merged over it.
pub const OVERRIDE_FILES: [&str; 4] = [
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

/// What a compose folder holds, as text.
pub struct ComposeFiles<'a> {
    /// The folder's name: the product id when neither `x-rsgo.name` nor `name` gives one.
    pub folder: &'a str,
    /// The compose file.
    pub main: &'a str,
    /// The override file, if any.
    pub overrides: Option<&'a str>,
    /// `.env`, if any: the variables' defaults.
    pub env: Option<&'a str>,
    /// `VERSION`, if any: the version when `x-rsgo.version` gives none.
    pub version: Option<&'a str>,
}

/// What a compose product defines, before the stack's declarations are checked like a
/// manifest's.
#[derive(Debug)]
pub struct ComposeProduct {
    /// Product id.
    pub product: String,
    /// Its version.
    pub version: Version,
    /// Name, description, category and tags.
    pub metadata: Metadata,
    /// Declared variables: `.env` entries and every variable the files use.
    pub variables: BTreeMap<String, Variable>,
    /// The services.
    pub services: BTreeMap<String, Service>,
    /// Declared volumes.
    pub volumes: BTreeMap<String, Value>,
    /// Declared networks.
    pub networks: BTreeMap<String, Value>,
}

fn field(name: impl Into<String>, reason: impl Into<String>) -> ManifestProblem {
    ManifestProblem::field(name, reason)
}

/// Reads a compose product.
pub fn parse_compose(files: &ComposeFiles<'_>) -> Result<ComposeProduct, ManifestProblem> {
    let yaml = |text: &str, which: &str| -> Result<Value, ManifestProblem> {
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
                .unwrap_or_default();
            field(which, format!("{at}not valid YAML"))
        })?;
        match value {
            Value::Mapping(_) => Ok(value),
            _ => Err(field(which, "is not a mapping of compose keys")),
        }
    };
    let mut document = yaml(files.main, "compose file")?;
    if let Some(overrides) = files.overrides {
        let overrides = yaml(overrides, "override file")?;
        merge(&mut document, overrides, None);
    }
    let Value::Mapping(top) = document else {
        unreachable!("checked to be a mapping above")
    };
    let mut unsupported = Vec::new();
    let mut meta = Mapping::new();
    let (mut services, mut volumes, mut networks, mut name) = (None, None, None, None);
    for (key, value) in top {
        let key = key_text(&key);
        match key.as_str() {
            "services" => services = Some(value),
            "volumes" => volumes = Some(value),
            "networks" => networks = Some(value),
            "name" => name = value.as_str().map(str::to_owned),
            // Obsolete in the compose spec, and ignored by compose itself.
            "version" => {}
            "x-rsgo" => match value {
                Value::Mapping(map) => meta = map,
                _ => return Err(field("x-rsgo", "must be a mapping")),
            },
            other if other.starts_with("x-") => {}
            other => unsupported.push(other.to_owned()),
        }
    }
    let mut variables = env_defaults(files.env)?;
    let mut used = Uses::default();
    let mut parsed = BTreeMap::new();
    let services = match services {
        Some(Value::Mapping(services)) => services,
        _ => return Err(field("services", "the compose file defines no services")),
    };
    let mut completes = BTreeSet::new();
    for (key, value) in services {
        let name = key_text(&key);
        let service = service(&name, value, &mut used, &mut unsupported, &mut completes)?;
        parsed.insert(name, service);
    }
    for name in completes {
        if let Some(service) = parsed.get_mut(&name) {
            service.lifecycle = Some(super::plan::Lifecycle::Init);
        }
    }
    if !unsupported.is_empty() {
        return Err(field(
            "compose",
            format!(
                "keys rsgo cannot honour: {}; remove them, or deploy this project with docker compose",
                unsupported.join(", ")
            ),
        ));
    }
    if let Some(name) = parsed
        .iter()
        .find(|(_, s)| s.image.is_empty())
        .map(|(n, _)| n)
    {
        return Err(field(
            format!("services.{name}.image"),
            "is required: rsgo runs images and does not build them (build in the pipeline and push)",
        ));
    }
    for (name, required) in used.names {
        variables.entry(name).or_insert(Variable {
            required,
            ..Default::default()
        });
    }
    let (product, version, metadata) = identity(files, name, meta)?;
    Ok(ComposeProduct {
        product,
        version,
        metadata,
        variables,
        services: parsed,
        volumes: declarations("volumes", volumes)?,
        networks: declarations("networks", networks)?,
    })
}

/// The product id, version and metadata: `x-rsgo` first, then compose's `name` and the folder,
/// and the `VERSION` file.
fn identity(
    files: &ComposeFiles<'_>,
    name: Option<String>,
    meta: Mapping,
) -> Result<(String, Version, Metadata), ManifestProblem> {
    let mut metadata = Metadata {
        name: name.unwrap_or_else(|| files.folder.to_owned()),
        ..Default::default()
    };
    let mut version = files.version.map(|v| v.trim().to_owned());
    for (key, value) in meta {
        let key = key_text(&key);
        let text = || {
            scalar(&value)
                .map(|s| s.0)
                .ok_or_else(|| field(format!("x-rsgo.{key}"), "must be a string"))
        };
        match key.as_str() {
            "name" => metadata.name = text()?,
            "version" => version = Some(text()?),
            "description" => metadata.description = Some(text()?),
            "category" => metadata.category = Some(text()?),
            "tags" => {
                metadata.tags = serde_yaml_ng::from_value(value)
                    .map_err(|_| field("x-rsgo.tags", "must be a list of strings"))?
            }
            other => {
                return Err(field(
                    format!("x-rsgo.{other}"),
                    "is not an rsgo key (name, version, description, category, tags)",
                ));
            }
        }
    }
    let version = version.ok_or_else(|| {
        field(
            "x-rsgo.version",
            "a compose product needs a version: set x-rsgo.version or add a VERSION file",
        )
    })?;
    let parsed = parse_version(&version).map_err(|e| field("x-rsgo.version", e))?;
    metadata.product_version = Some(Scalar(version));
    Ok((metadata.name.clone(), parsed, metadata))
}

/// `.env` lines `NAME=value` (optionally `export NAME=value`, values optionally quoted) as
/// variables with defaults.
fn env_defaults(env: Option<&str>) -> Result<BTreeMap<String, Variable>, ManifestProblem> {
    let mut variables = BTreeMap::new();
    for (number, line) in env.unwrap_or_default().lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| field(".env", format!("line {} is not NAME=value", number + 1)))?;
        let name = name.trim();
        if !is_variable_name(name) {
            return Err(field(
                ".env",
                format!("line {}: not a variable name", number + 1),
            ));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| {
                value
                    .strip_prefix(*q)
                    .and_then(|v| v.strip_suffix(*q))
                    .filter(|_| value.len() >= 2)
            })
            .unwrap_or(value);
        variables.insert(
            name.to_owned(),
            Variable {
                default: Some(Scalar(value.to_owned())),
                ..Default::default()
            },
        );
    }
    Ok(variables)
}

fn is_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The variables compose interpolation uses, and whether each must be set.
#[derive(Default)]
struct Uses {
    names: BTreeMap<String, bool>,
}

impl Uses {
    /// Rewrites compose interpolation into rsgo's (`$VAR` and `${VAR-d}` become `${VAR}` and
    /// `${VAR:-d}`; `${VAR?msg}` and `${VAR:?msg}` make VAR required) and records each name.
    fn interpolate(&mut self, at: &str, text: &str) -> Result<String, ManifestProblem> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push_str("$$");
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| field(at, "has an unclosed '${'"))?;
                let expr = &body[..end];
                let split = expr
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(expr.len());
                let (name, op) = expr.split_at(split);
                if !is_variable_name(name) {
                    return Err(field(at, "uses a variable without a valid name"));
                }
                if op.contains('$') {
                    return Err(field(
                        at,
                        format!(
                            "nests a variable in the default of ${{{name}}}, which rsgo does not support"
                        ),
                    ));
                }
                let required = match op {
                    "" => false,
                    _ if op.starts_with(":?") || op.starts_with('?') => true,
                    _ if op.starts_with(":-") => {
                        out.push_str(&format!("${{{name}{op}}}"));
                        self.names.entry(name.to_owned()).or_insert(false);
                        rest = &body[end + 1..];
                        continue;
                    }
                    _ if op.starts_with('-') => {
                        out.push_str(&format!("${{{name}:{op}}}"));
                        self.names.entry(name.to_owned()).or_insert(false);
                        rest = &body[end + 1..];
                        continue;
                    }
                    _ => {
                        return Err(field(
                            at,
                            format!(
                                "uses '${{{name}{}...}}', which rsgo does not support (use ${{{name}}} or ${{{name}:-default}})",
                                op.chars().take(2).collect::<String>()
                            ),
                        ));
                    }
                };
                out.push_str(&format!("${{{name}}}"));
                let entry = self.names.entry(name.to_owned()).or_insert(false);
                *entry |= required;
                rest = &body[end + 1..];
            } else {
                let len = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                let name = &after[..len];
                if is_variable_name(name) {
                    out.push_str(&format!("${{{name}}}"));
                    self.names.entry(name.to_owned()).or_insert(false);
                } else {
                    out.push('$');
                    out.push_str(name);
                }
                rest = &after[len..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A scalar of `value`, interpolated.
    fn text(&mut self, at: &str, value: &Value) -> Result<String, ManifestProblem> {
        let scalar =
            scalar(value).ok_or_else(|| field(at, "must be a string, number or boolean"))?;
        self.interpolate(at, &scalar.0)
    }
}

fn key_text(key: &Value) -> String {
    scalar(key).map(|s| s.0).unwrap_or_default()
}

fn scalar(value: &Value) -> Option<Scalar> {
    match value {
        Value::String(s) => Some(Scalar(s.clone())),
        Value::Number(n) => Some(Scalar(n.to_string())),
        Value::Bool(b) => Some(Scalar(b.to_string())),
        Value::Null => Some(Scalar(String::new())),
        _ => None,
    }
}

/// A list, or a mapping's keys (`depends_on`, `networks` in their long forms).
fn names(at: &str, value: &Value) -> Result<Vec<(String, Value)>, ManifestProblem> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                scalar(item)
                    .map(|s| (s.0, Value::Null))
                    .ok_or_else(|| field(at, "must list names"))
            })
            .collect(),
        Value::Mapping(map) => Ok(map.iter().map(|(k, v)| (key_text(k), v.clone())).collect()),
        _ => Err(field(at, "must be a list or a mapping")),
    }
}

/// `environment` and `labels`: a mapping, or a list of `NAME=value`.
fn pairs(
    at: &str,
    value: &Value,
    used: &mut Uses,
) -> Result<BTreeMap<String, Scalar>, ManifestProblem> {
    let mut out = BTreeMap::new();
    match value {
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key_text(key);
                let value = used.text(&format!("{at}.{key}"), value)?;
                out.insert(key, Scalar(value));
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let item = used.text(at, item)?;
                let (key, value) = item.split_once('=').unwrap_or((&item, ""));
                out.insert(key.to_owned(), Scalar(value.to_owned()));
            }
        }
        Value::Null => {}
        _ => return Err(field(at, "must be a mapping or a list of NAME=value")),
    }
    Ok(out)
}

/// A command as a string (split like a shell) or a list.
fn command(at: &str, value: &Value, used: &mut Uses) -> Result<Command, ManifestProblem> {
    match value {
        Value::Sequence(items) => Ok(Command::Args(
            items
                .iter()
                .map(|item| used.text(at, item))
                .collect::<Result<_, _>>()?,
        )),
        other => Ok(Command::Line(used.text(at, other)?)),
    }
}

/// One compose service as an rsgo service (its image checked by the caller). Keys rsgo cannot
/// honour go to `unsupported`;
/// services others wait for with `service_completed_successfully` go to `completes`.
fn service(
    name: &str,
    value: Value,
    used: &mut Uses,
    unsupported: &mut Vec<String>,
    completes: &mut BTreeSet<String>,
) -> Result<Service, ManifestProblem> {
    let Value::Mapping(map) = value else {
        return Err(field(format!("services.{name}"), "must be a mapping"));
    };
    let mut service = Service::default();
    for (key, value) in map {
        let key = key_text(&key);
        let at = format!("services.{name}.{key}");
        match key.as_str() {
            "image" => service.image = used.text(&at, &value)?,
            "command" => service.command = Some(command(&at, &value, used)?),
            "entrypoint" => service.entrypoint = Some(command(&at, &value, used)?),
            "environment" => service.environment = pairs(&at, &value, used)?,
            "labels" => service.labels = pairs(&at, &value, used)?,
            "working_dir" => service.working_dir = Some(used.text(&at, &value)?),
            "user" => service.user = Some(used.text(&at, &value)?),
            "restart" => {
                let text = used.text(&at, &value)?;
                service.restart = Some(
                    serde_yaml_ng::from_value(Value::String(text.clone())).map_err(|_| {
                        field(
                            &at,
                            format!(
                                "'{text}' is not one of no, always, unless-stopped, on-failure"
                            ),
                        )
                    })?,
                );
            }
            "ports" => {
                let Value::Sequence(items) = value else {
                    return Err(field(at, "must be a list"));
                };
                for item in items {
                    service.ports.push(Scalar(port(&at, &item, used)?));
                }
            }
            "volumes" => {
                let Value::Sequence(items) = value else {
                    return Err(field(at, "must be a list"));
                };
                for item in items {
                    service.volumes.push(mount(&at, &item, used)?);
                }
            }
            "networks" => {
                for (network, options) in names(&at, &value)? {
                    if !is_empty(&options) {
                        unsupported.push(format!("{at}.{network} (aliases and addresses)"));
                    }
                    service.networks.push(network);
                }
            }
            "depends_on" => {
                for (dependency, options) in names(&at, &value)? {
                    match options.get("condition").and_then(Value::as_str) {
                        None | Some("service_started" | "service_healthy") => {}
                        Some("service_completed_successfully") => {
                            completes.insert(dependency.clone());
                        }
                        Some(_) => {
                            return Err(field(
                                format!("{at}.{dependency}.condition"),
                                "is not service_started, service_healthy or service_completed_successfully",
                            ));
                        }
                    }
                    service.depends_on.push(dependency);
                }
            }
            "healthcheck" => service.health_check = health(&at, &value, used, unsupported)?,
            "container_name" => unsupported.push(format!(
                "{at} (rsgo names containers after the environment, stack and service)"
            )),
            other if other.starts_with("x-") => {}
            _ => unsupported.push(at),
        }
    }
    Ok(service)
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Mapping(map) => map.is_empty(),
        _ => false,
    }
}

/// A port in the short (`"8080:80/udp"`) or long (`{target, published, host_ip, protocol}`)
/// syntax, as rsgo writes it.
fn port(at: &str, value: &Value, used: &mut Uses) -> Result<String, ManifestProblem> {
    let Value::Mapping(map) = value else {
        return used.text(at, value);
    };
    let get = |key: &str, used: &mut Uses| -> Result<Option<String>, ManifestProblem> {
        map.get(key)
            .map(|v| used.text(&format!("{at}.{key}"), v))
            .transpose()
    };
    for key in map.keys().map(key_text) {
        if !["target", "published", "host_ip", "protocol", "mode", "name"].contains(&key.as_str()) {
            return Err(field(
                format!("{at}.{key}"),
                "is not a port key rsgo honours",
            ));
        }
    }
    let target =
        get("target", used)?.ok_or_else(|| field(at, "a long-syntax port needs target"))?;
    let mut spec = match (get("host_ip", used)?, get("published", used)?) {
        (Some(ip), Some(published)) => format!("{ip}:{published}:{target}"),
        (None, Some(published)) => format!("{published}:{target}"),
        (_, None) => target,
    };
    if let Some(protocol) = get("protocol", used)? {
        spec = format!("{spec}/{protocol}");
    }
    Ok(spec)
}

/// A volume in the short (`name:/path:ro`) or long (`{type, source, target, read_only}`)
/// syntax, as rsgo writes it. Relative bind mounts would point into the catalog, so they are
/// refused.
fn mount(at: &str, value: &Value, used: &mut Uses) -> Result<String, ManifestProblem> {
    let spec = match value {
        Value::Mapping(map) => {
            let text = |key: &str, used: &mut Uses| -> Result<Option<String>, ManifestProblem> {
                map.get(key)
                    .map(|v| used.text(&format!("{at}.{key}"), v))
                    .transpose()
            };
            for key in map.keys().map(key_text) {
                if !["type", "source", "target", "read_only"].contains(&key.as_str()) {
                    return Err(field(
                        format!("{at}.{key}"),
                        "is not a volume key rsgo honours",
                    ));
                }
            }
            match text("type", used)?.as_deref() {
                Some("volume" | "bind") => {}
                _ => return Err(field(at, "only volume and bind mounts are supported")),
            }
            let source =
                text("source", used)?.ok_or_else(|| field(at, "a mount needs a source"))?;
            let target =
                text("target", used)?.ok_or_else(|| field(at, "a mount needs a target"))?;
            let read_only = text("read_only", used)?.is_some_and(|r| r == "true");
            format!("{source}:{target}{}", if read_only { ":ro" } else { "" })
        }
        other => used.text(at, other)?,
    };
    if spec.starts_with('.') || spec.starts_with('~') {
        return Err(field(
            at,
            "a relative bind mount would point into the catalog; mount an absolute host path or a named volume",
        ));
    }
    Ok(spec)
}

/// A compose `healthcheck` as rsgo's: `test` as `CMD` arguments, a `CMD-SHELL` line or a string;
/// `NONE` or `disable: true` turn it off.
fn health(
    at: &str,
    value: &Value,
    used: &mut Uses,
    unsupported: &mut Vec<String>,
) -> Result<Option<HealthCheck>, ManifestProblem> {
    let Value::Mapping(map) = value else {
        return Err(field(at, "must be a mapping"));
    };
    let mut check = HealthCheck::default();
    for (key, value) in map {
        let key = key_text(key);
        let here = format!("{at}.{key}");
        match key.as_str() {
            "disable" if value.as_bool() == Some(true) => return Ok(None),
            "disable" => {}
            "test" => {
                check.test = match value {
                    Value::Sequence(items) => {
                        let words: Vec<String> = items
                            .iter()
                            .map(|item| used.text(&here, item))
                            .collect::<Result<_, _>>()?;
                        match words.split_first() {
                            Some((kind, _)) if kind == "NONE" => return Ok(None),
                            Some((kind, args)) if kind == "CMD" => {
                                Some(Command::Args(args.to_vec()))
                            }
                            Some((kind, [line])) if kind == "CMD-SHELL" => {
                                Some(Command::Line(line.clone()))
                            }
                            _ => {
                                return Err(field(
                                    here,
                                    "must start with CMD, CMD-SHELL (one line) or NONE",
                                ));
                            }
                        }
                    }
                    other => Some(Command::Line(used.text(&here, other)?)),
                }
            }
            "interval" => check.interval = Some(Scalar(used.text(&here, value)?)),
            "timeout" => check.timeout = Some(Scalar(used.text(&here, value)?)),
            "retries" => check.retries = Some(Scalar(used.text(&here, value)?)),
            "start_period" => check.start_period = Some(Scalar(used.text(&here, value)?)),
            _ => unsupported.push(here),
        }
    }
    Ok(Some(check))
}

/// Top-level `volumes` or `networks`: names with empty declarations (options are refused when
/// the stack is checked, like a manifest's).
fn declarations(
    key: &str,
    value: Option<Value>,
) -> Result<BTreeMap<String, Value>, ManifestProblem> {
    match value {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Mapping(map)) => Ok(map.into_iter().map(|(k, v)| (key_text(&k), v)).collect()),
        Some(_) => Err(field(key, "must be a mapping")),
    }
}

/// Merges an override document over a compose document: mappings merge key by key,
/// `environment` and `labels` by name (list or mapping), `ports` add up, service `volumes` merge
/// by target path, anything else is replaced.
fn merge(base: &mut Value, over: Value, key: Option<&str>) {
    match (key, base, over) {
        (Some("environment" | "labels"), base, over) => {
            let mut merged = as_map(base);
            for (k, v) in as_map(&over) {
                merged.insert(k, v);
            }
            *base = Value::Mapping(merged);
        }
        (Some("ports"), Value::Sequence(base), Value::Sequence(over)) => {
            for port in over {
                if !base.contains(&port) {
                    base.push(port);
                }
            }
        }
        (Some("volumes"), Value::Sequence(base), Value::Sequence(over)) => {
            for volume in over {
                let target = mount_target(&volume);
                base.retain(|v| target.is_none() || mount_target(v) != target);
                base.push(volume);
            }
        }
        (_, Value::Mapping(base), Value::Mapping(over)) => {
            for (k, v) in over {
                let name = key_text(&k);
                match base.get_mut(&k) {
                    Some(existing) => merge(existing, v, Some(&name)),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (_, base, over) => *base = over,
    }
}

/// `environment` or `labels` in either form, as a mapping.
fn as_map(value: &Value) -> Mapping {
    match value {
        Value::Mapping(map) => map.clone(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(|item| item.as_str())
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (Value::String(k.to_owned()), Value::String(v.to_owned()))
            })
            .collect(),
        _ => Mapping::new(),
    }
}

/// The container path of a mount in either syntax.
fn mount_target(value: &Value) -> Option<String> {
    match value {
        Value::Mapping(map) => map.get("target").and_then(Value::as_str).map(str::to_owned),
        Value::String(spec) => spec.split(':').nth(1).map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(
        main: &str,
        overrides: Option<&str>,
        env: Option<&str>,
    ) -> Result<ComposeProduct, String> {
        parse_compose(&ComposeFiles {
            folder: "shop",
            main,
            overrides,
            env,
            version: Some("2.1.0\n"),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn overrides_merge_and_env_gives_defaults() {
        let main = r#"
services:
  web:
    image: "registry.local/web:${TAG}"
    environment: [MODE=prod, "GREETING=hi $NAME"]
    ports: ["8080:80"]
    volumes: ["data:/data", "logs:/logs"]
    depends_on:
      migrate: {condition: service_completed_successfully}
      db: {condition: service_healthy}
    healthcheck: {test: ["CMD-SHELL", "wget -q -O- localhost"], interval: 5s, retries: 2}
  migrate:
    image: registry.local/migrate
    command: ["migrate", "--to", "${SCHEMA:-latest}"]
  db:
    image: registry.local/db
    healthcheck: {test: [CMD, pg_isready]}
volumes:
  data: {}
  logs:
x-notes: ignored by everyone
"#;
        let overrides = r#"
services:
  web:
    environment: {MODE: dev}
    ports: [{target: 81, published: 9090, host_ip: 127.0.0.1, protocol: udp}]
    volumes: [{type: volume, source: fresh, target: /data, read_only: true}]
"#;
        let env = "# defaults\nTAG=1.2\nexport NAME='world'\n";
        let p = product(main, Some(overrides), Some(env)).unwrap();
        assert_eq!(
            (p.product.as_str(), p.version.to_string()),
            ("shop", "2.1.0".into())
        );
        let web = &p.services["web"];
        assert_eq!(web.image, "registry.local/web:${TAG}");
        assert_eq!(web.environment["MODE"].0, "dev");
        assert_eq!(web.environment["GREETING"].0, "hi ${NAME}");
        assert_eq!(
            web.ports.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
            ["8080:80", "127.0.0.1:9090:81/udp"]
        );
        assert_eq!(web.volumes, ["logs:/logs", "fresh:/data:ro"]);
        assert_eq!(web.depends_on, ["migrate", "db"]);
        assert_eq!(
            web.health_check.as_ref().unwrap().test,
            Some(Command::Line("wget -q -O- localhost".into()))
        );
        assert_eq!(
            p.services["migrate"].lifecycle,
            Some(super::super::plan::Lifecycle::Init)
        );
        assert_eq!(p.variables["TAG"].default, Some(Scalar("1.2".into())));
        assert_eq!(p.variables["NAME"].default, Some(Scalar("world".into())));
        assert!(p.variables["SCHEMA"].default.is_none() && !p.variables["SCHEMA"].required);
        assert_eq!(p.volumes.keys().collect::<Vec<_>>(), ["data", "logs"]);
    }

    #[test]
    fn keys_rsgo_cannot_honour_are_all_named() {
        let main = "services:\n  web:\n    image: x\n    privileged: true\n    cap_add: [NET_ADMIN]\n    container_name: fixed\n    networks: {front: {aliases: [w]}}\n    healthcheck: {test: [CMD, t], start_interval: 1s}\n  job:\n    build: .\n    image: y\nsecrets:\n  token: {file: ./token}\n";
        let err = product(main, None, None).unwrap_err();
        for key in [
            "services.web.privileged",
            "services.web.cap_add",
            "services.web.container_name",
            "services.web.networks.front",
            "services.web.healthcheck.start_interval",
            "services.job.build",
            "secrets",
        ] {
            assert!(err.contains(key), "{key} in {err}");
        }
        assert!(
            err.starts_with("compose: keys rsgo cannot honour: "),
            "{err}"
        );
    }

    #[test]
    fn identity_interpolation_and_mounts_are_checked() {
        let named = parse_compose(&ComposeFiles {
            folder: "folder",
            main: "name: shop\nx-rsgo: {name: boutique, version: 3.0.0-rc.1, tags: [web]}\nservices: {web: {image: x}}\n",
            overrides: None,
            env: None,
            version: None,
        })
        .map_err(|e| e.to_string())
        .unwrap();
        assert_eq!(named.product, "boutique");
        assert_eq!(named.version.to_string(), "3.0.0-rc.1");
        assert_eq!(named.metadata.tags, ["web"]);
        let unversioned = parse_compose(&ComposeFiles {
            folder: "folder",
            main: "services: {web: {image: x}}\n",
            overrides: None,
            env: None,
            version: None,
        })
        .map_err(|e| e.to_string())
        .unwrap_err();
        assert!(
            unversioned.contains("set x-rsgo.version or add a VERSION file"),
            "{unversioned}"
        );
        let required = product(
            "services: {web: {image: 'x:${TAG:?set TAG}'}}\n",
            None,
            None,
        )
        .unwrap();
        assert!(required.variables["TAG"].required);
        assert_eq!(required.services["web"].image, "x:${TAG}");
        let nested = product(
            "services: {web: {image: 'x:${TAG:-${DEFAULT_TAG}}'}}\n",
            None,
            None,
        )
        .unwrap_err();
        assert!(
            nested.contains("nests a variable in the default of ${TAG}"),
            "{nested}"
        );
        let alt = product("services: {web: {image: 'x:${TAG:+y}'}}\n", None, None).unwrap_err();
        assert!(alt.contains("rsgo does not support"), "{alt}");
        let relative = product(
            "services: {web: {image: x, volumes: ['./data:/data']}}\n",
            None,
            None,
        )
        .unwrap_err();
        assert!(
            relative.contains("services.web.volumes: a relative bind mount"),
            "{relative}"
        );
        let built = product("services: {web: {build: .}}\n", None, None).unwrap_err();
        assert!(built.contains("services.web.build"), "{built}");
        let env = product("services: {web: {image: x}}\n", None, Some("NOT A LINE\n")).unwrap_err();
        assert_eq!(env, ".env: line 1 is not NAME=value");
        let escaped = product(
            "services: {web: {image: x, command: 'echo $$HOME $1'}}\n",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            escaped.services["web"].command,
            Some(Command::Line("echo $$HOME $1".into()))
        );
    }
}
