//! The one way rsgo retries a read-modify-write that lost a race: a bounded number of attempts
//! with a growing, jittered delay, so contenders spread out instead of colliding again.

use std::future::Future;
use std::time::Duration;

use rand::RngExt;

use crate::{Error, Result};

/// Attempts before a write that keeps conflicting is given up.
pub const ATTEMPTS: u32 = 20;
/// Delay after the first conflict; it doubles with each further one.
const FIRST_DELAY: Duration = Duration::from_millis(2);
/// Longest delay between attempts.
const LONGEST_DELAY: Duration = Duration::from_millis(250);

/// The delay before attempt `n` (from 1), without jitter.
pub fn delay(n: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
        .min(LONGEST_DELAY)
}

/// Runs `attempt` (a fresh read, a change, a conditional write) until it does not fail with
/// [`Error::Conflict`], at most [`ATTEMPTS`] times; then the last conflict is returned.
pub async fn on_conflict<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt().await {
            Err(conflict @ Error::Conflict { .. }) if tried >= ATTEMPTS => return Err(conflict),
            Err(Error::Conflict { .. }) => {
                let jitter = rand::rng().random_range(0.5..1.5);
                tokio::time::sleep(delay(tried).mul_f64(jitter)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn conflict() -> Error {
        Error::Conflict {
            kind: "Stack".into(),
            name: "s".into(),
        }
    }

    #[test]
    fn delays_grow_and_level_out() {
        let delays: Vec<u64> = (1..=9).map(|n| delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 250, 250]);
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_are_retried_a_bounded_number_of_times() {
        let calls = AtomicU32::new(0);
        let won = on_conflict(|| async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 { Err(conflict()) } else { Ok(n) }
        })
        .await;
        assert_eq!(won.unwrap(), 3);

        calls.store(0, Ordering::SeqCst);
        let lost: Result<()> = on_conflict(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(conflict())
        })
        .await;
        assert!(matches!(lost, Err(Error::Conflict { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);

        calls.store(0, Ordering::SeqCst);
        let other: Result<()> = on_conflict(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::Invalid("no".into()))
        })
        .await;
        assert!(matches!(other, Err(Error::Invalid(_))));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "other errors are not retried"
        );
    }
}
