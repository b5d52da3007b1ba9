//! The networks and volumes of a stack: found by rsgo's labels, made when missing, and only ever
//! removed when rsgo made them for that stack.

use std::collections::HashMap;

use bollard::models::{Network, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{ListNetworksOptionsBuilder, ListVolumesOptionsBuilder};

use super::container::{self, LABEL_VOLUME, StackResources};
use super::{DockerRuntime, is_status, owned_by, stack_filters};
use crate::catalog::StackPlan;
use crate::{Error, Result};

impl DockerRuntime {
    /// Finds or creates the networks and volumes of a stack. Networks are found by rsgo's labels
    /// (names need not be unique on older engines, so a retry never makes a second one). A
    /// volume keeps the name it had before names carried the environment, so data stays; a
    /// volume of the wanted name that rsgo did not make for this stack is refused, not used.
    /// Also returns the stack's networks as they were found, for [`Self::remove_unwanted`]; they
    /// are listed unless `known` (from a listing that still shows the stack) already tells them.
    pub async fn prepare(
        &self,
        plan: &StackPlan,
        known: Option<&[Network]>,
    ) -> Result<(StackResources, Vec<Network>)> {
        let (environment, stack) = (&plan.environment, &plan.stack);
        let existing = match known {
            Some(networks) => networks.to_vec(),
            None => self.stack_networks(environment, stack).await?,
        };
        let labels = container::stack_labels(plan);
        let mut resources = StackResources::default();
        for name in container::network_names(plan) {
            let found = existing
                .iter()
                .find(|n| n.name.as_deref() == Some(name.as_str()))
                .and_then(|n| n.id.clone());
            let id = match found {
                Some(id) => id,
                None => self.create_network(&name, &labels).await?,
            };
            resources.networks.insert(name, id);
        }
        let owned = if plan.volumes.is_empty() {
            Vec::new()
        } else {
            self.stack_volumes(environment, stack).await?
        };
        for key in &plan.volumes {
            let name = container::volume_name(plan, key);
            let legacy = format!("{stack}_{key}");
            let engine_name = if owned.contains(&name) {
                name
            } else if owned.contains(&legacy) {
                legacy
            } else {
                let mut labels = labels.clone();
                labels.insert(LABEL_VOLUME.into(), key.clone());
                self.create_volume(&name, labels, environment, stack)
                    .await?;
                name
            };
            resources.volumes.insert(key.clone(), engine_name);
        }
        Ok((resources, existing))
    }

    /// The names of the volumes carrying rsgo's labels for this stack of this environment.
    async fn stack_volumes(&self, environment: &str, stack: &str) -> Result<Vec<String>> {
        let filters = stack_filters(environment, stack);
        let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
        let _permit = self.permit().await;
        let volumes = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| Error::docker(format!("listing volumes of stack {stack}"), e))?;
        Ok(volumes
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    /// The networks carrying rsgo's labels for this stack of this environment.
    async fn stack_networks(&self, environment: &str, stack: &str) -> Result<Vec<Network>> {
        let filters = stack_filters(environment, stack);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let _permit = self.permit().await;
        self.docker
            .list_networks(Some(options))
            .await
            .map_err(|e| Error::docker(format!("listing networks of stack {stack}"), e))
    }

    async fn create_network(&self, name: &str, labels: &HashMap<String, String>) -> Result<String> {
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let _permit = self.permit().await;
        let created = self.docker.create_network(request).await.map_err(|e| {
            let hint = if e.to_string().contains("address pool") {
                " (the engine has no address range left for another network; every stack has \
                     its own, so an engine that runs many stacks needs wider \
                     `default-address-pools` in its daemon.json)"
            } else {
                ""
            };
            Error::docker(format!("creating network {name}{hint}"), e)
        })?;
        Ok(created.id)
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        environment: &str,
        stack: &str,
    ) -> Result<()> {
        let _permit = self.permit().await;
        match self.docker.inspect_volume(name).await {
            Ok(volume) if owned_by(&volume.labels, environment, stack) => return Ok(()),
            Ok(_) => {
                return Err(Error::Rollout(format!(
                    "volume {name} exists but rsgo did not make it for stack '{stack}' of \
                     environment '{environment}'; rsgo never mounts another's volume, so remove or \
                     rename it"
                )));
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(Error::docker(format!("inspecting volume {name}"), e)),
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|e| Error::docker(format!("creating volume {name}"), e))
    }

    /// Removes the networks rsgo made for a stack, except those named in `keep`.
    pub async fn remove_networks(
        &self,
        environment: &str,
        stack: &str,
        keep: &[String],
    ) -> Result<()> {
        let networks = self.stack_networks(environment, stack).await?;
        self.remove_unwanted(networks, environment, stack, keep)
            .await
    }

    /// Removes those of `networks` that rsgo made for the stack, except those named in `keep`.
    /// A network that still has containers of someone else attached is left, with a warning.
    pub async fn remove_unwanted(
        &self,
        networks: Vec<Network>,
        environment: &str,
        stack: &str,
        keep: &[String],
    ) -> Result<()> {
        for network in networks {
            let (Some(id), Some(name)) = (network.id, network.name) else {
                continue;
            };
            if keep.contains(&name)
                || !owned_by(&network.labels.unwrap_or_default(), environment, stack)
            {
                continue;
            }
            let removed = {
                let _permit = self.permit().await;
                self.docker.remove_network(&id).await
            };
            match removed {
                Ok(()) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) if is_status(&e, 403) || is_status(&e, 409) => {
                    tracing::warn!(network = %name, error = %e, "network still in use; left in place");
                }
                Err(e) => return Err(Error::docker(format!("removing network {name}"), e)),
            }
        }
        Ok(())
    }
}
