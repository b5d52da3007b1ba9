//! Turns a product version plus a stack's variables into its [`StackPlan`]. Pure except for
//! resolving symbolic links of host paths (see [`HostAccess`]).

use std::collections::BTreeMap;

use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::error::RenderError;
use super::health::health_plan;
use super::manifest::Command;
use super::plan::{
    ContainerPlan, DEFAULT_NETWORK, Lifecycle, Mount, MountSource, PortBinding, Protocol, StackPlan,
};
use super::policy::HostAccess;
use super::variables::{resolve_variables, substitute};
use super::{ProductVersion, StackDefinition};
use crate::model::{Environment, SecretKeyRef};

/// Label prefixes rsgo uses on what it creates; a manifest may not set labels under them.
pub const RESERVED_LABEL_PREFIXES: [&str; 2] = ["io.rsgo.", "rsgo.io/"];

/// Splits a command line like a POSIX shell would (quotes and backslashes honoured, nothing
/// expanded).
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    shlex::split(line).ok_or_else(|| format!("unbalanced quote in command '{line}'"))
}

fn parse_port(spec: &str) -> Result<PortBinding, String> {
    let (spec, protocol) = match spec.rsplit_once('/') {
        Some((spec, "tcp")) => (spec, Protocol::Tcp),
        Some((spec, "udp")) => (spec, Protocol::Udp),
        Some((_, proto)) => return Err(format!("port '{spec}': unknown protocol '{proto}'")),
        None => (spec, Protocol::Tcp),
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("port '{spec}': '{p}' is not a port number"))
    };
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [container] => (None, None, port(container)?),
        [container, host] => (None, Some(port(host)?), port(container)?),
        [container, host, ip] => (
            Some(ip.trim_matches(['[', ']']).to_owned()),
            Some(port(host)?),
            port(container)?,
        ),
        _ => unreachable!("rsplitn(3) yields one to three parts"),
    };
    Ok(PortBinding {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

/// Parses `name:/path[:ro|rw]` or `/host/path:/path[:ro|rw]`. A source starting with `/`, `.`
/// or `~` is a host path (checked against the Environment by the caller); anything else is a
/// named volume, whose name must be a manifest name.
fn parse_mount(spec: &str) -> Result<Mount, String> {
    let invalid =
        || format!("volume '{spec}': expected 'name:/path[:ro]' or '/host/path:/path[:ro]'");
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        _ => return Err(invalid()),
    };
    if source.is_empty() || !target.starts_with('/') {
        return Err(invalid());
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(mode) => {
            return Err(format!(
                "volume '{spec}': unknown mode '{mode}', use ro or rw"
            ));
        }
    };
    let source = if source.starts_with(['/', '.', '~']) {
        MountSource::Host(source.to_owned())
    } else {
        super::check_manifest_name("volume", source)?;
        MountSource::Volume(source.to_owned())
    };
    Ok(Mount {
        source,
        target: target.to_owned(),
        read_only,
    })
}

/// A command or entrypoint: a list is taken as is; a line is split like a shell would, after
/// its variables are substituted.
fn command_args(
    command: &Option<Command>,
    vars: &BTreeMap<String, String>,
) -> Result<Option<Vec<String>>, String> {
    match command {
        None => Ok(None),
        Some(Command::Line(line)) => Ok(Some(split_command(&substitute(line, vars)?)?)),
        Some(Command::Args(args)) => args
            .iter()
            .map(|a| substitute(a, vars))
            .collect::<Result<_, _>>()
            .map(Some),
    }
}

/// Orders services so that each comes after the ones it depends on.
fn dependency_order(definition: &StackDefinition) -> Result<Vec<&str>, String> {
    let services = &definition.services;
    let mut order: Vec<&str> = Vec::with_capacity(services.len());
    let mut visiting = Vec::new();
    fn visit<'a>(
        name: &'a str,
        services: &'a BTreeMap<String, super::manifest::Service>,
        order: &mut Vec<&'a str>,
        visiting: &mut Vec<&'a str>,
    ) -> Result<(), String> {
        if order.contains(&name) {
            return Ok(());
        }
        if visiting.contains(&name) {
            return Err(format!(
                "services depend on each other in a cycle: {} -> {name}",
                visiting.join(" -> ")
            ));
        }
        let (key, service) = services
            .get_key_value(name)
            .ok_or_else(|| format!("dependsOn names unknown service '{name}'"))?;
        visiting.push(key);
        for dep in &service.depends_on {
            visit(dep, services, order, visiting)?;
        }
        visiting.pop();
        order.push(key);
        Ok(())
    }
    for name in services.keys() {
        visit(name, services, &mut order, &mut visiting)?;
    }
    Ok(order)
}

/// Renders one service.
/// The service's networks: the stack's default one first, then those it names, which the
/// manifest must declare.
fn networks(
    service: &super::manifest::Service,
    definition: &StackDefinition,
) -> Result<Vec<String>, String> {
    let mut networks = vec![DEFAULT_NETWORK.to_owned()];
    for extra in service.networks.iter().filter(|n| *n != DEFAULT_NETWORK) {
        if !definition.networks.contains(extra) {
            return Err(format!("network '{extra}' is not declared under networks"));
        }
        networks.push(extra.clone());
    }
    Ok(networks)
}

fn container(
    name: &str,
    service: &super::manifest::Service,
    definition: &StackDefinition,
    version: &str,
    inputs: &Inputs<'_>,
    access: &HostAccess,
) -> Result<ContainerPlan, RenderError> {
    let vars = &inputs.vars;
    // Every error says which field of which service it is about.
    let field = |field: &'static str| {
        move |reason: String| RenderError::Service {
            service: name.to_owned(),
            field,
            reason,
        }
    };
    let text = |f: &'static str, t: &str| substitute(t, vars).map_err(field(f));
    let image = text("image", &service.image)?;
    if image.trim().is_empty() {
        return Err(field("image")("image is empty".into()));
    }
    let mut env = BTreeMap::new();
    let mut secret_env = BTreeMap::new();
    for (key, value) in &service.environment {
        env.insert(key.clone(), text("environment", &value.0)?);
        let whole = value
            .0
            .trim()
            .strip_prefix("${")
            .and_then(|v| v.strip_suffix('}'));
        if let Some(secret) = whole.and_then(|name| inputs.secrets.get(name)) {
            secret_env.insert(key.clone(), secret.clone());
        }
    }
    let mut ports = Vec::new();
    for port in &service.ports {
        ports.push(parse_port(&text("ports", &port.0)?).map_err(field("ports"))?);
    }
    let mut mounts = Vec::new();
    for volume in &service.volumes {
        let mount = parse_mount(&text("volumes", volume)?).map_err(field("volumes"))?;
        if let MountSource::Host(path) = &mount.source {
            access.check(name, path)?;
        }
        mounts.push(mount);
    }
    let networks = networks(service, definition).map_err(field("networks"))?;
    let mut labels = BTreeMap::new();
    for (key, value) in &service.labels {
        if RESERVED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Err(field("labels")(format!(
                "label '{key}' is reserved for rsgo"
            )));
        }
        labels.insert(key.clone(), text("labels", &value.0)?);
    }
    let optional =
        |f: &'static str, t: &Option<String>| t.as_deref().map(|t| text(f, t)).transpose();
    let lifecycle = service.lifecycle.unwrap_or_default();
    let health = service.health_check.as_ref();
    let mut plan = ContainerPlan {
        service: name.to_owned(),
        image,
        env,
        command: command_args(&service.command, vars).map_err(field("command"))?,
        entrypoint: command_args(&service.entrypoint, vars).map_err(field("entrypoint"))?,
        working_dir: optional("workingDir", &service.working_dir)?,
        user: optional("user", &service.user)?,
        ports,
        mounts,
        // A one-shot container is never restarted.
        restart: match lifecycle {
            Lifecycle::Init => Default::default(),
            Lifecycle::Service => service.restart.unwrap_or_default(),
        },
        lifecycle,
        health: health
            .map(|c| health_plan(c, vars))
            .transpose()
            .map_err(field("healthCheck"))?,
        depends_on: service.depends_on.clone(),
        networks,
        labels,
        secret_env,
        spec_hash: String::new(),
    };
    plan.spec_hash = spec_hash(version, &plan);
    Ok(plan)
}

/// What a plan is rendered from besides the manifest: every variable's value, and which of them
/// come from a key of a Secret.
struct Inputs<'a> {
    vars: BTreeMap<String, String>,
    secrets: &'a BTreeMap<String, SecretKeyRef>,
}

/// Renders the plan of `stack` in `env` from one stack of a product version: `part` is `None`
/// for a single-stack product, the stack's name for a multi-stack one. Host paths are checked
/// against what `env` allows.
pub fn render(
    stack: &str,
    env: &Environment,
    pv: &ProductVersion,
    part: Option<&str>,
    values: &BTreeMap<String, String>,
) -> Result<StackPlan, RenderError> {
    render_with_secrets(stack, env, pv, part, values, &BTreeMap::new())
}

/// Like [`render`], where the variables named in `secrets` took their values (in `values`) from
/// those Secret keys: environment variables that are just one of them say so in the plan.
pub fn render_with_secrets(
    stack: &str,
    env: &Environment,
    pv: &ProductVersion,
    part: Option<&str>,
    values: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, SecretKeyRef>,
) -> Result<StackPlan, RenderError> {
    let definition = pv.stack(part).map_err(RenderError::Stack)?;
    let version = pv.version.to_string();
    let access = HostAccess::of(env);
    let inputs = Inputs {
        vars: resolve_variables(&definition.variables, values)?,
        secrets,
    };
    let mut containers = Vec::new();
    for name in dependency_order(definition).map_err(RenderError::Dependencies)? {
        containers.push(container(
            name,
            &definition.services[name],
            definition,
            &version,
            &inputs,
            &access,
        )?);
    }
    let mut volumes: Vec<String> = definition.volumes.iter().cloned().collect();
    for mount in containers.iter().flat_map(|c| &c.mounts) {
        if let MountSource::Volume(volume) = &mount.source
            && !volumes.contains(volume)
        {
            volumes.push(volume.clone());
        }
    }
    Ok(StackPlan {
        environment: env.name_any(),
        stack: stack.to_owned(),
        version,
        networks: definition
            .networks
            .iter()
            .filter(|n| *n != DEFAULT_NETWORK)
            .cloned()
            .collect(),
        volumes,
        containers,
    })
}

/// A short hash of everything a service runs with, and of the product version: a new version
/// replaces every service, whose labels say which version runs.
fn spec_hash(version: &str, plan: &ContainerPlan) -> String {
    let json = serde_json::to_vec(&(version, plan)).expect("a container plan always serializes");
    hex::encode(&Sha256::digest(&json)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::parse_manifest;
    use crate::catalog::plan::{Probe, RestartPolicy};
    use std::path::Path;
    use std::time::Duration;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MANIFEST: &str = r#"
metadata: {name: Shop, productId: shop, productVersion: "6.4.0"}
variables:
  PORT: {type: Port, default: "8080"}
  GREETING: {required: true}
  TAG: {default: "1"}
services:
  web:
    image: "registry.local/web:${TAG}"
    environment: {GREETING: "${GREETING}", MODE: "${MODE:-prod}", LITERAL: "$$HOME", N: 3}
    ports: ["${PORT}:80", "127.0.0.1:9090:90/udp"]
    volumes: ["data:/data", "/etc/hosts:/host-hosts:ro"]
    command: sh -c 'echo "hi there"'
    dependsOn: [db]
    restart: unless-stopped
    labels: {team: shop}
  db:
    image: registry.local/db
volumes:
  data: {}
"#;

    /// An environment that allows bind mounts below /etc (the manifest mounts /etc/hosts).
    fn local() -> Environment {
        Environment::new(
            "local",
            crate::model::EnvironmentSpec {
                docker: Some(crate::model::DockerEndpoint {
                    host: "tcp://127.0.0.1:2375".into(),
                    allowed_host_paths: vec!["/etc".into()],
                    allow_engine_socket: false,
                }),
                kubernetes: None,
            },
        )
    }

    fn product() -> ProductVersion {
        parse_manifest(Path::new("shop.yaml"), MANIFEST)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn renders_containers_in_dependency_order_with_variables() {
        let plan = render(
            "shop",
            &local(),
            &product(),
            None,
            &vars(&[("GREETING", "hello")]),
        )
        .unwrap();
        assert_eq!(
            (
                plan.environment.as_str(),
                plan.stack.as_str(),
                plan.version.as_str()
            ),
            ("local", "shop", "6.4.0")
        );
        assert_eq!(plan.volumes, ["data"]);
        let names: Vec<&str> = plan.containers.iter().map(|c| c.service.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        let web = &plan.containers[1];
        assert_eq!(web.image, "registry.local/web:1");
        assert_eq!(
            web.env,
            vars(&[
                ("GREETING", "hello"),
                ("LITERAL", "$HOME"),
                ("MODE", "prod"),
                ("N", "3")
            ])
        );
        assert_eq!(
            web.command.as_deref(),
            Some(&["sh".to_string(), "-c".into(), "echo \"hi there\"".into()][..])
        );
        assert_eq!(
            web.ports,
            [
                PortBinding {
                    host_ip: None,
                    host_port: Some(8080),
                    container_port: 80,
                    protocol: Protocol::Tcp
                },
                PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(9090),
                    container_port: 90,
                    protocol: Protocol::Udp
                },
            ]
        );
        assert_eq!(web.mounts[0].source, MountSource::Volume("data".into()));
        assert!(!web.mounts[0].read_only);
        assert_eq!(web.mounts[1].source, MountSource::Host("/etc/hosts".into()));
        assert!(web.mounts[1].read_only);
        assert_eq!(web.labels, vars(&[("team", "shop")]));
        assert_eq!(web.restart, RestartPolicy::UnlessStopped);
        assert_eq!(web.networks, [DEFAULT_NETWORK]);
        assert_eq!(web.depends_on, ["db"]);
    }

    #[test]
    fn spec_hash_changes_only_with_the_spec() {
        let p = product();
        let a = render("shop", &local(), &p, None, &vars(&[("GREETING", "hello")])).unwrap();
        let b = render("shop", &local(), &p, None, &vars(&[("GREETING", "hello")])).unwrap();
        let c = render("shop", &local(), &p, None, &vars(&[("GREETING", "bye")])).unwrap();
        assert_eq!(a.containers[1].spec_hash, b.containers[1].spec_hash);
        assert_ne!(a.containers[1].spec_hash, c.containers[1].spec_hash);
        assert_eq!(a.containers[0].spec_hash, c.containers[0].spec_hash);
    }

    #[test]
    fn variable_errors_name_the_variable() {
        let p = product();
        let missing = render("shop", &local(), &p, None, &vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("'GREETING' is required"), "{missing}");
        let port = render(
            "shop",
            &local(),
            &p,
            None,
            &vars(&[("GREETING", "x"), ("PORT", "70000")]),
        )
        .unwrap_err()
        .to_string();
        assert!(port.contains("'PORT' must be a port"), "{port}");
    }

    #[test]
    fn patterns_are_enforced_with_their_message() {
        let text = "metadata: {name: p, productVersion: '1.0.0'}\nvariables:\n  SLUG: {pattern: '^[a-z]+$', patternError: lower-case letters only}\n  CODE: {pattern: '^[0-9]{3}$'}\nservices:\n  a: {image: x}\n";
        let pv = parse_manifest(Path::new("p.yaml"), text).unwrap().unwrap();
        let ok = render(
            "s",
            &local(),
            &pv,
            None,
            &vars(&[("SLUG", "shop"), ("CODE", "123")]),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let slug = render(
            "s",
            &local(),
            &pv,
            None,
            &vars(&[("SLUG", "Shop"), ("CODE", "123")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            slug,
            "variable 'SLUG': lower-case letters only (got 'Shop')"
        );
        let code = render(
            "s",
            &local(),
            &pv,
            None,
            &vars(&[("SLUG", "shop"), ("CODE", "12")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(code, "variable 'CODE': must match ^[0-9]{3}$ (got '12')");
    }

    #[test]
    fn health_checks_become_typed_probes() {
        let text = "metadata: {name: h, productVersion: '1.0.0'}\nvariables:\n  PORT: {default: '8080'}\nservices:\n  \
            a: {image: x, healthCheck: {test: [test, -f, /ready], interval: 2s, retries: 4, startPeriod: 1m}}\n  \
            b: {image: x, healthCheck: {type: http, port: '${PORT}', path: /health}}\n  \
            c: {image: x, healthCheck: {type: tcp, port: 5432, timeout: 3}}\n  \
            d: {image: x, healthCheck: {test: 'pg_isready -U app'}}\n";
        let pv = parse_manifest(Path::new("h.yaml"), text).unwrap().unwrap();
        let plan = render("s", &local(), &pv, None, &BTreeMap::new()).unwrap();
        let a = plan.containers[0].health.clone().unwrap();
        assert_eq!(
            a.probe,
            Probe::Exec(vec!["test".into(), "-f".into(), "/ready".into()])
        );
        assert_eq!(
            (a.interval, a.timeout, a.retries, a.start_period),
            (
                Duration::from_secs(2),
                Duration::from_secs(5),
                4,
                Duration::from_secs(60)
            )
        );
        assert_eq!(a.patience(), Duration::from_secs(60 + 7 * 5));
        let b = plan.containers[1].health.clone().unwrap();
        assert_eq!(
            b.probe,
            Probe::Http {
                port: 8080,
                path: "/health".into()
            }
        );
        let c = plan.containers[2].health.clone().unwrap();
        assert_eq!(
            (c.probe, c.timeout),
            (Probe::Tcp { port: 5432 }, Duration::from_secs(3))
        );
        let d = plan.containers[3].health.clone().unwrap();
        assert_eq!(d.probe, Probe::Shell("pg_isready -U app".into()));
    }

    #[test]
    fn unknown_kinds_in_a_manifest_are_errors_that_name_the_field() {
        for (field, value) in [
            ("healthCheck", "{type: grpc}"),
            ("restart", "sometimes"),
            ("lifecycle", "daemon"),
        ] {
            let text = format!(
                "metadata: {{name: h, productVersion: '1.0.0'}}\nservices:\n  a: {{image: x, {field}: {value}}}\n"
            );
            let err = parse_manifest(Path::new("h.yaml"), &text)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("h.yaml: line 3, column")
                    && err.contains(&format!("services.a.{field}")),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_ports_mounts_and_commands_are_refused() {
        assert!(parse_port("80:http").is_err());
        assert!(parse_port("80/sctp").is_err());
        assert_eq!(parse_port("5000").unwrap().host_port, None);
        assert!(parse_mount("data").is_err());
        assert!(parse_mount("data:/d:rx").is_err());
        assert!(
            parse_mount("data:/d:ro:extra").is_err(),
            "no parts are ignored"
        );
        assert!(matches!(
            parse_mount("../x:/d").unwrap().source,
            MountSource::Host(_)
        ));
        assert!(
            parse_mount("a/b:/d")
                .unwrap_err()
                .contains("volume name 'a/b'")
        );
        assert!(split_command("echo 'open").is_err());
        assert_eq!(split_command("a  ''  b").unwrap(), ["a", "", "b"]);
        assert_eq!(split_command(r"say a\ b").unwrap(), ["say", "a b"]);
    }

    #[test]
    fn dependency_cycles_are_reported() {
        let text = "metadata: {name: c, productVersion: '1.0.0'}\nservices:\n  a: {image: x, dependsOn: [b]}\n  b: {image: y, dependsOn: [a]}\n";
        let pv = parse_manifest(Path::new("c.yaml"), text).unwrap().unwrap();
        assert!(
            render("c", &local(), &pv, None, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("cycle")
        );
    }

    #[test]
    fn host_mounts_need_the_environment_to_allow_them() {
        let text = "metadata: {name: h, productVersion: '1.0.0'}\nvariables:\n  DIR: {type: Path, default: /srv/app}\nservices:\n  a: {image: x, volumes: ['${DIR}:/data']}\n";
        let pv = parse_manifest(Path::new("h.yaml"), text).unwrap().unwrap();
        let err = render("s", &local(), &pv, None, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("service 'a' mounts host path '/srv/app'")
                && err.contains("allowedHostPaths"),
            "{err}"
        );
        let mut env = local();
        env.spec.docker.as_mut().unwrap().allowed_host_paths = vec!["/srv".into()];
        assert!(render("s", &env, &pv, None, &BTreeMap::new()).is_ok());
        let root = render("s", &env, &pv, None, &vars(&[("DIR", "/")]))
            .unwrap_err()
            .to_string();
        assert!(root.contains("must name something below /"), "{root}");
    }

    #[test]
    fn errors_say_which_field_of_which_service() {
        let text = "metadata: {name: e, productVersion: '1.0.0'}\nservices:\n  web: {image: x, ports: ['80:http']}\n";
        let pv = parse_manifest(Path::new("e.yaml"), text).unwrap().unwrap();
        let err = render("s", &local(), &pv, None, &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&err, RenderError::Service { service, field: "ports", .. } if service == "web"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "service 'web': port '80:http': 'http' is not a port number"
        );
        let variable = render("s", &local(), &product(), None, &BTreeMap::new()).unwrap_err();
        assert!(matches!(variable, RenderError::Variable { name, .. } if name == "GREETING"));
        let wrapped = crate::Error::Render {
            product: "e".into(),
            version: "1.0.0".into(),
            source: err,
        };
        assert!(wrapped.is_invalid_spec(), "waits for a change of the spec");
        assert!(!crate::Error::Unreachable("engine".into()).is_invalid_spec());
    }
}
