//! GitHub's secondary rate limits as a budget that every request of one client (one
//! installation) waits for before it is sent.
//!
//! GitHub documents, for REST: at most 100 concurrent requests; at most 900 points a
//! minute per endpoint, a `GET` costing 1 point and a `POST`, `PATCH`, `PUT` or `DELETE`
//! 5; and "in general, no more than 80 content-generating requests per minute and no
//! more than 500 content-generating requests per hour". There is no way to read how much
//! of it is left, so the client keeps its own account, below the documented figures:
//! every mutation is taken for a content-generating request (commit statuses, deployment
//! statuses and comments all are), and points are counted across endpoints, which is
//! stricter than per endpoint. Concurrency is bounded by a semaphore in the client, and
//! mutations go one at a time through its write gate.
//!
//! The account is a log of what was sent in the last hour: pure, so every rule is tested
//! with made-up instants.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Points of a read (`GET`, `HEAD`).
pub const READ_POINTS: u32 = 1;
/// Points of a mutation (`POST`, `PATCH`, `PUT`, `DELETE`).
pub const WRITE_POINTS: u32 = 5;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// How much a client may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Mutations in any 60 s (GitHub: 80 content-generating requests a minute).
    pub writes_per_minute: u32,
    /// Mutations in any hour (GitHub: 500 content-generating requests an hour).
    pub writes_per_hour: u32,
    /// Points in any 60 s (GitHub: 900 per endpoint).
    pub points_per_minute: u32,
}

impl Default for BudgetLimits {
    /// Below GitHub's documented limits: 60 mutations a minute (one a second, GitHub's
    /// advice for mutations), 450 an hour, 750 points a minute.
    fn default() -> Self {
        BudgetLimits {
            writes_per_minute: 60,
            writes_per_hour: 450,
            points_per_minute: 750,
        }
    }
}

impl BudgetLimits {
    /// No limit worth the name (tests against a local server).
    pub fn unlimited() -> Self {
        BudgetLimits {
            writes_per_minute: u32::MAX,
            writes_per_hour: u32::MAX,
            points_per_minute: u32::MAX,
        }
    }
}

/// What was sent, and what may be sent next.
#[derive(Debug)]
pub struct Budget {
    limits: BudgetLimits,
    /// Times of the mutations of the last hour, oldest first.
    writes: VecDeque<Instant>,
    /// Times and points of the requests of the last minute, oldest first.
    points: VecDeque<(Instant, u32)>,
}

impl Budget {
    /// An empty account under `limits`.
    pub fn new(limits: BudgetLimits) -> Self {
        Budget {
            limits,
            writes: VecDeque::new(),
            points: VecDeque::new(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    fn forget(&mut self, now: Instant) {
        while self
            .writes
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= HOUR)
        {
            self.writes.pop_front();
        }
        while self
            .points
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= MINUTE)
        {
            self.points.pop_front();
        }
    }

    /// The earliest moment, `now` or later, at which a request (a mutation when
    /// `write`) stays within every limit.
    pub fn ready_at(&mut self, now: Instant, write: bool) -> Instant {
        self.forget(now);
        let mut at = now;
        if write {
            // The n-th newest mutation leaves the window when a new one would be the
            // (limit + 1)-th within it.
            let window = |limit: u32, span: Duration, writes: &VecDeque<Instant>| {
                let limit = limit.max(1) as usize;
                let recent: Vec<&Instant> = writes
                    .iter()
                    .filter(|t| now.saturating_duration_since(**t) < span)
                    .collect();
                (recent.len() >= limit).then(|| *recent[recent.len() - limit] + span)
            };
            if let Some(t) = window(self.limits.writes_per_minute, MINUTE, &self.writes) {
                at = at.max(t);
            }
            if let Some(t) = window(self.limits.writes_per_hour, HOUR, &self.writes) {
                at = at.max(t);
            }
        }
        let cost = if write { WRITE_POINTS } else { READ_POINTS };
        let limit = self.limits.points_per_minute.max(WRITE_POINTS);
        let mut used: u64 = self.points.iter().map(|(_, p)| u64::from(*p)).sum();
        if used + u64::from(cost) > u64::from(limit) {
            // Wait until enough of the oldest points leave the window.
            for (t, p) in &self.points {
                used -= u64::from(*p);
                if used + u64::from(cost) <= u64::from(limit) {
                    at = at.max(*t + MINUTE);
                    break;
                }
            }
        }
        at
    }

    /// Records a request sent at `at`.
    pub fn record(&mut self, at: Instant, write: bool) {
        self.forget(at);
        if write {
            self.writes.push_back(at);
        }
        self.points
            .push_back((at, if write { WRITE_POINTS } else { READ_POINTS }));
    }

    /// Mutations in the hour before `now`.
    pub fn writes_last_hour(&mut self, now: Instant) -> usize {
        self.forget(now);
        self.writes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn mutations_stay_under_the_minute_and_the_hour() {
        let t0 = Instant::now();
        let mut budget = Budget::new(BudgetLimits {
            writes_per_minute: 3,
            writes_per_hour: 5,
            points_per_minute: 10_000,
        });
        for i in 0..3 {
            let t = t0 + secs(i);
            assert_eq!(budget.ready_at(t, true), t);
            budget.record(t, true);
        }
        // A fourth mutation waits until the first leaves the minute.
        assert_eq!(budget.ready_at(t0 + secs(3), true), t0 + secs(60));
        // Reads are not mutations.
        assert_eq!(budget.ready_at(t0 + secs(3), false), t0 + secs(3));
        budget.record(t0 + secs(60), true);
        budget.record(t0 + secs(61), true);
        // Five in the hour: the sixth waits until the first is an hour old.
        assert_eq!(budget.ready_at(t0 + secs(200), true), t0 + secs(3600));
        assert_eq!(budget.writes_last_hour(t0 + secs(200)), 5);
        assert_eq!(budget.ready_at(t0 + secs(3600), true), t0 + secs(3600));
    }

    #[test]
    fn points_count_reads_one_and_mutations_five() {
        let t0 = Instant::now();
        let mut budget = Budget::new(BudgetLimits {
            writes_per_minute: 1000,
            writes_per_hour: 1000,
            points_per_minute: 12,
        });
        budget.record(t0, true); // 5
        budget.record(t0 + secs(1), true); // 10
        budget.record(t0 + secs(2), false); // 11
        // One more read fits (12), a mutation does not until the first leaves.
        assert_eq!(budget.ready_at(t0 + secs(3), false), t0 + secs(3));
        assert_eq!(budget.ready_at(t0 + secs(3), true), t0 + secs(60));
        budget.record(t0 + secs(3), false); // 12
        assert_eq!(budget.ready_at(t0 + secs(4), false), t0 + secs(60));
        // After the first mutation leaves, 7 points are used: a mutation fits.
        assert_eq!(budget.ready_at(t0 + secs(60), true), t0 + secs(60));
    }

    #[test]
    fn the_default_budget_is_under_githubs_documented_limits() {
        let limits = BudgetLimits::default();
        assert!(limits.writes_per_minute < 80);
        assert!(limits.writes_per_hour < 500);
        assert!(limits.points_per_minute < 900);
        // A steady stream at the default never sends more than documented in an hour.
        let t0 = Instant::now();
        let mut budget = Budget::new(limits);
        let mut t = t0;
        let mut sent = 0;
        while t < t0 + HOUR {
            t = budget.ready_at(t, true);
            if t >= t0 + HOUR {
                break;
            }
            budget.record(t, true);
            sent += 1;
        }
        assert_eq!(sent, 450);
    }
}
