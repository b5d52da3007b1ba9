//! Health checks: a manifest's `healthCheck` as a [`HealthPlan`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::manifest::{Command, HealthCheck, HealthCheckKind, Scalar};
use super::plan::{HealthPlan, Probe};
use super::variables::substitute;

/// The health check of a service, variables substituted.
pub fn health_plan(
    check: &HealthCheck,
    vars: &BTreeMap<String, String>,
) -> Result<HealthPlan, String> {
    let value = |field: &str, v: &Option<Scalar>, default: &str| -> Result<String, String> {
        let text = v.as_ref().map_or(default.to_owned(), |s| s.0.clone());
        substitute(&text, vars).map_err(|e| format!("healthCheck {field}: {e}"))
    };
    let duration = |field: &str, v: &Option<Scalar>, default: &str| -> Result<Duration, String> {
        crate::duration::parse(&value(field, v, default)?)
            .map_err(|e| format!("healthCheck {field}: {e}"))
    };
    let port = || -> Result<u16, String> {
        let text = value("port", &check.port, "")?;
        text.parse()
            .map_err(|_| format!("healthCheck needs a port, got '{text}'"))
    };
    let probe = match check.kind.unwrap_or_default() {
        HealthCheckKind::Docker => match &check.test {
            Some(Command::Line(line)) => Probe::Shell(substitute(line, vars)?),
            Some(Command::Args(args)) => Probe::Exec(
                args.iter()
                    .map(|a| substitute(a, vars))
                    .collect::<Result<_, _>>()?,
            ),
            None => return Err("healthCheck of type docker needs a test command".into()),
        },
        HealthCheckKind::Http => Probe::Http {
            port: port()?,
            path: substitute(check.path.as_deref().unwrap_or("/"), vars)?,
        },
        HealthCheckKind::Tcp => Probe::Tcp { port: port()? },
    };
    let retries = value("retries", &check.retries, "3")?;
    let second = Duration::from_secs(1);
    Ok(HealthPlan {
        probe,
        interval: duration("interval", &check.interval, "10s")?.max(second),
        timeout: duration("timeout", &check.timeout, "5s")?.max(second),
        retries: retries
            .parse()
            .map_err(|_| format!("healthCheck retries '{retries}' is not a number"))?,
        start_period: duration("startPeriod", &check.start_period, "0s")?,
    })
}
