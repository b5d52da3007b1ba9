//! The pod of one service: its container (image, command, environment, ports, readiness
//! probe), its volumes and the user it runs as, converted from the runtime-neutral plan.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::workloads::{
    RESTARTED_AT_ANNOTATION, SPEC_HASH_ANNOTATION, claim_name, object_labels, selector_labels,
};
use crate::catalog::RenderError;
use crate::catalog::plan::{ContainerPlan, HealthPlan, MountSource, Probe, Protocol};
use crate::model::{Stack, dns_label};

pub(super) fn security_context(
    container: &ContainerPlan,
) -> Result<Option<PodSecurityContext>, RenderError> {
    let Some(user) = container.user.as_deref() else {
        return Ok(None);
    };
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let number = |v: &str| {
        v.parse::<i64>().map_err(|_| RenderError::Service {
            service: container.service.clone(),
            field: "user",
            reason: format!("user '{user}' must be numeric (uid or uid:gid) on Kubernetes"),
        })
    };
    Ok(Some(PodSecurityContext {
        run_as_user: Some(number(uid)?),
        run_as_group: gid.map(number).transpose()?,
        ..Default::default()
    }))
}

/// Kubernetes' name of a protocol.
pub(super) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// The pod's volumes and the container's mounts of them: claims for named volumes, host paths
/// for the others.
fn volumes(stack: &Stack, container: &ContainerPlan) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (index, mount) in container.mounts.iter().enumerate() {
        let name = format!("v{index}");
        let (claim, host) = match &mount.source {
            MountSource::Volume(volume) => (
                Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&stack.name_any(), volume),
                    read_only: None,
                }),
                None,
            ),
            MountSource::Host(path) => (
                None,
                Some(HostPathVolumeSource {
                    path: path.clone(),
                    type_: None,
                }),
            ),
        };
        volumes.push(Volume {
            name: name.clone(),
            persistent_volume_claim: claim,
            host_path: host,
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: mount.target.clone(),
            read_only: mount.read_only.then_some(true),
            ..Default::default()
        });
    }
    (volumes, mounts)
}

/// The pod template of one service: its container, volumes and user. `restarted_at` is the
/// redeploy request the pods must reflect.
pub(super) fn pod_template(
    stack: &Stack,
    container: &ContainerPlan,
    version: &str,
    restarted_at: Option<&str>,
) -> Result<PodTemplateSpec, RenderError> {
    let (volumes, mounts) = volumes(stack, container);
    // A variable that is just a Secret's key points at the Secret: its value never enters the
    // Deployment.
    let env: Vec<EnvVar> = container
        .env
        .iter()
        .map(|(name, value)| match container.secret_env.get(name) {
            Some(secret) => EnvVar {
                name: name.clone(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: secret.key.clone(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            },
            None => EnvVar {
                name: name.clone(),
                value: Some(value.clone()),
                value_from: None,
            },
        })
        .collect();
    let ports: Vec<ContainerPort> = container
        .ports
        .iter()
        .map(|p| ContainerPort {
            container_port: i32::from(p.container_port),
            protocol: Some(protocol_name(p.protocol).to_owned()),
            ..Default::default()
        })
        .collect();
    // The manifest's labels are free-form metadata, as Docker labels are: on a pod they are
    // annotations, which take any value (a label value could not).
    if let Some(key) = container.labels.keys().find(|k| !is_annotation_key(k)) {
        return Err(RenderError::Service {
            service: container.service.clone(),
            field: "labels",
            reason: format!(
                "label '{key}' cannot be a Kubernetes annotation key (an optional DNS prefix and \
                 '/', then up to 63 letters, digits, '-', '_' and '.')"
            ),
        });
    }
    let mut annotations = container.labels.clone();
    annotations.insert(SPEC_HASH_ANNOTATION.to_owned(), container.spec_hash.clone());
    if let Some(at) = restarted_at {
        annotations.insert(RESTARTED_AT_ANNOTATION.into(), at.to_owned());
    }
    let mut labels = object_labels(stack, Some(&container.service), version);
    labels.extend(selector_labels(stack, &container.service));
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: dns_label(&container.service),
                image: Some(container.image.clone()),
                image_pull_policy: Some("Always".into()),
                command: container.entrypoint.clone(),
                args: container.command.clone(),
                working_dir: container.working_dir.clone(),
                env: (!env.is_empty()).then_some(env),
                ports: (!ports.is_empty()).then_some(ports),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                readiness_probe: container.health.as_ref().map(probe),
                ..Default::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            security_context: security_context(container)?,
            // A one-shot service runs once: a failure fails the rollout instead of retrying.
            restart_policy: container.is_init().then(|| "Never".to_owned()),
            ..Default::default()
        }),
    })
}

/// A health check as a readiness probe: a Deployment is rolled out once its pods pass it.
fn probe(health: &HealthPlan) -> k8s_openapi::api::core::v1::Probe {
    use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction, TCPSocketAction};
    let seconds = |d: std::time::Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    let mut probe = k8s_openapi::api::core::v1::Probe {
        period_seconds: Some(seconds(health.interval)),
        timeout_seconds: Some(seconds(health.timeout)),
        failure_threshold: Some(health.retries.max(1) as i32),
        initial_delay_seconds: Some(seconds(health.start_period)),
        ..Default::default()
    };
    let exec = |command: Vec<String>| {
        Some(ExecAction {
            command: Some(command),
        })
    };
    match &health.probe {
        Probe::Exec(args) => probe.exec = exec(args.clone()),
        Probe::Shell(line) => probe.exec = exec(vec!["sh".into(), "-c".into(), line.clone()]),
        Probe::Http { port, path } => {
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(*port)),
                ..Default::default()
            });
        }
        Probe::Tcp { port } => {
            probe.tcp_socket = Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(*port)),
                host: None,
            });
        }
    }
    probe
}

/// Whether `key` is a valid annotation key: `[prefix/]name`, the prefix a DNS subdomain, the name
/// up to 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
fn is_annotation_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    name_ok && prefix.is_none_or(crate::model::is_dns_subdomain)
}
