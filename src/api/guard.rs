//! Brute-force protection. Failed authentications are counted per source address with a
//! keyed GCRA limiter; an address that used up its budget is answered 429 with `Retry-After`
//! before any key it sends is looked at, until the budget refills. Other addresses (and valid
//! keys used from them) are never slowed by it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::error::ApiError;

/// Failed authentications an address may make per minute when `rsgo serve` is not told.
pub const DEFAULT_FAILURES_PER_MINUTE: u32 = 20;

/// The reason logged, counted and audited for a request refused by the guard.
const TOO_MANY: &str = "too many failed authentications";

/// Addresses kept as blocked at most; the oldest blocks are dropped first beyond it.
const MOST_BLOCKED: usize = 100_000;

/// Failed authentications per address, and the addresses that are over their budget.
#[derive(Default)]
pub struct AuthGuard {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthGuard {
    /// A guard allowing `per_minute` failed authentications per address (a burst of that many,
    /// refilled evenly over a minute); 0 turns it off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            blocked: Mutex::default(),
        }
    }

    /// How long `address` must still wait, if it is blocked.
    fn blocked_for(&self, address: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.get(&address)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a failed authentication from `address`; says how long it is now blocked, if it
    /// went over its budget.
    fn failed(&self, address: IpAddr) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        let not_until = limiter.check_key(&address).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        blocked.retain(|_, until| *until > now);
        if blocked.len() >= MOST_BLOCKED
            && let Some(oldest) = blocked
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(a, _)| *a)
        {
            blocked.remove(&oldest);
        }
        blocked.insert(address, now + wait);
        Some(wait)
    }

    /// Forgets addresses whose budget is full again; called now and then so the limiter's
    /// memory does not grow with every address ever seen.
    pub fn forget_old(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Answers 429 to an address over its budget of failed authentications, and counts the 401s
/// of every other request against its address.
pub async fn guard_authentication(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    // Only the API authenticates; probes and the rest are never held up.
    let address =
        super::access::peer(&request).filter(|_| request.uri().path().starts_with("/api/"));
    let Some(address) = address else {
        return next.run(request).await;
    };
    if let Some(wait) = state.guard.blocked_for(address) {
        state.refusals.refused(TOO_MANY, "");
        crate::metrics::global().auth_failed(TOO_MANY);
        let mut response = too_many(wait);
        response
            .extensions_mut()
            .insert(super::access::Refusal(TOO_MANY));
        return response;
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(wait) = state.guard.failed(address)
    {
        tracing::warn!(%address, wait_seconds = wait.as_secs(), "too many failed authentications; address blocked for a while");
    }
    response
}

/// 429 with `Retry-After` in whole seconds (at least 1), in the hooks' error shape.
fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("Too many failed authentications from this address; try again in {seconds} s."),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_budget_waits_and_others_do_not() {
        let guard = AuthGuard::new(3);
        let (bad, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(guard.failed(bad).is_none());
        }
        let wait = guard
            .failed(bad)
            .expect("the fourth failure is over budget");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(guard.blocked_for(bad).is_some());
        assert!(guard.blocked_for(other).is_none());
        assert!(guard.failed(other).is_none());
        let off = AuthGuard::new(0);
        for _ in 0..100 {
            assert!(off.failed(bad).is_none());
        }
    }
}
