//! Logging refused requests without letting a flood of them flood the log: a refusal after a
//! quiet spell is logged at once, and further ones are counted and summed up once per period.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a summary of counted refusals is logged at most.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(10);

/// Counts of refused requests, by reason, since the last log line.
#[derive(Debug, Default)]
pub struct RefusalLog {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    counts: BTreeMap<&'static str, u64>,
}

impl RefusalLog {
    /// Records one refused request. `reason` names the refusal (never any part of a key);
    /// `detail` adds what a person needs, such as the permission that was missing.
    pub fn refused(&self, reason: &'static str, detail: &str) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let quiet = state
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= SUMMARY_PERIOD);
        if quiet && state.counts.is_empty() {
            state.last_logged = Some(now);
            drop(state);
            tracing::warn!(reason, detail, "refused a request");
            return;
        }
        *state.counts.entry(reason).or_default() += 1;
        if quiet {
            Self::summarize(&mut state, now);
        }
    }

    /// Logs the counts gathered so far, if any; called once per period by a timer so a burst
    /// followed by silence is still reported.
    pub fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.counts.is_empty() {
            Self::summarize(&mut state, Instant::now());
        }
    }

    fn summarize(state: &mut State, now: Instant) {
        let counts = std::mem::take(&mut state.counts);
        let total: u64 = counts.values().sum();
        let by_reason: Vec<String> = counts.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        state.last_logged = Some(now);
        tracing::warn!(
            total,
            by_reason = %by_reason.join(", "),
            "refused more requests since the last report"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_counted_not_logged_line_by_line() {
        let log = RefusalLog::default();
        log.refused("unknown key", "");
        for _ in 0..1000 {
            log.refused("unknown key", "");
        }
        log.refused("missing key", "");
        let state = log.state.lock().unwrap();
        assert_eq!(state.counts["unknown key"], 1000);
        assert_eq!(state.counts["missing key"], 1);
        drop(state);
        log.flush();
        assert!(log.state.lock().unwrap().counts.is_empty());
    }
}
