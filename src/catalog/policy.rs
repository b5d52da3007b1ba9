//! What an Environment lets a stack's services reach on the host: bind mounts only below the
//! paths it allows, and the container engine's socket only when it says so. A catalog is someone
//! else's file and a hook key is narrow on purpose; neither may widen this.

use std::path::{Path, PathBuf};

use kube::ResourceExt;

use super::error::RenderError;
use crate::model::{Environment, normalize_host_path};

/// Sockets whose holder controls the host (the Docker engine, and the runtimes of cluster nodes).
const ENGINE_SOCKETS: [&str; 6] = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
];

/// The host access an Environment grants.
#[derive(Debug, Clone, PartialEq)]
pub struct HostAccess {
    environment: String,
    setting: &'static str,
    allowed: Vec<PathBuf>,
    allow_engine_socket: bool,
    sockets: Vec<PathBuf>,
    /// Whether rsgo sees the engine's file system, so symbolic links can be resolved too.
    local: bool,
}

impl HostAccess {
    /// What `env` allows. Paths that do not parse allow nothing (the store refuses them anyway).
    pub fn of(env: &Environment) -> Self {
        let mut sockets: Vec<PathBuf> = ENGINE_SOCKETS.iter().map(PathBuf::from).collect();
        let (setting, allowed, allow_engine_socket, local) =
            match (&env.spec.docker, &env.spec.kubernetes) {
                (Some(docker), _) => {
                    let socket = docker.host.strip_prefix("unix://");
                    sockets.extend(socket.and_then(|s| normalize_host_path(s).ok()));
                    (
                        "spec.docker",
                        docker.allowed_host_paths.as_slice(),
                        docker.allow_engine_socket,
                        socket.is_some(),
                    )
                }
                (None, Some(kubernetes)) => (
                    "spec.kubernetes",
                    kubernetes.allowed_host_paths.as_slice(),
                    kubernetes.allow_engine_socket,
                    false,
                ),
                (None, None) => ("spec.docker", [].as_slice(), false, false),
            };
        let mut allowed: Vec<PathBuf> = allowed
            .iter()
            .filter_map(|p| normalize_host_path(p).ok())
            .collect();
        if local {
            // Links are resolved on both sides: an allowed directory reached through a link
            // stays allowed.
            let resolved: Vec<PathBuf> = allowed
                .iter()
                .filter_map(|p| std::fs::canonicalize(p).ok())
                .collect();
            allowed.extend(resolved);
        }
        Self {
            environment: env.name_any(),
            setting,
            allowed,
            allow_engine_socket,
            sockets,
            local,
        }
    }

    /// Checks one host path a service mounts. The refusal names the service, the path and the
    /// Environment setting that would allow it.
    pub fn check(&self, service: &str, source: &str) -> Result<(), RenderError> {
        self.check_reason(service, source)
            .map_err(|reason| RenderError::HostAccess {
                service: service.to_owned(),
                path: source.to_owned(),
                reason,
            })
    }

    fn check_reason(&self, service: &str, source: &str) -> Result<(), String> {
        let normalized =
            normalize_host_path(source).map_err(|e| format!("service '{service}': {e}"))?;
        self.check_path(service, source, &normalized)?;
        // A link inside an allowed directory must not lead out of it.
        if self.local
            && let Ok(resolved) = std::fs::canonicalize(&normalized)
            && resolved != normalized
        {
            self.check_path(service, source, &resolved)?;
        }
        Ok(())
    }

    fn check_path(&self, service: &str, source: &str, path: &Path) -> Result<(), String> {
        let shown = if path == Path::new(source) {
            format!("'{source}'")
        } else {
            format!("'{source}' (that is {})", path.display())
        };
        let exposes_socket = self.sockets.iter().any(|s| s.starts_with(path));
        if exposes_socket && !self.allow_engine_socket {
            return Err(format!(
                "service '{service}' mounts host path {shown}, which exposes the container engine's \
                 socket; set {}.allowEngineSocket: true on environment '{}' to allow it",
                self.setting, self.environment
            ));
        }
        let is_socket = self.sockets.iter().any(|s| s == path);
        if is_socket || self.allowed.iter().any(|a| path.starts_with(a)) {
            return Ok(());
        }
        let allowed = if self.allowed.is_empty() {
            "none".to_owned()
        } else {
            self.allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(format!(
            "service '{service}' mounts host path {shown}, outside the host paths environment '{}' \
             allows ({allowed}); add it to {}.allowedHostPaths to allow it",
            self.environment, self.setting
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DockerEndpoint, EnvironmentSpec};

    fn docker_env(allowed: &[&str], socket: bool) -> Environment {
        Environment::new(
            "prod",
            EnvironmentSpec {
                docker: Some(DockerEndpoint {
                    host: "tcp://127.0.0.1:2375".into(),
                    allowed_host_paths: allowed.iter().map(|p| p.to_string()).collect(),
                    allow_engine_socket: socket,
                }),
                kubernetes: None,
            },
        )
    }

    #[test]
    fn nothing_is_mounted_unless_allowed() {
        let none = HostAccess::of(&docker_env(&[], false));
        let err = none.check("web", "/srv/data").unwrap_err().to_string();
        assert_eq!(
            err,
            "service 'web' mounts host path '/srv/data', outside the host paths environment 'prod' \
             allows (none); add it to spec.docker.allowedHostPaths to allow it"
        );
        assert!(
            none.check("web", "relative/dir")
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
    }

    #[test]
    fn allowed_paths_match_by_prefix_after_normalising() {
        let srv = HostAccess::of(&docker_env(&["/srv/data/"], false));
        assert!(srv.check("web", "/srv/data").is_ok());
        assert!(srv.check("web", "/srv/data/app/./logs").is_ok());
        assert!(
            srv.check("web", "/srv/database").is_err(),
            "prefix by component"
        );
        let escape = srv
            .check("web", "/srv/data/../../etc")
            .unwrap_err()
            .to_string();
        assert!(escape.contains("(that is /etc)"), "{escape}");
        assert!(srv.check("web", "/").is_err());
    }

    #[test]
    fn the_engine_socket_needs_its_own_opt_in() {
        let everything = HostAccess::of(&docker_env(&["/"], false));
        for path in [
            "/var/run/docker.sock",
            "/var/run",
            "/",
            "/run/containerd/containerd.sock",
        ] {
            let err = everything.check("agent", path).unwrap_err().to_string();
            assert!(err.contains("allowEngineSocket"), "{path}: {err}");
        }
        assert!(everything.check("agent", "/etc").is_ok());
        let socket = HostAccess::of(&docker_env(&[], true));
        assert!(socket.check("agent", "/var/run/docker.sock").is_ok());
        assert!(
            socket.check("agent", "/var/run").is_err(),
            "a directory holding the socket also needs allowedHostPaths"
        );
    }

    #[test]
    fn links_out_of_an_allowed_directory_are_followed_on_a_local_engine() {
        let dir = tempfile::TempDir::new().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::os::unix::fs::symlink("/etc", allowed.join("escape")).unwrap();
        let mut env = docker_env(&[allowed.to_str().unwrap()], false);
        env.spec.docker.as_mut().unwrap().host = "unix:///var/run/docker.sock".into();
        let access = HostAccess::of(&env);
        let link = allowed.join("escape");
        let err = access
            .check("web", link.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("(that is /etc)"), "{err}");
        assert!(access.check("web", allowed.to_str().unwrap()).is_ok());
    }
}
