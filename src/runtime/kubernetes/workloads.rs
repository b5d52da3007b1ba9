//! Kubernetes workloads for a stack: one Deployment per service, a Service for each service
//! that has ports, and a PersistentVolumeClaim per named volume. Pure builders: the objects are
//! applied server-side with one field manager by whoever holds a client.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Service, ServicePort, ServiceSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::pod::{pod_template, protocol_name};
use crate::catalog::RenderError;
use crate::catalog::plan::{ContainerPlan, MountSource, StackPlan};
use crate::model::{STACK_LABEL, Stack, dns_label};

/// Pod-template annotation that a redeploy changes, which rolls the pods like `kubectl rollout restart`.
pub const RESTARTED_AT_ANNOTATION: &str = "rsgo.io/restarted-at";
/// Annotation with the hash of the rendered service spec.
pub const SPEC_HASH_ANNOTATION: &str = "rsgo.io/spec-hash";
/// Label holding the service name.
pub const SERVICE_LABEL: &str = "rsgo.io/service";
/// Size requested for each named volume.
pub const DEFAULT_VOLUME_SIZE: &str = "1Gi";

/// Everything one stack needs in its namespace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Workloads {
    /// One per service.
    pub deployments: Vec<Deployment>,
    /// One per service that publishes ports.
    pub services: Vec<Service>,
    /// One per named volume. They carry no owner reference, so deleting the stack keeps them.
    pub claims: Vec<PersistentVolumeClaim>,
    /// One per one-shot (`init`) service, in dependency order.
    pub jobs: Vec<Job>,
    /// For each Deployment, in the same order, the Jobs that must have succeeded before it is
    /// applied: those of the one-shot services it depends on, directly or not.
    pub waits_for: Vec<Vec<String>>,
}

fn owner(stack: &Stack) -> Option<OwnerReference> {
    stack.controller_owner_ref(&())
}

pub(super) fn selector_labels(stack: &Stack, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/instance".to_owned(),
            dns_label(&stack.name_any()),
        ),
        ("app.kubernetes.io/name".to_owned(), dns_label(service)),
    ])
}

pub(super) fn object_labels(
    stack: &Stack,
    service: Option<&str>,
    version: &str,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_owned(), "rsgo".to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            dns_label(&stack.name_any()),
        ),
        (
            "app.kubernetes.io/part-of".to_owned(),
            dns_label(&stack.spec.product),
        ),
        ("app.kubernetes.io/version".to_owned(), version.to_owned()),
        (STACK_LABEL.to_owned(), dns_label(&stack.name_any())),
    ]);
    if let Some(service) = service {
        labels.insert("app.kubernetes.io/name".into(), dns_label(service));
        labels.insert(SERVICE_LABEL.into(), dns_label(service));
    }
    labels
}

/// Name of the PersistentVolumeClaim of a named volume: `<stack>-<volume>`. Environments are
/// namespaces here, so the stack name makes it unique.
pub fn claim_name(stack: &str, volume: &str) -> String {
    dns_label(&format!("{stack}-{volume}"))
}

/// Name of the Deployment of one service.
pub fn deployment_name(stack: &str, service: &str) -> String {
    dns_label(&format!("{stack}-{service}"))
}

fn deployment(
    stack: &Stack,
    container: &ContainerPlan,
    version: &str,
    restarted_at: Option<&str>,
) -> Result<Deployment, RenderError> {
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&stack.name_any(), &container.service)),
            namespace: stack.namespace(),
            labels: Some(object_labels(stack, Some(&container.service), version)),
            owner_references: owner(stack).map(|o| vec![o]),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels(stack, &container.service)),
                match_expressions: None,
            },
            // Named volumes are ReadWriteOnce: the old pod must let go before the new one mounts.
            strategy: Some(DeploymentStrategy {
                type_: Some(
                    if container
                        .mounts
                        .iter()
                        .any(|m| matches!(m.source, MountSource::Volume(_)))
                    {
                        "Recreate"
                    } else {
                        "RollingUpdate"
                    }
                    .into(),
                ),
                rolling_update: None,
            }),
            template: pod_template(stack, container, version, restarted_at)?,
            ..Default::default()
        },
        status: None,
    })
}

/// Name of the Job that runs a one-shot service: `<stack>-<service>-<hash>`, where the hash
/// covers its spec and the redeploy request, so a changed spec or a redeploy runs a new Job
/// (a Job's pod template cannot change) and an unchanged one is not run again.
pub fn job_name(stack: &str, container: &ContainerPlan, restarted_at: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(container.spec_hash.as_bytes());
    hasher.update(restarted_at.unwrap_or_default().as_bytes());
    let hash = hex::encode(&hasher.finalize()[..4]);
    let base = dns_label(&format!("{stack}-{}", container.service));
    let base: String = base.chars().take(63 - hash.len() - 1).collect();
    format!("{}-{hash}", base.trim_end_matches('-'))
}

fn job(
    stack: &Stack,
    container: &ContainerPlan,
    version: &str,
    restarted_at: Option<&str>,
) -> Result<Job, RenderError> {
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&stack.name_any(), container, restarted_at)),
            namespace: stack.namespace(),
            labels: Some(object_labels(stack, Some(&container.service), version)),
            owner_references: owner(stack).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: pod_template(stack, container, version, restarted_at)?,
            ..Default::default()
        }),
        status: None,
    })
}

fn service(stack: &Stack, container: &ContainerPlan, version: &str) -> Option<Service> {
    if container.ports.is_empty() {
        return None;
    }
    let ports = container
        .ports
        .iter()
        .map(|p| ServicePort {
            name: Some(format!(
                "{}-{}",
                p.protocol.as_str(),
                p.host_port.unwrap_or(p.container_port)
            )),
            port: i32::from(p.host_port.unwrap_or(p.container_port)),
            target_port: Some(IntOrString::Int(i32::from(p.container_port))),
            protocol: Some(protocol_name(p.protocol).to_owned()),
            ..Default::default()
        })
        .collect();
    Some(Service {
        // Named after the service, so services reach each other by name as they do on Docker.
        metadata: ObjectMeta {
            name: Some(dns_label(&container.service)),
            namespace: stack.namespace(),
            labels: Some(object_labels(stack, Some(&container.service), version)),
            owner_references: owner(stack).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(stack, &container.service)),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    })
}

/// The one-shot services `service` depends on, directly or through others.
fn init_dependencies<'a>(plan: &'a StackPlan, service: &str) -> BTreeSet<&'a str> {
    let mut found = BTreeSet::new();
    let mut pending = vec![service];
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name) {
            continue;
        }
        let Some(container) = plan.containers.iter().find(|c| c.service == name) else {
            continue;
        };
        for dependency in &container.depends_on {
            if let Some(dep) = plan.containers.iter().find(|c| c.service == *dependency) {
                if dep.is_init() {
                    found.insert(dep.service.as_str());
                }
                pending.push(dep.service.as_str());
            }
        }
    }
    found
}

/// Builds every object of a stack from its rendered plan. `restarted_at` is the redeploy request
/// the pods must reflect, if any.
pub fn workloads(
    stack: &Stack,
    plan: &StackPlan,
    restarted_at: Option<&str>,
) -> Result<Workloads, RenderError> {
    let version = plan.version.as_str();
    let mut workloads = Workloads::default();
    let mut names = BTreeMap::new();
    for container in &plan.containers {
        // Kubernetes names are DNS labels: two services must not map onto one.
        let label = dns_label(&container.service);
        if let Some(other) = names.insert(label.clone(), container.service.clone()) {
            return Err(RenderError::Service {
                service: container.service.clone(),
                field: "services",
                reason: format!(
                    "services '{other}' and '{}' both become '{label}' on Kubernetes; rename one",
                    container.service
                ),
            });
        }
        if container.is_init() {
            workloads
                .jobs
                .push(job(stack, container, version, restarted_at)?);
            continue;
        }
        workloads
            .deployments
            .push(deployment(stack, container, version, restarted_at)?);
        workloads.waits_for.push(
            init_dependencies(plan, &container.service)
                .into_iter()
                .filter_map(|service| plan.containers.iter().find(|c| c.service == service))
                .map(|init| job_name(&stack.name_any(), init, restarted_at))
                .collect(),
        );
        workloads
            .services
            .extend(service(stack, container, version));
    }
    for volume in &plan.volumes {
        workloads.claims.push(PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim_name(&stack.name_any(), volume)),
                namespace: stack.namespace(),
                labels: Some(object_labels(stack, None, version)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(DEFAULT_VOLUME_SIZE.into()),
                    )])),
                    limits: None,
                }),
                ..Default::default()
            }),
            status: None,
        });
    }
    Ok(workloads)
}

#[cfg(test)]
mod tests {
    use super::super::pod::security_context;
    use super::*;
    use crate::catalog::{parse_manifest, render};
    use crate::model::StackSpec;
    use std::path::Path;

    const MANIFEST: &str = r#"
metadata: {name: Shop, productId: shop, productVersion: "6.5.0"}
variables:
  GREETING: {default: hello}
services:
  web:
    image: registry.local/web:2
    entrypoint: ["/bin/web"]
    command: ["--port", "80"]
    environment: {GREETING: "${GREETING}"}
    ports: ["8080:80", "53/udp"]
    volumes: ["data:/data", "/etc/ssl:/ssl:ro"]
    user: "1000:2000"
  worker:
    image: registry.local/worker:2
volumes:
  data: {}
"#;

    fn stack() -> Stack {
        let mut stack = Stack::new(
            "Shop_Prod",
            StackSpec {
                environment: "prod".into(),
                product: "shop".into(),
                stack: None,
                version: Some("6.5.0".into()),
                variables: Default::default(),
                variables_from: Default::default(),
            },
        );
        stack.metadata.namespace = Some("prod".into());
        stack.metadata.uid = Some("uid-1".into());
        stack
    }

    /// A cluster environment that allows the manifest's hostPath below /etc/ssl.
    fn prod() -> crate::model::Environment {
        crate::model::Environment::new(
            "prod",
            crate::model::EnvironmentSpec {
                docker: None,
                kubernetes: Some(crate::model::KubernetesTarget {
                    namespace: "prod".into(),
                    allowed_host_paths: vec!["/etc/ssl".into()],
                    allow_engine_socket: false,
                }),
            },
        )
    }

    fn build(restarted_at: Option<&str>) -> Workloads {
        let pv = parse_manifest(Path::new("shop.yaml"), MANIFEST)
            .unwrap()
            .unwrap();
        let stack = stack();
        let plan = render(
            &stack.name_any(),
            &prod(),
            &pv,
            stack.spec.stack.as_deref(),
            &stack.spec.variables,
        )
        .unwrap();
        workloads(&stack, &plan, restarted_at).unwrap()
    }

    #[test]
    fn a_deployment_per_service_with_owner_labels_and_pod_spec() {
        let w = build(None);
        let names: Vec<_> = w
            .deployments
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["shop-prod-web", "shop-prod-worker"]);
        let web = &w.deployments[0];
        assert_eq!(web.metadata.namespace.as_deref(), Some("prod"));
        let owner = &web.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Stack", "Shop_Prod", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        let labels = web.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "rsgo");
        assert_eq!(labels["app.kubernetes.io/name"], "web");
        assert_eq!(labels["app.kubernetes.io/instance"], "shop-prod");
        assert_eq!(labels["app.kubernetes.io/version"], "6.5.0");
        let spec = &web.spec;
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let template = spec.template.metadata.as_ref().unwrap();
        for (k, v) in selector {
            assert_eq!(
                &template.labels.as_ref().unwrap()[k],
                v,
                "pods match the selector"
            );
        }
        assert!(
            template
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(SPEC_HASH_ANNOTATION)
        );
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.name, "web");
        assert_eq!(c.image.as_deref(), Some("registry.local/web:2"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(c.command.as_deref(), Some(&["/bin/web".to_string()][..]));
        assert_eq!(
            c.args.as_deref(),
            Some(&["--port".to_string(), "80".into()][..])
        );
        let env = c.env.as_ref().unwrap();
        assert_eq!(
            (env[0].name.as_str(), env[0].value.as_deref()),
            ("GREETING", Some("hello"))
        );
        let ports = c.ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].container_port, ports[0].protocol.as_deref()),
            (80, Some("TCP"))
        );
        assert_eq!(
            (ports[1].container_port, ports[1].protocol.as_deref()),
            (53, Some("UDP"))
        );
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert_eq!(
            (mounts[0].mount_path.as_str(), mounts[0].read_only),
            ("/data", None)
        );
        assert_eq!(
            (mounts[1].mount_path.as_str(), mounts[1].read_only),
            ("/ssl", Some(true))
        );
        let volumes = pod.volumes.as_ref().unwrap();
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "shop-prod-data"
        );
        assert_eq!(volumes[1].host_path.as_ref().unwrap().path, "/etc/ssl");
        let security = pod.security_context.as_ref().unwrap();
        assert_eq!(
            (security.run_as_user, security.run_as_group),
            (Some(1000), Some(2000))
        );
        assert_eq!(
            w.deployments[1]
                .spec
                .strategy
                .as_ref()
                .unwrap()
                .type_
                .as_deref(),
            Some("RollingUpdate")
        );
    }

    #[test]
    fn services_only_for_services_with_ports() {
        let w = build(None);
        assert_eq!(w.services.len(), 1);
        let svc = &w.services[0];
        assert_eq!(svc.metadata.name.as_deref(), Some("web"));
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(
            spec.selector.as_ref(),
            w.deployments[0].spec.selector.match_labels.as_ref()
        );
        let ports = spec.ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].port, ports[0].target_port.clone()),
            (8080, Some(IntOrString::Int(80)))
        );
        assert_eq!(
            (ports[1].port, ports[1].protocol.as_deref()),
            (53, Some("UDP"))
        );
        assert!(svc.metadata.owner_references.is_some());
    }

    #[test]
    fn claims_per_named_volume_without_owner() {
        let w = build(None);
        assert_eq!(w.claims.len(), 1);
        let claim = &w.claims[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("shop-prod-data"));
        assert!(
            claim.metadata.owner_references.is_none(),
            "deleting a stack keeps its data"
        );
        let spec = claim.spec.as_ref().unwrap();
        assert_eq!(
            spec.access_modes.as_deref(),
            Some(&["ReadWriteOnce".to_string()][..])
        );
        assert_eq!(
            spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "1Gi"
        );
    }

    #[test]
    fn a_redeploy_changes_only_the_restart_annotation() {
        let before = build(None);
        let after = build(Some("2026-11-28T10:00:00Z"));
        let annotations = |w: &Workloads| {
            w.deployments[0]
                .spec
                .template
                .metadata
                .clone()
                .unwrap()
                .annotations
                .unwrap()
        };
        assert_eq!(
            annotations(&after)[RESTARTED_AT_ANNOTATION],
            "2026-11-28T10:00:00Z"
        );
        let mut restored = after.clone();
        for d in &mut restored.deployments {
            let meta = d.spec.template.metadata.as_mut().unwrap();
            meta.annotations
                .as_mut()
                .unwrap()
                .remove(RESTARTED_AT_ANNOTATION);
        }
        assert_eq!(restored, before);
        assert!(!annotations(&before).contains_key(RESTARTED_AT_ANNOTATION));
    }

    #[test]
    fn manifest_labels_become_pod_annotations() {
        let text = "metadata: {name: p, productVersion: '1.0.0'}\nservices:\n  \
            app: {image: x, labels: {team: shop, 'example.com/owner': 'Shop team, 3rd floor'}}\n";
        let pv = parse_manifest(Path::new("p.yaml"), text).unwrap().unwrap();
        let plan = render("shop", &prod(), &pv, None, &Default::default()).unwrap();
        let w = workloads(&stack(), &plan, None).unwrap();
        let annotations = w.deployments[0]
            .spec
            .template
            .metadata
            .clone()
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(annotations["team"], "shop");
        assert_eq!(annotations["example.com/owner"], "Shop team, 3rd floor");
        assert!(annotations.contains_key(SPEC_HASH_ANNOTATION));
        let text = "metadata: {name: p, productVersion: '1.0.0'}\nservices:\n  \
            app: {image: x, labels: {'has space': x}}\n";
        let pv = parse_manifest(Path::new("p.yaml"), text).unwrap().unwrap();
        let plan = render("shop", &prod(), &pv, None, &Default::default()).unwrap();
        let err = workloads(&stack(), &plan, None).unwrap_err().to_string();
        assert!(
            err.contains("label 'has space' cannot be a Kubernetes annotation key"),
            "{err}"
        );
    }

    #[test]
    fn variables_from_secrets_reference_the_secret_instead_of_copying_it() {
        let text = "metadata: {name: p, productVersion: '1.0.0'}\nvariables:\n  \
            DB_PASSWORD: {type: Password, required: true}\nservices:\n  \
            app: {image: x, environment: {DB_PASSWORD: '${DB_PASSWORD}', DSN: 'postgres://app:${DB_PASSWORD}@db/app'}}\n";
        let pv = parse_manifest(Path::new("p.yaml"), text).unwrap().unwrap();
        let values = BTreeMap::from([("DB_PASSWORD".to_owned(), "s3cr3t".to_owned())]);
        let secrets = BTreeMap::from([(
            "DB_PASSWORD".to_owned(),
            crate::model::SecretKeyRef {
                name: "shop-db".into(),
                key: "password".into(),
            },
        )]);
        let plan =
            crate::catalog::render_with_secrets("shop", &prod(), &pv, None, &values, &secrets)
                .unwrap();
        let w = workloads(&stack(), &plan, None).unwrap();
        let env = w.deployments[0]
            .spec
            .template
            .spec
            .clone()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap();
        let password = env.iter().find(|e| e.name == "DB_PASSWORD").unwrap();
        assert_eq!(
            password.value, None,
            "the value never enters the Deployment"
        );
        let selector = password.value_from.clone().unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("shop-db", "password")
        );
        let dsn = env.iter().find(|e| e.name == "DSN").unwrap();
        assert_eq!(
            dsn.value.as_deref(),
            Some("postgres://app:s3cr3t@db/app"),
            "a value built from the secret has to be copied"
        );
        // Docker has no references: the plan carries the value for it.
        assert_eq!(plan.containers[0].env["DB_PASSWORD"], "s3cr3t");
    }

    #[test]
    fn health_checks_become_readiness_probes() {
        let text = "metadata: {name: p, productVersion: '1.0.0'}\nservices:\n  \
            a: {image: x, healthCheck: {test: 'curl -f localhost', interval: 5s, retries: 2, startPeriod: 10s}}\n  \
            b: {image: x, healthCheck: {type: http, port: 8080, path: /ready}}\n  \
            c: {image: x, healthCheck: {type: tcp, port: 5432}}\n";
        let pv = parse_manifest(Path::new("p.yaml"), text).unwrap().unwrap();
        let plan = render("shop", &prod(), &pv, None, &Default::default()).unwrap();
        let w = workloads(&stack(), &plan, None).unwrap();
        let probe = |i: usize| {
            w.deployments[i]
                .spec
                .template
                .spec
                .clone()
                .unwrap()
                .containers[0]
                .readiness_probe
                .clone()
                .unwrap()
        };
        let a = probe(0);
        assert_eq!(
            a.exec.unwrap().command.unwrap(),
            ["sh", "-c", "curl -f localhost"]
        );
        assert_eq!(
            (
                a.period_seconds,
                a.failure_threshold,
                a.initial_delay_seconds
            ),
            (Some(5), Some(2), Some(10))
        );
        let b = probe(1).http_get.unwrap();
        assert_eq!(
            (b.path.as_deref(), b.port),
            (Some("/ready"), IntOrString::Int(8080))
        );
        assert_eq!(probe(2).tcp_socket.unwrap().port, IntOrString::Int(5432));
    }

    #[test]
    fn one_shot_services_become_jobs_that_their_dependents_wait_for() {
        let text = "metadata: {name: p, productVersion: '1.0.0'}\nservices:\n  \
            migrate: {image: m, lifecycle: init, command: [migrate, up]}\n  \
            web: {image: w, dependsOn: [cache]}\n  cache: {image: c, dependsOn: [migrate]}\n  \
            other: {image: o}\n";
        let pv = parse_manifest(Path::new("p.yaml"), text).unwrap().unwrap();
        let plan = render("shop", &prod(), &pv, None, &Default::default()).unwrap();
        let w = workloads(&stack(), &plan, None).unwrap();
        assert_eq!(w.jobs.len(), 1);
        let job = &w.jobs[0];
        let name = job.metadata.name.clone().unwrap();
        assert!(name.starts_with("shop-prod-migrate-"), "{name}");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0), "a failure is final");
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod.containers[0].args.as_deref(),
            Some(&["migrate".to_owned(), "up".to_owned()][..])
        );
        let deployments: Vec<String> = w
            .deployments
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            deployments,
            ["shop-prod-cache", "shop-prod-other", "shop-prod-web"]
        );
        // cache waits for migrate directly, web through cache, other not at all.
        assert_eq!(
            w.waits_for,
            [vec![name.clone()], vec![], vec![name.clone()]]
        );
        let again = workloads(&stack(), &plan, None).unwrap();
        assert_eq!(
            again.jobs[0].metadata.name, job.metadata.name,
            "an unchanged spec is not run again"
        );
        let redeployed = workloads(&stack(), &plan, Some("t1")).unwrap();
        assert_ne!(
            redeployed.jobs[0].metadata.name, job.metadata.name,
            "a redeploy runs it again"
        );
    }

    #[test]
    fn services_that_share_a_kubernetes_name_are_refused() {
        let text = "metadata: {name: p, productVersion: '1.0.0'}\nservices:\n  web_1: {image: a}\n  web-1: {image: b}\n";
        let pv = parse_manifest(Path::new("p.yaml"), text).unwrap().unwrap();
        let plan = render("shop", &prod(), &pv, None, &Default::default()).unwrap();
        let err = workloads(&stack(), &plan, None).unwrap_err();
        assert!(
            matches!(&err, RenderError::Service { field: "services", reason, .. } if reason.contains("both become 'web-1'")),
            "{err}"
        );
    }

    #[test]
    fn names_become_dns_labels_and_users_must_be_numeric() {
        assert_eq!(dns_label("My_Stack.v2"), "my-stack-v2");
        assert_eq!(dns_label(&"a".repeat(70)).len(), 63);
        let text = "metadata: {name: p, productVersion: '1.0.0'}\nservices:\n  web: {image: a, user: www-data}\n  api: {image: b, user: '1000:1000'}\n  db: {image: c}\n";
        let pv = parse_manifest(Path::new("p.yaml"), text).unwrap().unwrap();
        let plan = render("shop", &prod(), &pv, None, &Default::default()).unwrap();
        let context = |service: &str| {
            security_context(
                plan.containers
                    .iter()
                    .find(|c| c.service == service)
                    .unwrap(),
            )
        };
        assert!(
            matches!(context("web"), Err(RenderError::Service { ref service, field: "user", ref reason }) if service == "web" && reason.contains("numeric")),
        );
        let api = context("api").unwrap().unwrap();
        assert_eq!(
            (api.run_as_user, api.run_as_group),
            (Some(1000), Some(1000))
        );
        assert_eq!(context("db").unwrap(), None);
    }
}
