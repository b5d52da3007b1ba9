//! rsgo's integration tests: a real Docker engine, a real registry on loopback, real SQLite files.
//! `scripts/test.sh` makes Docker and the registry available before these run.

mod catalogs;
mod cluster;
mod console;
mod docker_e2e;
mod engine_proxy;
mod fake_api;
mod fake_rollout;
mod fake_rules;
mod git_https;
mod guarantees;
mod hooks;
mod kube_mock;
mod kubernetes;
mod operator;
mod store;
mod support;
