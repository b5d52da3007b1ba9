//! The one way rsgo reads a duration, wherever one is written (health checks, key expiry): a
//! number with units as in `30d`, `12h`, `90m`, `45s`, `1h30m` or `2 hours`, an ISO 8601
//! duration such as `PT5M`, or a bare number of seconds. Days are 24 hours; months and years,
//! whose length varies, are refused.

use std::time::Duration;

use jiff::{Span, SpanRelativeTo};

/// Parses a duration; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "'{}' is not a duration; write a number with a unit, such as 30s, 10m, 12h or 30d",
            text.chars().take(64).collect::<String>()
        )
    };
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let span: Span = text
        .parse()
        .map_err(|e: jiff::Error| format!("{} ({e})", invalid()))?;
    let duration = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("{}; months and years vary in length", invalid()))?;
    Duration::try_from(duration).map_err(|_| format!("'{text}' is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar_for_every_duration() {
        let cases = [
            ("45", 45),
            ("45s", 45),
            ("90m", 5_400),
            ("12h", 43_200),
            ("30d", 2_592_000),
            ("1h30m", 5_400),
            ("2 hours", 7_200),
            ("PT5M", 300),
            ("1w", 604_800),
        ];
        for (text, seconds) in cases {
            assert_eq!(parse(text), Ok(Duration::from_secs(seconds)), "{text}");
        }
        for bad in ["", "soon", "5x", "1 month", "2y", "-5s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
