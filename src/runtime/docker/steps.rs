//! Compares a stack's plan with the containers that run and decides what to do. Pure.

use std::collections::HashMap;

use super::ObservedContainer;
use super::container::container_name;
use crate::catalog::StackPlan;

/// What to do with one service, or with a container no service wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// No container exists: create it.
    Create(usize),
    /// A container exists but must be replaced (spec changed, or a redeploy asked for it).
    Recreate(usize, ObservedContainer),
    /// The container is right but stopped: start it.
    Start(usize, ObservedContainer),
    /// The container is right and runs.
    Keep(usize, ObservedContainer),
    /// The container belongs to no wanted service (or duplicates one): remove it.
    Remove(ObservedContainer),
}

impl Step {
    /// The plan's index of the service the step is for; `None` for a removal.
    pub fn service(&self) -> Option<usize> {
        match self {
            Step::Create(i) | Step::Recreate(i, _) | Step::Start(i, _) | Step::Keep(i, _) => {
                Some(*i)
            }
            Step::Remove(_) => None,
        }
    }
}

/// The dependency level of each of the plan's services: 0 for one that depends on nothing,
/// else one more than the highest level among what it depends on. Services of one level can be
/// handled together once every lower level is done. The plan lists services in dependency
/// order, so one pass suffices; a dependency the plan does not have adds no level.
pub fn levels(plan: &StackPlan) -> Vec<usize> {
    let mut level_of: HashMap<&str, usize> = HashMap::new();
    let mut levels = Vec::with_capacity(plan.containers.len());
    for service in &plan.containers {
        let level = service
            .depends_on
            .iter()
            .filter_map(|dependency| level_of.get(dependency.as_str()))
            .map(|level| level + 1)
            .max()
            .unwrap_or(0);
        level_of.insert(&service.service, level);
        levels.push(level);
    }
    levels
}

/// Plans a rollout. Indexes are positions in the plan's containers. Removals come first,
/// then the services in the order given (dependency order). A container is recreated when its
/// spec changed, or when the stack has a redeploy request (`restarted_at`) that the container was
/// not created for; so a redeploy cut short (by a crash, say) recreates exactly the services it
/// had not reached yet.
pub fn plan(
    desired: &StackPlan,
    observed: &[ObservedContainer],
    restarted_at: Option<&str>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut claimed = vec![false; observed.len()];
    let mut service_steps = Vec::new();
    for (index, want) in desired.containers.iter().enumerate() {
        let name = container_name(desired, want);
        let found = observed
            .iter()
            .enumerate()
            .find(|(i, o)| !claimed[*i] && o.service == want.service && o.name == name);
        service_steps.push(match found {
            None => Step::Create(index),
            Some((i, have)) => {
                claimed[i] = true;
                let stale = restarted_at.is_some_and(|at| at != have.restarted_at);
                if stale || have.spec_hash != want.spec_hash {
                    Step::Recreate(index, have.clone())
                } else if !have.running && !want.is_init() {
                    Step::Start(index, have.clone())
                } else {
                    Step::Keep(index, have.clone())
                }
            }
        });
    }
    for (i, have) in observed.iter().enumerate() {
        if !claimed[i] {
            steps.push(Step::Remove(have.clone()));
        }
    }
    steps.extend(service_steps);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ContainerPlan;
    use crate::catalog::plan::Lifecycle;

    fn want(service: &str, hash: &str) -> ContainerPlan {
        ContainerPlan {
            service: service.into(),
            image: "img".into(),
            env: Default::default(),
            command: None,
            entrypoint: None,
            working_dir: None,
            user: None,
            ports: vec![],
            mounts: vec![],
            restart: Default::default(),
            lifecycle: Lifecycle::Service,
            health: None,
            depends_on: vec![],
            networks: vec!["default".into()],
            labels: Default::default(),
            secret_env: Default::default(),
            spec_hash: hash.into(),
        }
    }

    fn stack(containers: &[ContainerPlan]) -> StackPlan {
        StackPlan {
            environment: "e".into(),
            stack: "s".into(),
            version: "1.0.0".into(),
            networks: vec![],
            volumes: vec![],
            containers: containers.to_vec(),
        }
    }

    fn have(service: &str, hash: &str, running: bool) -> ObservedContainer {
        ObservedContainer {
            id: format!("id-{service}"),
            name: format!("e_s_{service}"),
            stack: "s".into(),
            service: service.into(),
            spec_hash: hash.into(),
            running,
            image: "img".into(),
            image_id: "sha256:1".into(),
            healthy: None,
            exit_code: None,
            deployment: String::new(),
            restarted_at: String::new(),
        }
    }

    #[test]
    fn services_are_levelled_by_what_they_depend_on() {
        let mut db = want("db", "h");
        let cache = want("cache", "h");
        let mut migrate = want("migrate", "h");
        let mut api = want("api", "h");
        let mut web = want("web", "h");
        let worker = want("worker", "h");
        db.depends_on = vec!["volume-not-a-service".into()];
        migrate.depends_on = vec!["db".into()];
        api.depends_on = vec!["migrate".into(), "cache".into()];
        web.depends_on = vec!["api".into(), "db".into()];
        let plan = stack(&[db, cache, migrate, api, web, worker]);
        assert_eq!(levels(&plan), [0, 0, 1, 2, 3, 0]);
        let steps = super::plan(&plan, &[have("gone", "h", true)], None);
        assert_eq!(
            steps.iter().map(Step::service).collect::<Vec<_>>(),
            [None, Some(0), Some(1), Some(2), Some(3), Some(4), Some(5)]
        );
    }

    #[test]
    fn creates_recreates_starts_keeps_and_removes() {
        let desired = [
            want("new", "h"),
            want("changed", "h2"),
            want("stopped", "h"),
            want("same", "h"),
        ];
        let observed = [
            have("changed", "h1", true),
            have("stopped", "h", false),
            have("same", "h", true),
            have("gone", "h", true),
        ];
        let steps = plan(&stack(&desired), &observed, None);
        assert_eq!(
            steps,
            [
                Step::Remove(observed[3].clone()),
                Step::Create(0),
                Step::Recreate(1, observed[0].clone()),
                Step::Start(2, observed[1].clone()),
                Step::Keep(3, observed[2].clone()),
            ]
        );
    }

    #[test]
    fn a_finished_init_container_is_left_alone_until_its_spec_changes() {
        let mut migrate = want("migrate", "h");
        migrate.lifecycle = Lifecycle::Init;
        let exited = have("migrate", "h", false);
        assert_eq!(
            plan(
                &stack(std::slice::from_ref(&migrate)),
                std::slice::from_ref(&exited),
                None
            ),
            [Step::Keep(0, exited.clone())]
        );
        let changed = have("migrate", "old", false);
        assert_eq!(
            plan(
                &stack(std::slice::from_ref(&migrate)),
                std::slice::from_ref(&changed),
                None
            ),
            [Step::Recreate(0, changed.clone())]
        );
        assert_eq!(
            plan(
                &stack(&[migrate]),
                std::slice::from_ref(&exited),
                Some("t1")
            ),
            [Step::Recreate(0, exited)],
            "a redeploy runs it again"
        );
    }

    #[test]
    fn redeploy_recreates_every_existing_service() {
        let desired = [want("a", "h"), want("b", "h")];
        let observed = [have("a", "h", true)];
        let steps = plan(&stack(&desired), &observed, Some("t1"));
        assert_eq!(
            steps,
            [Step::Recreate(0, observed[0].clone()), Step::Create(1)]
        );
    }

    #[test]
    fn an_interrupted_redeploy_recreates_only_what_it_had_not_reached() {
        let desired = [want("a", "h"), want("b", "h"), want("c", "h")];
        let mut done = have("a", "h", true);
        done.restarted_at = "t2".into();
        let observed = [done.clone(), have("b", "h", true), have("c", "h", true)];
        assert_eq!(
            plan(&stack(&desired), &observed, Some("t2")),
            [
                Step::Keep(0, done),
                Step::Recreate(1, observed[1].clone()),
                Step::Recreate(2, observed[2].clone()),
            ]
        );
        assert!(
            plan(&stack(&desired), &observed[1..], None)
                .iter()
                .all(|s| !matches!(s, Step::Recreate(..))),
            "without a request nothing is recreated"
        );
    }
}
