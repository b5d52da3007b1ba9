//! Manifests: any file in a catalog source is refused with a message or loads and renders,
//! never a panic, and a refusal never quotes a quoted value of the file.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rsgo::catalog::plan::MountSource;
use rsgo::catalog::{Stacks, parse_manifest, render};
use rsgo::model::{DockerEndpoint, Environment, EnvironmentSpec, normalize_host_path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_manifest(Path::new("fuzz.yaml"), text) {
        Ok(Some(pv)) => {
            let env = Environment::new(
                "fuzz",
                EnvironmentSpec {
                    docker: Some(DockerEndpoint {
                        host: "tcp://127.0.0.1:1".into(),
                        allowed_host_paths: vec!["/srv".into()],
                        allow_engine_socket: false,
                    }),
                    kubernetes: None,
                },
            );
            let parts: Vec<Option<&str>> = match &pv.stacks {
                Stacks::Single(_) => vec![None],
                Stacks::Multi(stacks) => stacks.keys().map(|name| Some(name.as_str())).collect(),
            };
            for plan in parts
                .into_iter()
                .filter_map(|part| render("stack", &env, &pv, part, &BTreeMap::new()).ok())
            {
                for container in &plan.containers {
                    for mount in &container.mounts {
                        if let MountSource::Host(path) = &mount.source {
                            assert!(
                                normalize_host_path(path).is_ok_and(|p| p.starts_with("/srv")),
                                "a host path outside the allowed ones was rendered: {path}"
                            );
                        }
                    }
                }
            }
        }
        Ok(None) => {}
        Err(error) => assert!(error.to_string().len() < 2048, "an unbounded message"),
    }
});
