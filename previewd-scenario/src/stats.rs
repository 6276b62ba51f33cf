//! Percentiles of durations, in milliseconds.

use std::time::Duration;

use serde::Serialize;

/// p50, p95, p99 and max of a sample, in milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Sample size.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Nearest-rank percentiles of `sample`.
pub fn percentiles(sample: &[Duration]) -> Percentiles {
    let mut v = sample.to_vec();
    v.sort();
    if v.is_empty() {
        return Percentiles::default();
    }
    let rank = |p: f64| -> Duration {
        let r = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[r.clamp(1, v.len()) - 1]
    };
    Percentiles {
        n: v.len(),
        p50_ms: ms(rank(50.0)),
        p95_ms: ms(rank(95.0)),
        p99_ms: ms(rank(99.0)),
        max_ms: ms(v[v.len() - 1]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let sample: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&sample);
        assert_eq!(
            (p.n, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(percentiles(&[]).n, 0);
        assert_eq!(percentiles(&[Duration::from_millis(7)]).p99_ms, 7.0);
    }
}
