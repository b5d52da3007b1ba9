//! The Docker boundary: a stack's plan as Docker names, labels and container specs. Pure.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, MountType, NetworkingConfig,
    PortBinding as DockerPortBinding, RestartPolicy as DockerRestart, RestartPolicyNameEnum,
};

use crate::catalog::plan::{
    ContainerPlan, DEFAULT_NETWORK, MountSource, Probe, RestartPolicy, StackPlan,
};
use crate::model::docker_name;

/// Label marking an object as rsgo's.
pub const LABEL_MANAGED: &str = "io.rsgo.managed";
/// Label holding the stack name.
pub const LABEL_STACK: &str = "io.rsgo.stack";
/// Label holding the environment name.
pub const LABEL_ENVIRONMENT: &str = "io.rsgo.environment";
/// Label holding the service name.
pub const LABEL_SERVICE: &str = "io.rsgo.service";
/// Label holding the hash of the service's plan.
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

/// Who a container is created for: its deployment record and the redeploy request it serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Provenance<'a> {
    /// Deployment record of the rollout.
    pub deployment: Option<&'a str>,
    /// The stack's redeploy request, if any.
    pub restarted_at: Option<&'a str>,
}

/// The engine objects a stack's containers use: network ids by Docker name, volume names by
/// manifest name.
#[derive(Debug, Clone, Default)]
pub struct StackResources {
    /// Network id by the network's Docker name.
    pub networks: HashMap<String, String>,
    /// Docker volume name by the volume's manifest name.
    pub volumes: HashMap<String, String>,
}

/// Docker name of a service's container.
pub fn container_name(plan: &StackPlan, container: &ContainerPlan) -> String {
    docker_name(&plan.environment, &plan.stack, &container.service)
}

/// Name a service's new container has while the container it replaces stops: a second `_`
/// after the stack (`<environment>_<stack>__<service>`). Manifest names start with a letter or
/// digit, so no container a stack wants is ever named so, and a pass removes one it finds.
pub fn standby_name(plan: &StackPlan, container: &ContainerPlan) -> String {
    docker_name(
        &plan.environment,
        &plan.stack,
        &format!("_{}", container.service),
    )
}

/// Docker name of a network of the stack, by its manifest name (`default` for the stack's own).
pub fn network_name(plan: &StackPlan, network: &str) -> String {
    docker_name(&plan.environment, &plan.stack, network)
}

/// Docker name of a named volume of the stack, by its manifest name.
pub fn volume_name(plan: &StackPlan, volume: &str) -> String {
    docker_name(&plan.environment, &plan.stack, volume)
}

/// Docker names of every network of the stack, its own first.
pub fn network_names(plan: &StackPlan) -> Vec<String> {
    std::iter::once(DEFAULT_NETWORK)
        .chain(plan.networks.iter().map(String::as_str))
        .map(|n| network_name(plan, n))
        .collect()
}

/// The labels that mark an object as made by rsgo for this stack of this environment.
pub fn stack_labels(plan: &StackPlan) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_STACK.to_owned(), plan.stack.clone()),
        (LABEL_ENVIRONMENT.to_owned(), plan.environment.clone()),
    ])
}

/// A health check as Docker's `HEALTHCHECK` test. HTTP and TCP checks run inside the container,
/// so the image needs busybox-style `wget` or `nc` for them.
pub fn health_test(probe: &Probe) -> Vec<String> {
    match probe {
        Probe::Exec(args) => std::iter::once("CMD".to_owned())
            .chain(args.iter().cloned())
            .collect(),
        Probe::Shell(line) => vec!["CMD-SHELL".into(), line.clone()],
        Probe::Http { port, path } => vec![
            "CMD-SHELL".into(),
            format!("wget -q -O /dev/null http://127.0.0.1:{port}{path} || exit 1"),
        ],
        Probe::Tcp { port } => vec![
            "CMD-SHELL".into(),
            format!("nc -z 127.0.0.1 {port} || exit 1"),
        ],
    }
}

fn restart_name(policy: RestartPolicy) -> RestartPolicyNameEnum {
    match policy {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
    }
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// The endpoint a container has on each of its networks: reachable by its service name.
pub fn endpoint(container: &ContainerPlan) -> EndpointSettings {
    EndpointSettings {
        aliases: Some(vec![container.service.clone()]),
        ..Default::default()
    }
}

/// Published ports, as Docker's `"80/tcp" -> [host bindings]`.
fn port_bindings(container: &ContainerPlan) -> HashMap<String, Option<Vec<DockerPortBinding>>> {
    let mut bindings: HashMap<String, Option<Vec<DockerPortBinding>>> = HashMap::new();
    for port in &container.ports {
        bindings
            .entry(format!(
                "{}/{}",
                port.container_port,
                port.protocol.as_str()
            ))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(DockerPortBinding {
                host_ip: port.host_ip.clone(),
                host_port: port.host_port.map(|p| p.to_string()),
            });
    }
    bindings
}

/// Mounts: named volumes by their Docker name in `resources`, host paths as binds.
fn mounts(
    container: &ContainerPlan,
    resources: &StackResources,
) -> Result<Vec<bollard::models::Mount>, String> {
    let mut mounts = Vec::new();
    for mount in &container.mounts {
        let (source, typ) = match &mount.source {
            MountSource::Volume(volume) => (
                resources
                    .volumes
                    .get(volume)
                    .cloned()
                    .ok_or_else(|| format!("volume {volume} was not prepared"))?,
                MountType::VOLUME,
            ),
            MountSource::Host(path) => (path.clone(), MountType::BIND),
        };
        mounts.push(bollard::models::Mount {
            source: Some(source),
            target: Some(mount.target.clone()),
            read_only: Some(mount.read_only),
            typ: Some(typ),
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// The create request of a service's container, on the networks and volumes of `resources`
/// (its first network joined at creation; the others are connected after).
pub fn create_body(
    plan: &StackPlan,
    container: &ContainerPlan,
    resources: &StackResources,
    provenance: Provenance<'_>,
) -> Result<ContainerCreateBody, String> {
    let mut labels = stack_labels(plan);
    labels.extend(container.labels.clone());
    labels.insert(LABEL_SERVICE.into(), container.service.clone());
    labels.insert(LABEL_VERSION.into(), plan.version.clone());
    labels.insert(LABEL_SPEC_HASH.into(), container.spec_hash.clone());
    if let Some(deployment) = provenance.deployment {
        labels.insert(LABEL_DEPLOYMENT.into(), deployment.to_owned());
    }
    if let Some(at) = provenance.restarted_at {
        labels.insert(LABEL_RESTARTED_AT.into(), at.to_owned());
    }
    let port_bindings = port_bindings(container);
    let mounts = mounts(container, resources)?;
    let first = container
        .networks
        .first()
        .map(|n| network_name(plan, n))
        .unwrap_or_else(|| network_name(plan, DEFAULT_NETWORK));
    let network = resources
        .networks
        .get(&first)
        .cloned()
        .ok_or_else(|| format!("network {first} was not prepared"))?;
    let healthcheck = container.health.as_ref().map(|h| HealthConfig {
        test: Some(health_test(&h.probe)),
        interval: Some(nanos(h.interval)),
        timeout: Some(nanos(h.timeout)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(nanos(h.start_period)),
        ..Default::default()
    });
    Ok(ContainerCreateBody {
        image: Some(container.image.clone()),
        healthcheck,
        env: Some(
            container
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        cmd: container.command.clone(),
        entrypoint: container.entrypoint.clone(),
        working_dir: container.working_dir.clone(),
        user: container.user.clone(),
        labels: Some(labels),
        exposed_ports: Some(port_bindings.keys().cloned().collect()),
        host_config: Some(HostConfig {
            port_bindings: Some(port_bindings),
            mounts: Some(mounts),
            restart_policy: Some(DockerRestart {
                name: Some(restart_name(container.restart)),
                maximum_retry_count: None,
            }),
            network_mode: Some(network.clone()),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network, endpoint(container))])),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{parse_manifest, render};
    use crate::model::{DockerEndpoint, Environment, EnvironmentSpec};
    use std::path::Path;

    const MANIFEST: &str = r#"
metadata: {name: Shop, productVersion: "6.4.0"}
services:
  web:
    image: registry.local/web:1
    environment: {A: "1"}
    ports: ["8080:80", "127.0.0.1:53:53/udp"]
    volumes: ["data:/data", "/srv/shop:/cfg:ro"]
    networks: [front]
    command: [serve, --port, "80"]
    restart: unless-stopped
    labels: {team: shop}
    healthCheck: {type: http, port: 80, path: /ready, interval: 2s}
networks:
  front: {}
"#;

    fn plan(environment: &str) -> StackPlan {
        let env = Environment::new(
            environment,
            EnvironmentSpec {
                docker: Some(DockerEndpoint {
                    host: "tcp://127.0.0.1:2375".into(),
                    allowed_host_paths: vec!["/srv".into()],
                    allow_engine_socket: false,
                }),
                kubernetes: None,
            },
        );
        let pv = parse_manifest(Path::new("shop.yaml"), MANIFEST)
            .unwrap()
            .unwrap();
        render("shop", &env, &pv, None, &Default::default()).unwrap()
    }

    fn resources(plan: &StackPlan) -> StackResources {
        StackResources {
            networks: network_names(plan)
                .into_iter()
                .map(|n| (n.clone(), format!("id-of-{n}")))
                .collect(),
            volumes: HashMap::from([("data".to_owned(), "local_shop_data".to_owned())]),
        }
    }

    #[test]
    fn the_plan_becomes_a_docker_container() {
        let plan = plan("local");
        let web = &plan.containers[0];
        assert_eq!(container_name(&plan, web), "local_shop_web");
        assert_eq!(
            network_names(&plan),
            ["local_shop_default", "local_shop_front"]
        );
        let provenance = Provenance {
            deployment: Some("d1"),
            restarted_at: Some("t1"),
        };
        let body = create_body(&plan, web, &resources(&plan), provenance).unwrap();
        let labels = body.labels.unwrap();
        for (key, value) in [
            (LABEL_MANAGED, "true"),
            (LABEL_STACK, "shop"),
            (LABEL_ENVIRONMENT, "local"),
            (LABEL_SERVICE, "web"),
            (LABEL_VERSION, "6.4.0"),
            (LABEL_DEPLOYMENT, "d1"),
            (LABEL_RESTARTED_AT, "t1"),
            ("team", "shop"),
        ] {
            assert_eq!(labels[key], value, "{key}");
        }
        assert_eq!(labels[LABEL_SPEC_HASH], web.spec_hash);
        assert_eq!(body.env.unwrap(), ["A=1"]);
        assert_eq!(
            body.cmd.unwrap(),
            ["serve".to_owned(), "--port".into(), "80".into()]
        );
        let host = body.host_config.unwrap();
        assert_eq!(
            host.network_mode.as_deref(),
            Some("id-of-local_shop_default")
        );
        assert_eq!(
            host.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        let ports = host.port_bindings.unwrap();
        assert_eq!(
            ports["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("8080")
        );
        assert_eq!(
            ports["53/udp"].as_ref().unwrap()[0].host_ip.as_deref(),
            Some("127.0.0.1")
        );
        let mounts = host.mounts.unwrap();
        assert_eq!(
            (mounts[0].source.as_deref(), mounts[0].typ),
            (Some("local_shop_data"), Some(MountType::VOLUME))
        );
        assert_eq!(
            (
                mounts[1].source.as_deref(),
                mounts[1].typ,
                mounts[1].read_only
            ),
            (Some("/srv/shop"), Some(MountType::BIND), Some(true))
        );
        let health = body.healthcheck.unwrap();
        assert_eq!(
            health.test.unwrap(),
            [
                "CMD-SHELL".to_owned(),
                "wget -q -O /dev/null http://127.0.0.1:80/ready || exit 1".into()
            ]
        );
        assert_eq!(health.interval, Some(2_000_000_000));
    }

    #[test]
    fn probes_become_docker_tests() {
        assert_eq!(
            health_test(&Probe::Exec(vec![
                "test".into(),
                "-f".into(),
                "/ready".into()
            ])),
            ["CMD", "test", "-f", "/ready"]
        );
        assert_eq!(
            health_test(&Probe::Shell("pg_isready".into())),
            ["CMD-SHELL", "pg_isready"]
        );
        assert_eq!(
            health_test(&Probe::Tcp { port: 5432 }),
            ["CMD-SHELL", "nc -z 127.0.0.1 5432 || exit 1"]
        );
    }

    #[test]
    fn names_carry_the_environment_so_environments_never_share_objects() {
        let (a, b) = (plan("local"), plan("staging"));
        assert_ne!(network_names(&a), network_names(&b));
        assert_ne!(
            container_name(&a, &a.containers[0]),
            container_name(&b, &b.containers[0])
        );
    }
}
