//! Retry timing shared by every client previewd has (the controller's requeues, the
//! GitHub client, the AI provider layers): one exponential backoff with jitter, and one
//! parser of the `Retry-After` header.
//!
//! Randomness is the caller's: [`Backoff::delay`] takes the jitter as a fraction in
//! `[0, 1]`, so the controller can derive it from an object's key (retries of many
//! objects spread out, and the same object always waits the same) while HTTP clients
//! draw it at random.

use std::time::Duration;

/// Exponential backoff: attempt `n` (1-based) waits up to `base × 2^(n-1)`, never more
/// than `max`, of which the last `jitter` share is randomised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Ceiling of the first retry.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// Share of the ceiling that is jittered, in `[0, 1]`: `0.5` is "equal jitter" (wait
    /// between half the ceiling and the ceiling), `0.1` keeps waits within 10 % of it.
    pub jitter: f64,
}

impl Backoff {
    /// Equal jitter: between half the ceiling and the ceiling.
    pub fn equal_jitter(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            jitter: 0.5,
        }
    }

    /// The ceiling of attempt `attempt` (1-based; 0 counts as 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before attempt `attempt`, with `fraction` (clamped to `[0, 1]`) choosing
    /// where in the jittered share it falls.
    pub fn delay(&self, attempt: u32, fraction: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(1.0 - jitter + jitter * fraction)
    }
}

/// A jitter fraction in `[0, 1)` derived from `key` (FNV-1a, then the SplitMix64
/// finaliser so that similar keys land far apart), for deterministic spread.
pub fn fraction_of(key: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    // 53 bits fit an f64 exactly.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait a `Retry-After` header value asks for, relative to `now`: delay-seconds
/// (integer, or fractional as some servers send) or an HTTP date (RFC 9110 IMF-fixdate
/// and the RFC 2822 forms). A date in the past waits zero; anything else is `None`.
pub fn retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = value.parse().ok()?;
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::try_from_secs_f64(secs).ok())
            .flatten();
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = when.as_millisecond().saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ceilings_double_and_stop_at_the_maximum() {
        let b = Backoff::equal_jitter(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u128> = (0..7).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_inside_its_share() {
        let b = Backoff::equal_jitter(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(3, 7.0), Duration::from_millis(400));
        assert_eq!(b.delay(3, f64::NAN), Duration::from_millis(200));
        let tight = Backoff { jitter: 0.1, ..b };
        assert_eq!(tight.delay(1, 0.0), Duration::from_millis(90));
        assert_eq!(tight.delay(1, 1.0), Duration::from_millis(100));
    }

    #[test]
    fn key_fractions_are_stable_and_spread() {
        assert_eq!(fraction_of("a/b"), fraction_of("a/b"));
        let fractions: Vec<f64> = (0..1000)
            .map(|i| fraction_of(&format!("env-{i}")))
            .collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let low = fractions.iter().filter(|f| **f < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below one half");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now: jiff::Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(
            retry_after("Sun, 29 Nov 2026 12:00:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after("Sun, 29 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            "-1",
            "soon",
            "1e400",
            "Someday, 99 Nov 2026 12:00:00 GMT",
        ] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }
}
