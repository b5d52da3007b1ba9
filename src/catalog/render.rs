//! Turns a product version plus a stack's variables into the containers to run. Pure except for
//! resolving symbolic links of host paths (see [`HostAccess`]).

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ProductVersion;
use super::manifest::Command;
use super::policy::HostAccess;
use super::variables::{resolve_variables, substitute};
use crate::model::{Environment, docker_name};

/// Label prefix on everything rsgo creates; nothing without it is ever touched.
pub const LABEL_PREFIX: &str = "io.rsgo.";
/// Label marking an object as rsgo's.
pub const LABEL_MANAGED: &str = "io.rsgo.managed";
/// Label holding the stack name.
pub const LABEL_STACK: &str = "io.rsgo.stack";
/// Label holding the environment name.
pub const LABEL_ENVIRONMENT: &str = "io.rsgo.environment";
/// Label holding the service name.
pub const LABEL_SERVICE: &str = "io.rsgo.service";
/// Label holding the hash of the container's rendered spec.
pub const LABEL_SPEC_HASH: &str = "io.rsgo.spec-hash";
/// Label holding the deployment record that created the container.
pub const LABEL_DEPLOYMENT: &str = "io.rsgo.deployment";
/// Label holding the product version.
pub const LABEL_VERSION: &str = "io.rsgo.version";
/// Label holding the redeploy request a container was created for; a container whose value
/// differs from the stack's request is recreated (the Docker twin of a pod-template annotation).
pub const LABEL_RESTARTED_AT: &str = "io.rsgo.restarted-at";
/// Label holding a named volume's name in the manifest.
pub const LABEL_VOLUME: &str = "io.rsgo.volume";

/// Everything one stack needs on a Docker engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackPlan {
    /// Environment the stack runs in.
    pub environment: String,
    /// Stack name.
    pub stack: String,
    /// The stack's own network, on which services reach each other by service name.
    pub network: String,
    /// Extra networks the manifest declares, by engine name.
    pub extra_networks: Vec<String>,
    /// Named volumes, by their name in the manifest; [`StackPlan::volume_name`] gives the
    /// engine's name.
    pub volumes: Vec<String>,
    /// Labels for the network and volumes.
    pub labels: BTreeMap<String, String>,
    /// One entry per service, in dependency order.
    pub containers: Vec<ContainerPlan>,
}

/// One container as it should run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerPlan {
    /// Service name from the manifest.
    pub service: String,
    /// Container name, `<environment>_<stack>_<service>`.
    pub name: String,
    /// Image reference, variables substituted.
    pub image: String,
    /// `KEY=value` pairs, sorted.
    pub env: Vec<String>,
    /// Command arguments.
    pub cmd: Option<Vec<String>>,
    /// Entrypoint arguments.
    pub entrypoint: Option<Vec<String>>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Published ports.
    pub ports: Vec<PortBinding>,
    /// Mounts.
    pub mounts: Vec<Mount>,
    /// Docker restart policy name.
    pub restart: Option<String>,
    /// A one-shot container (`lifecycle: init`) that must exit 0 before its dependents start.
    pub init: bool,
    /// Health check the engine runs; a rollout waits for it to pass.
    pub health: Option<HealthPlan>,
    /// Services that must be up (or, for one-shot ones, done) first. Not part of the spec hash:
    /// the order of a rollout is not how a container runs.
    #[serde(skip)]
    pub depends_on: Vec<String>,
    /// Networks to join (the stack network first).
    pub networks: Vec<String>,
    /// Container labels, rsgo's included (but not the spec hash).
    pub labels: BTreeMap<String, String>,
    /// Hash of everything above; a change means the container must be recreated.
    pub spec_hash: String,
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Probe {
    /// A command in the container, as Docker's `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    Command(Vec<String>),
    /// An HTTP GET on a container port.
    Http {
        /// Container port.
        port: u16,
        /// Request path.
        path: String,
    },
    /// A TCP connect to a container port.
    Tcp {
        /// Container port.
        port: u16,
    },
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthPlan {
    /// What is checked.
    pub probe: Probe,
    /// Seconds between checks.
    pub interval_secs: u64,
    /// Seconds one check may take.
    pub timeout_secs: u64,
    /// Failures in a row that make the container unhealthy.
    pub retries: u32,
    /// Seconds after start during which failures do not count.
    pub start_period_secs: u64,
}

impl HealthPlan {
    /// The check as a Docker `HEALTHCHECK` test. HTTP and TCP checks run inside the container,
    /// so the image needs busybox-style `wget` or `nc` for them.
    pub fn docker_test(&self) -> Vec<String> {
        match &self.probe {
            Probe::Command(test) => test.clone(),
            Probe::Http { port, path } => {
                vec![
                    "CMD-SHELL".into(),
                    format!("wget -q -O /dev/null http://127.0.0.1:{port}{path} || exit 1"),
                ]
            }
            Probe::Tcp { port } => vec![
                "CMD-SHELL".into(),
                format!("nc -z 127.0.0.1 {port} || exit 1"),
            ],
        }
    }

    /// The longest a healthy container can take to be reported healthy.
    pub fn patience_secs(&self) -> u64 {
        self.start_period_secs
            + (self.interval_secs + self.timeout_secs) * (u64::from(self.retries) + 1)
    }
}

/// Parses `30s`, `2m`, `1h` or a bare number of seconds.
fn seconds(field: &str, text: &str) -> Result<u64, String> {
    let invalid = || format!("healthCheck {field} '{text}' is not a duration such as 10s or 2m");
    let (number, factor) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 'h')) => (&text[..i], 3600),
        _ => (text, 1),
    };
    number
        .trim()
        .parse::<u64>()
        .map(|n| n * factor)
        .map_err(|_| invalid())
}

fn health_plan(
    check: &super::manifest::HealthCheck,
    vars: &BTreeMap<String, String>,
) -> Result<HealthPlan, String> {
    let value = |field: &str,
                 v: &Option<super::manifest::Scalar>,
                 default: &str|
     -> Result<String, String> {
        let text = v.as_ref().map_or(default.to_owned(), |s| s.0.clone());
        substitute(&text, vars).map_err(|e| format!("healthCheck {field}: {e}"))
    };
    let port = || -> Result<u16, String> {
        let text = value("port", &check.port, "")?;
        text.parse()
            .map_err(|_| format!("healthCheck needs a port, got '{text}'"))
    };
    let probe = match check.kind.as_deref().unwrap_or("docker") {
        "docker" => match &check.test {
            Some(Command::Line(line)) => {
                Probe::Command(vec!["CMD-SHELL".into(), substitute(line, vars)?])
            }
            Some(Command::Args(args)) => {
                let mut test = vec!["CMD".to_owned()];
                for arg in args {
                    test.push(substitute(arg, vars)?);
                }
                Probe::Command(test)
            }
            None => return Err("healthCheck of type docker needs a test command".into()),
        },
        "http" => Probe::Http {
            port: port()?,
            path: substitute(check.path.as_deref().unwrap_or("/"), vars)?,
        },
        "tcp" => Probe::Tcp { port: port()? },
        other => {
            return Err(format!(
                "healthCheck type '{other}' is unknown; use docker, http or tcp"
            ));
        }
    };
    let retries = value("retries", &check.retries, "3")?;
    Ok(HealthPlan {
        probe,
        interval_secs: seconds("interval", &value("interval", &check.interval, "10s")?)?.max(1),
        timeout_secs: seconds("timeout", &value("timeout", &check.timeout, "5s")?)?.max(1),
        retries: retries
            .parse()
            .map_err(|_| format!("healthCheck retries '{retries}' is not a number"))?,
        start_period_secs: seconds(
            "startPeriod",
            &value("startPeriod", &check.start_period, "0s")?,
        )?,
    })
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortBinding {
    /// Host address, when the manifest names one.
    pub host_ip: Option<String>,
    /// Host port; `None` lets Docker choose.
    pub host_port: Option<u16>,
    /// Container port.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

impl StackPlan {
    /// The Docker name of a named volume of this stack.
    pub fn volume_name(&self, volume: &str) -> String {
        docker_name(&self.environment, &self.stack, volume)
    }
}

/// A mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// The volume's name in the manifest, or a host path.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Whether `source` is a named volume (else a host path).
    pub named_volume: bool,
}

/// Splits a command line like a shell would, honouring single and double quotes.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_arg = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_arg = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unbalanced quote in command '{line}'"));
    }
    if in_arg {
        args.push(current);
    }
    Ok(args)
}

fn parse_port(spec: &str) -> Result<PortBinding, String> {
    let (spec, protocol) = match spec.rsplit_once('/') {
        Some((spec, proto @ ("tcp" | "udp"))) => (spec, proto),
        Some((_, proto)) => return Err(format!("port '{spec}': unknown protocol '{proto}'")),
        None => (spec, "tcp"),
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
        protocol: protocol.to_owned(),
    })
}

/// Parses `name:/path[:ro|rw]` or `/host/path:/path[:ro|rw]`. Anything not starting with `/`
/// is a named volume, whose name must be a manifest name; host paths are checked against the
/// Environment's [`HostAccess`] by the caller.
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
    let host_path = source.starts_with(['/', '.', '~']);
    if !host_path {
        super::check_manifest_name("volume", source)?;
    }
    Ok(Mount {
        source: source.to_owned(),
        target: target.to_owned(),
        read_only,
        named_volume: !host_path,
    })
}

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
fn dependency_order(pv: &ProductVersion) -> Result<Vec<&str>, String> {
    let services = &pv.manifest.services;
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

/// Renders the containers, network and volumes of `stack` in `env` from a product version. Host
/// paths are checked against what `env` allows.
pub fn render(
    stack: &str,
    env: &Environment,
    pv: &ProductVersion,
    values: &BTreeMap<String, String>,
) -> Result<StackPlan, String> {
    let environment = env.name_any();
    let access = HostAccess::of(env);
    let vars = resolve_variables(&pv.manifest.variables, values)?;
    let base_labels = BTreeMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_STACK.to_owned(), stack.to_owned()),
        (LABEL_ENVIRONMENT.to_owned(), environment.clone()),
    ]);
    let network = docker_name(&environment, stack, "default");
    let mut containers = Vec::new();
    for service_name in dependency_order(pv)? {
        let service = &pv.manifest.services[service_name];
        let context = |e: String| format!("service '{service_name}': {e}");
        let image = substitute(&service.image, &vars).map_err(context)?;
        if image.trim().is_empty() {
            return Err(context("image is empty".into()));
        }
        let mut env_vars = Vec::new();
        for (key, value) in &service.environment {
            env_vars.push(format!(
                "{key}={}",
                substitute(&value.0, &vars).map_err(context)?
            ));
        }
        let mut ports = Vec::new();
        for port in &service.ports {
            ports.push(parse_port(&substitute(&port.0, &vars).map_err(context)?).map_err(context)?);
        }
        let mut mounts = Vec::new();
        for volume in &service.volumes {
            let mount =
                parse_mount(&substitute(volume, &vars).map_err(context)?).map_err(context)?;
            if !mount.named_volume {
                access.check(service_name, &mount.source)?;
            }
            mounts.push(mount);
        }
        let mut networks = vec![network.clone()];
        for extra in &service.networks {
            if !pv.manifest.networks.contains_key(extra) && extra != "default" {
                return Err(context(format!(
                    "network '{extra}' is not declared under networks"
                )));
            }
            if extra != "default" {
                networks.push(docker_name(&environment, stack, extra));
            }
        }
        let mut labels = base_labels.clone();
        for (key, value) in &service.labels {
            if key.starts_with(LABEL_PREFIX) {
                return Err(context(format!("label '{key}' is reserved for rsgo")));
            }
            labels.insert(key.clone(), substitute(&value.0, &vars).map_err(context)?);
        }
        labels.insert(LABEL_SERVICE.into(), service_name.to_owned());
        labels.insert(LABEL_VERSION.into(), pv.version.to_string());
        let init = match service.lifecycle.as_deref() {
            None | Some("service") => false,
            Some("init") => true,
            Some(other) => {
                return Err(context(format!(
                    "lifecycle '{other}' is unknown; use service or init"
                )));
            }
        };
        let mut plan = ContainerPlan {
            service: service_name.to_owned(),
            name: docker_name(&environment, stack, service_name),
            image,
            env: env_vars,
            cmd: command_args(&service.command, &vars).map_err(context)?,
            entrypoint: command_args(&service.entrypoint, &vars).map_err(context)?,
            working_dir: service
                .working_dir
                .as_deref()
                .map(|d| substitute(d, &vars))
                .transpose()
                .map_err(context)?,
            user: service
                .user
                .as_deref()
                .map(|u| substitute(u, &vars))
                .transpose()
                .map_err(context)?,
            ports,
            mounts,
            // A one-shot container is never restarted.
            restart: if init { None } else { service.restart.clone() },
            init,
            health: service
                .health_check
                .as_ref()
                .map(|c| health_plan(c, &vars))
                .transpose()
                .map_err(context)?,
            depends_on: service.depends_on.clone(),
            networks,
            labels,
            spec_hash: String::new(),
        };
        plan.spec_hash = spec_hash(&plan);
        containers.push(plan);
    }
    let mut volumes: Vec<String> = pv.manifest.volumes.keys().cloned().collect();
    for mount in containers
        .iter()
        .flat_map(|c| &c.mounts)
        .filter(|m| m.named_volume)
    {
        if !volumes.contains(&mount.source) {
            volumes.push(mount.source.clone());
        }
    }
    Ok(StackPlan {
        environment: environment.clone(),
        stack: stack.to_owned(),
        network,
        extra_networks: pv
            .manifest
            .networks
            .keys()
            .filter(|n| *n != "default")
            .map(|n| docker_name(&environment, stack, n))
            .collect(),
        volumes,
        labels: base_labels,
        containers,
    })
}

fn spec_hash(plan: &ContainerPlan) -> String {
    let json = serde_json::to_vec(plan).expect("a container plan always serializes");
    Sha256::digest(&json)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::parse_manifest;
    use std::path::Path;

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
            &vars(&[("GREETING", "hello")]),
        )
        .unwrap();
        assert_eq!(plan.network, "local_shop_default");
        assert_eq!(plan.volumes, ["data"]);
        assert_eq!(plan.volume_name("data"), "local_shop_data");
        let names: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["local_shop_db", "local_shop_web"]);
        let web = &plan.containers[1];
        assert_eq!(web.image, "registry.local/web:1");
        assert_eq!(
            web.env,
            ["GREETING=hello", "LITERAL=$HOME", "MODE=prod", "N=3"]
        );
        assert_eq!(
            web.cmd.as_deref(),
            Some(&["sh".to_string(), "-c".into(), "echo \"hi there\"".into()][..])
        );
        assert_eq!(
            web.ports,
            [
                PortBinding {
                    host_ip: None,
                    host_port: Some(8080),
                    container_port: 80,
                    protocol: "tcp".into()
                },
                PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(9090),
                    container_port: 90,
                    protocol: "udp".into()
                },
            ]
        );
        assert_eq!(web.mounts[0].source, "data");
        assert!(web.mounts[0].named_volume && !web.mounts[0].read_only);
        assert!(!web.mounts[1].named_volume && web.mounts[1].read_only);
        assert_eq!(web.labels[LABEL_STACK], "shop");
        assert_eq!(web.labels[LABEL_SERVICE], "web");
        assert_eq!(web.restart.as_deref(), Some("unless-stopped"));
    }

    #[test]
    fn spec_hash_changes_only_with_the_spec() {
        let p = product();
        let a = render("shop", &local(), &p, &vars(&[("GREETING", "hello")])).unwrap();
        let b = render("shop", &local(), &p, &vars(&[("GREETING", "hello")])).unwrap();
        let c = render("shop", &local(), &p, &vars(&[("GREETING", "bye")])).unwrap();
        assert_eq!(a.containers[1].spec_hash, b.containers[1].spec_hash);
        assert_ne!(a.containers[1].spec_hash, c.containers[1].spec_hash);
        assert_eq!(a.containers[0].spec_hash, c.containers[0].spec_hash);
    }

    #[test]
    fn variable_errors_name_the_variable() {
        let p = product();
        let missing = render("shop", &local(), &p, &vars(&[])).unwrap_err();
        assert!(missing.contains("'GREETING' is required"), "{missing}");
        let port = render(
            "shop",
            &local(),
            &p,
            &vars(&[("GREETING", "x"), ("PORT", "70000")]),
        )
        .unwrap_err();
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
            &vars(&[("SLUG", "shop"), ("CODE", "123")]),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let slug = render(
            "s",
            &local(),
            &pv,
            &vars(&[("SLUG", "Shop"), ("CODE", "123")]),
        )
        .unwrap_err();
        assert_eq!(
            slug,
            "variable 'SLUG': lower-case letters only (got 'Shop')"
        );
        let code = render(
            "s",
            &local(),
            &pv,
            &vars(&[("SLUG", "shop"), ("CODE", "12")]),
        )
        .unwrap_err();
        assert_eq!(code, "variable 'CODE': must match ^[0-9]{3}$ (got '12')");
    }

    #[test]
    fn health_checks_become_engine_checks() {
        let text = "metadata: {name: h, productVersion: '1.0.0'}\nvariables:\n  PORT: {default: '8080'}\nservices:\n  \
            a: {image: x, healthCheck: {test: [test, -f, /ready], interval: 2s, retries: 4, startPeriod: 1m}}\n  \
            b: {image: x, healthCheck: {type: http, port: '${PORT}', path: /health}}\n  \
            c: {image: x, healthCheck: {type: tcp, port: 5432, timeout: 3}}\n  \
            d: {image: x, healthCheck: {type: grpc}}\n";
        let pv = parse_manifest(Path::new("h.yaml"), text).unwrap().unwrap();
        let err = render("s", &local(), &pv, &BTreeMap::new()).unwrap_err();
        assert!(
            err.contains("service 'd': healthCheck type 'grpc' is unknown"),
            "{err}"
        );
        let text = text.replace("\n  d: {image: x, healthCheck: {type: grpc}}", "");
        let pv = parse_manifest(Path::new("h.yaml"), &text).unwrap().unwrap();
        let plan = render("s", &local(), &pv, &BTreeMap::new()).unwrap();
        let a = plan.containers[0].health.clone().unwrap();
        assert_eq!(a.docker_test(), ["CMD", "test", "-f", "/ready"]);
        assert_eq!(
            (
                a.interval_secs,
                a.timeout_secs,
                a.retries,
                a.start_period_secs
            ),
            (2, 5, 4, 60)
        );
        assert_eq!(a.patience_secs(), 60 + 7 * 5);
        let b = plan.containers[1].health.clone().unwrap();
        assert_eq!(
            b.probe,
            Probe::Http {
                port: 8080,
                path: "/health".into()
            }
        );
        assert_eq!(
            b.docker_test()[1],
            "wget -q -O /dev/null http://127.0.0.1:8080/health || exit 1"
        );
        let c = plan.containers[2].health.clone().unwrap();
        assert_eq!(
            (c.docker_test()[1].as_str(), c.timeout_secs),
            ("nc -z 127.0.0.1 5432 || exit 1", 3)
        );
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
        assert!(parse_mount("../x:/d").is_ok_and(|m| !m.named_volume));
        assert!(
            parse_mount("a/b:/d")
                .unwrap_err()
                .contains("volume name 'a/b'")
        );
        assert!(split_command("echo 'open").is_err());
        assert_eq!(split_command("a  ''  b").unwrap(), ["a", "", "b"]);
    }

    #[test]
    fn dependency_cycles_are_reported() {
        let text = "metadata: {name: c, productVersion: '1.0.0'}\nservices:\n  a: {image: x, dependsOn: [b]}\n  b: {image: y, dependsOn: [a]}\n";
        let pv = parse_manifest(Path::new("c.yaml"), text).unwrap().unwrap();
        assert!(
            render("c", &local(), &pv, &BTreeMap::new())
                .unwrap_err()
                .contains("cycle")
        );
    }

    #[test]
    fn host_mounts_need_the_environment_to_allow_them() {
        let text = "metadata: {name: h, productVersion: '1.0.0'}\nvariables:\n  DIR: {type: Path, default: /srv/app}\nservices:\n  a: {image: x, volumes: ['${DIR}:/data']}\n";
        let pv = parse_manifest(Path::new("h.yaml"), text).unwrap().unwrap();
        let err = render("s", &local(), &pv, &BTreeMap::new()).unwrap_err();
        assert!(
            err.starts_with("service 'a' mounts host path '/srv/app'")
                && err.contains("allowedHostPaths"),
            "{err}"
        );
        let mut env = local();
        env.spec.docker.as_mut().unwrap().allowed_host_paths = vec!["/srv".into()];
        assert!(render("s", &env, &pv, &BTreeMap::new()).is_ok());
        let root = render("s", &env, &pv, &vars(&[("DIR", "/")])).unwrap_err();
        assert!(root.contains("must name something below /"), "{root}");
    }

    #[test]
    fn names_carry_the_environment_so_environments_never_share_objects() {
        let mut other = local();
        other.metadata.name = Some("staging".into());
        let a = render("shop", &local(), &product(), &vars(&[("GREETING", "x")])).unwrap();
        let b = render("shop", &other, &product(), &vars(&[("GREETING", "x")])).unwrap();
        assert_ne!(a.network, b.network);
        assert_ne!(a.volume_name("data"), b.volume_name("data"));
        assert_ne!(a.containers[0].name, b.containers[0].name);
    }
}
