//! What makes an object acceptable, checked at the store boundary in every mode: names that end up
//! as container, network, volume or workload names, and specs that rsgo can act on safely.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{ApiKey, CatalogSource, DeploymentRecord, Environment, GitSource, Stack};
use crate::{Error, Result};

/// Longest DNS-1123 label.
const LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain.
const SUBDOMAIN_MAX: usize = 253;

/// Turns a name into a DNS-1123 label: lower case, `-` for anything else, at most 63 characters.
pub fn dns_label(name: &str) -> String {
    let mapped: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    mapped
        .trim_matches('-')
        .chars()
        .take(LABEL_MAX)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// Whether `name` is a DNS-1123 label: 1 to 63 lower-case letters, digits and `-`, starting and
/// ending with a letter or digit.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= LABEL_MAX
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Whether `name` is a DNS-1123 subdomain: labels joined by dots, at most 253 characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= SUBDOMAIN_MAX && name.split('.').all(is_dns_label)
}

/// Refuses a name that is not a DNS-1123 label, saying what it names and what is allowed.
pub fn check_label(what: &str, name: &str) -> Result<(), String> {
    if is_dns_label(name) {
        return Ok(());
    }
    Err(format!(
        "{what} '{}' is not a valid name: use 1 to 63 lower-case letters, digits and '-', \
         starting and ending with a letter or digit",
        shown(name)
    ))
}

fn check_subdomain(what: &str, name: &str) -> Result<(), String> {
    if is_dns_subdomain(name) {
        return Ok(());
    }
    Err(format!(
        "{what} '{}' is not a valid name: use lower-case letters, digits, '-' and '.', \
         at most 253 characters",
        shown(name)
    ))
}

/// A name as it may appear in a message: control characters escaped, long ones cut.
fn shown(name: &str) -> String {
    let escaped: String = name.chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped,
    }
}

/// Name of a Docker object (container, network, volume) of a stack: `<environment>_<stack>_<part>`.
/// Environment and stack names are DNS labels, which never contain `_`, so no two stacks of any
/// environments can share a name.
pub fn docker_name(environment: &str, stack: &str, part: &str) -> String {
    format!("{environment}_{stack}_{part}")
}

/// The environment and the stack of a Docker object named by [`docker_name`]; `None` for a name
/// of another form.
pub fn docker_name_owner(name: &str) -> Option<(&str, &str)> {
    let (environment, rest) = name.split_once('_')?;
    let (stack, _) = rest.split_once('_')?;
    Some((environment, stack))
}

/// Checks a document about to be created or updated. Names are checked only on creation (they
/// cannot change afterwards), so an object stored before these rules can still be updated and
/// deleted.
pub fn validate_document(doc: &Value, creating: bool) -> Result<()> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let invalid = |reason: String| Error::Invalid(format!("{kind} '{}': {reason}", shown(name)));
    if creating {
        match kind {
            "Stack" | "Environment" => check_label(kind, name),
            _ => check_subdomain(kind, name),
        }
        .map_err(Error::Invalid)?;
        if !namespace.is_empty() {
            check_label("namespace", namespace).map_err(invalid)?;
        }
    }
    let spec = match kind {
        "Stack" => decode::<Stack>(doc).and_then(|s| s.validate()),
        "Environment" => decode::<Environment>(doc).and_then(|e| e.validate()),
        "ApiKey" => decode::<ApiKey>(doc).and_then(|k| k.validate()),
        "CatalogSource" => decode::<CatalogSource>(doc).and_then(|c| c.validate()),
        "DeploymentRecord" => decode::<DeploymentRecord>(doc).map(drop),
        // The audit trail is append-only: an entry is written once and never changed.
        "AuditEvent" if !creating => Err("audit events are never changed".into()),
        "AuditEvent" => decode::<crate::model::AuditEvent>(doc).map(drop),
        "Secret" => decode::<k8s_openapi::api::core::v1::Secret>(doc)
            .map(drop)
            .map_err(|_| "not a Secret".to_owned()),
        other => Err(format!("kind '{other}' is not an rsgo kind")),
    };
    spec.map_err(invalid)
}

fn decode<K: serde::de::DeserializeOwned>(doc: &Value) -> Result<K, String> {
    serde_json::from_value(doc.clone()).map_err(|e| e.to_string())
}

impl Stack {
    /// Checks the spec: the environment is a valid name, a product is named, and the version
    /// and stack, when set, are well formed.
    pub fn validate(&self) -> Result<(), String> {
        check_label("spec.environment", &self.spec.environment)?;
        if self.spec.product.trim().is_empty() {
            return Err("spec.product must name a catalog product".into());
        }
        if let Some(version) = &self.spec.version {
            crate::catalog::parse_version(version).map_err(|e| format!("spec.version: {e}"))?;
        }
        if let Some(part) = &self.spec.stack {
            crate::catalog::check_manifest_name("spec.stack", part)?;
        }
        for (name, source) in &self.spec.variables_from {
            if self.spec.variables.contains_key(name) {
                return Err(format!(
                    "variable '{}' is set in both spec.variables and spec.variablesFrom",
                    shown(name)
                ));
            }
            let secret = &source.secret_key_ref;
            check_subdomain("spec.variablesFrom secretKeyRef.name", &secret.name)?;
            if secret.key.is_empty() || secret.key.len() > 253 {
                return Err(format!(
                    "spec.variablesFrom.{}: secretKeyRef.key must be a Secret key",
                    shown(name)
                ));
            }
        }
        Ok(())
    }
}

impl Environment {
    /// Checks the spec: exactly one target, a Docker address rsgo can connect to, a valid
    /// namespace, and absolute allowed host paths.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.spec.docker, &self.spec.kubernetes) {
            (Some(_), Some(_)) => {
                return Err("set either spec.docker or spec.kubernetes, not both".into());
            }
            (None, None) => return Err("set spec.docker or spec.kubernetes".into()),
            (Some(docker), None) => {
                check_docker_host(&docker.host)?;
                check_allowed_paths(&docker.allowed_host_paths)?;
            }
            (None, Some(kubernetes)) => {
                check_label("spec.kubernetes.namespace", &kubernetes.namespace)?;
                check_allowed_paths(&kubernetes.allowed_host_paths)?;
            }
        }
        Ok(())
    }
}

/// Accepts `unix:///absolute/path.sock`, `tcp://host:port` and `http://host:port`.
fn check_docker_host(host: &str) -> Result<(), String> {
    let invalid = || {
        format!(
            "spec.docker.host '{}' is not an engine address rsgo can use: \
             write unix:///path/to/docker.sock, tcp://host:port or http://host:port",
            shown(host)
        )
    };
    if let Some(path) = host.strip_prefix("unix://") {
        return if path.starts_with('/') && !path.chars().any(char::is_control) {
            Ok(())
        } else {
            Err(invalid())
        };
    }
    let authority = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
        .ok_or_else(invalid)?
        .trim_end_matches('/');
    let (hostname, port) = authority.rsplit_once(':').ok_or_else(invalid)?;
    let hostname_ok = !hostname.is_empty()
        && hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if hostname_ok && port.parse::<u16>().is_ok_and(|p| p > 0) {
        Ok(())
    } else {
        Err(invalid())
    }
}

fn check_allowed_paths(paths: &[String]) -> Result<(), String> {
    for path in paths {
        normalize_host_path(path).map_err(|e| format!("allowedHostPaths: {e}"))?;
    }
    Ok(())
}

/// A host path with `.` and `..` resolved lexically. Refuses relative paths, and `..` that would
/// climb above the root.
pub fn normalize_host_path(path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "host path '{}' must be absolute (start with /)",
            shown(path)
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(format!(
            "host path '{}' contains control characters",
            shown(path)
        ));
    }
    let mut normalized = PathBuf::from("/");
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => normalized.push(part),
            Component::ParentDir => {
                if !normalized.pop() {
                    return Err(format!("host path '{}' climbs above /", shown(path)));
                }
            }
            Component::Prefix(_) => unreachable!("paths on Unix have no prefix"),
        }
    }
    Ok(normalized)
}

impl ApiKey {
    /// Checks the spec: a SHA-256 in lower-case hex, known permissions, a scope that is a name.
    pub fn validate(&self) -> Result<(), String> {
        let hash = &self.spec.key_hash;
        if hash.len() != 64
            || !hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(
                "spec.keyHash must be the SHA-256 of the key in lower-case hex (64 characters)"
                    .into(),
            );
        }
        crate::auth::validate_permissions(&self.spec.permissions)?;
        if let Some(environment) = &self.spec.environment {
            check_label("spec.environment", environment)?;
        }
        if self.spec.display_name.trim().is_empty() {
            return Err("spec.displayName must not be empty".into());
        }
        Ok(())
    }
}

impl CatalogSource {
    /// Checks the spec: a source says where its manifests are, in exactly one way.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.spec.directory, &self.spec.git) {
            (Some(_), Some(_)) => Err("set either spec.directory or spec.git, not both".into()),
            (None, None) => Err("set spec.directory.path or spec.git.url".into()),
            (Some(dir), None) if dir.path.starts_with('/') => Ok(()),
            (Some(dir), None) => Err(format!(
                "spec.directory.path '{}' must be absolute",
                shown(&dir.path)
            )),
            (None, Some(git)) => git.validate(),
        }
    }
}

/// The shortest `interval` a git source may have.
pub const MIN_GIT_INTERVAL: Duration = Duration::from_secs(10);

impl GitSource {
    /// Checks the URL's scheme, the ref, the path and the interval.
    pub fn validate(&self) -> Result<(), String> {
        let url = self.parsed_url()?;
        if url.password().is_some() {
            // The URL is shown in statuses and errors; a token in it would be too.
            return Err(
                "spec.git.url holds a password; put credentials in a Secret named by \
                 spec.git.secretRef"
                    .into(),
            );
        }
        use gix::url::Scheme;
        let credentials = self.secret_ref.is_some();
        match url.scheme {
            Scheme::Https => {}
            Scheme::Http if !credentials => {}
            Scheme::Http => {
                return Err(format!(
                    "spec.git.url '{}': rsgo sends credentials only over https://",
                    shown(&self.url)
                ));
            }
            Scheme::File | Scheme::Git if credentials => {
                return Err(format!(
                    "spec.git.secretRef: '{}' takes no credentials; a Secret is for https:// and \
                     ssh:// remotes",
                    shown(&self.url)
                ));
            }
            Scheme::File | Scheme::Git | Scheme::Ssh => {}
            _ => {
                return Err(format!(
                    "spec.git.url '{}' must use https://, http://, ssh://, git:// or file://",
                    shown(&self.url)
                ));
            }
        }
        if let Some(secret) = &self.secret_ref {
            check_subdomain("spec.git.secretRef.name", &secret.name)?;
        }
        if let Some(reference) = &self.reference {
            let ok = !reference.is_empty()
                && reference.len() <= 255
                && !reference.starts_with(['-', '/'])
                && !reference.ends_with('/')
                && !reference.contains("..")
                && !reference.contains("//")
                && reference
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'));
            if !ok {
                return Err(format!(
                    "spec.git.ref '{}' is not a branch, tag or commit name",
                    shown(reference)
                ));
            }
        }
        if let Some(path) = &self.path {
            let relative = Path::new(path);
            let ok = !path.is_empty()
                && relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !ok {
                return Err(format!(
                    "spec.git.path '{}' must be a folder inside the repository, such as stacks",
                    shown(path)
                ));
            }
        }
        self.interval()?;
        Ok(())
    }

    /// The URL as git reads it (`host:path` is SSH, a bare path is a local repository).
    pub fn parsed_url(&self) -> Result<gix::Url, String> {
        gix::url::parse(gix::bstr::BStr::new(self.url.as_bytes()))
            .map_err(|_| format!("spec.git.url '{}' is not a git URL", shown(&self.url)))
    }

    /// How often the source is fetched on its own, if at all.
    pub fn interval(&self) -> Result<Option<Duration>, String> {
        let Some(text) = &self.interval else {
            return Ok(None);
        };
        let interval =
            crate::duration::parse(text).map_err(|e| format!("spec.git.interval: {e}"))?;
        if interval < MIN_GIT_INTERVAL {
            return Err(format!(
                "spec.git.interval '{}' is shorter than {} s",
                shown(text),
                MIN_GIT_INTERVAL.as_secs()
            ));
        }
        Ok(Some(interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_name_tells_its_environment_and_stack() {
        let name = docker_name("prod", "shop", "default");
        assert_eq!(docker_name_owner(&name), Some(("prod", "shop")));
        let standby = docker_name("prod", "shop", "_web");
        assert_eq!(docker_name_owner(&standby), Some(("prod", "shop")));
        assert_eq!(docker_name_owner("shop_default"), None, "an older name");
        assert_eq!(docker_name_owner("bridge"), None);
    }

    #[test]
    fn labels_and_subdomains() {
        for good in ["a", "shop", "shop-1", "0", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "../../etc/evil",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("dir-1a2b.example"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain(&"a.".repeat(127)));
    }

    #[test]
    fn dns_label_maps_any_name() {
        assert_eq!(dns_label("My_Stack.v2"), "my-stack-v2");
        assert_eq!(dns_label(&"a".repeat(70)).len(), 63);
        assert_eq!(dns_label(&("x".repeat(62) + "-b")), "x".repeat(62));
    }

    #[test]
    fn messages_escape_and_shorten_names() {
        let err = check_label("Stack", "a\nb").unwrap_err();
        assert!(err.contains("a\\nb"), "{err}");
        let err = check_label("Stack", &"x".repeat(500)).unwrap_err();
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn host_paths_normalize_lexically() {
        assert_eq!(
            normalize_host_path("/srv/data/./x/../y").unwrap(),
            PathBuf::from("/srv/data/y")
        );
        assert_eq!(normalize_host_path("/srv/..").unwrap(), PathBuf::from("/"));
        assert!(normalize_host_path("/..").is_err());
        assert!(normalize_host_path("data").is_err());
        assert!(normalize_host_path("./data").is_err());
        assert!(normalize_host_path("~/data").is_err());
    }

    #[test]
    fn docker_hosts() {
        for good in [
            "unix:///var/run/docker.sock",
            "tcp://127.0.0.1:2375",
            "http://docker.internal:2375",
            "tcp://[::1]:2375",
        ] {
            assert!(check_docker_host(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://x:1",
            "unix://relative.sock",
            "tcp://host",
            "tcp://:2375",
            "tcp://h:0",
            "https://h:1",
            "/var/run/docker.sock",
        ] {
            assert!(check_docker_host(bad).is_err(), "{bad}");
        }
    }
}
