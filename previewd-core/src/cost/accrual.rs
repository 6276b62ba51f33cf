//! Spend to date, integrated from the hourly rate between observations.
//!
//! The controller observes the environment's rate (from its pods and volumes) at every
//! reconcile, and a pod or volume that changes wakes the environment within seconds.
//! Between two observations the rate recorded at the first one is in effect, so the
//! spend is the left Riemann sum of the observed rate, which is the exact integral of
//! the rate as the controller saw it change.
//!
//! The whole state is persisted in the environment's status: the amount, the instant it
//! was accrued to and the rate in effect since. Accruing is a pure function of that
//! state and the time, so it is exact across operator restarts, and a reconcile that
//! reads an older status (a stale cache, a write lost in a crash) accrues again from the
//! older state and arrives at the same amount: nothing is counted twice.
//!
//! Exactness: rates are whole micro-dollars per hour and intervals whole seconds, so
//! `rate × seconds` is an exact count of 1/3600 micro-dollars. The part below a
//! micro-dollar is carried in the state ([`Accrual::carry`]) instead of being rounded
//! away, so the amount is always the exact integral rounded down, however many steps it
//! took. The instant is advanced by whole seconds only (Kubernetes stores timestamps to
//! the second); the fraction of a second left over is accrued next time.

use jiff::Timestamp;

use super::money::Money;

/// 1/3600 micro-dollars per micro-dollar: a rate in micro-dollars per hour applied for
/// one second.
const PER_SECOND: i64 = 3600;

/// The accrued spend of one environment and the rate in effect since it was accrued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accrual {
    /// Spent up to `accrued_at`, rounded down to the micro-dollar.
    pub spent: Money,
    /// What was spent below a micro-dollar, in 1/3600 micro-dollars (`0..3600`).
    pub carry: u32,
    /// The instant `spent` covers, to the second.
    pub accrued_at: Timestamp,
    /// The hourly rate in effect since `accrued_at`.
    pub hourly: Money,
}

impl Accrual {
    /// Nothing spent yet; `hourly` applies from `at`.
    pub fn start(at: Timestamp, hourly: Money) -> Accrual {
        Accrual {
            spent: Money::ZERO,
            carry: 0,
            accrued_at: whole_second(at),
            hourly,
        }
    }

    /// The spend up to `now` at the recorded rate. `not_before` (the environment's
    /// creation) bounds the interval: nothing is accrued for time before it, whatever
    /// the recorded instant says. Time running backwards accrues nothing and leaves the
    /// instant where it was.
    pub fn advance(&self, now: Timestamp, not_before: Timestamp) -> Accrual {
        let from = self.accrued_at.max(whole_second(not_before));
        let to = whole_second(now);
        if to <= from {
            return *self;
        }
        let seconds = to.as_second() - from.as_second();
        let units = i128::from(self.hourly.micros()) * i128::from(seconds)
            + i128::from(self.carry.min(PER_SECOND as u32 - 1));
        let whole = units / i128::from(PER_SECOND);
        let carry = (units % i128::from(PER_SECOND)) as u32;
        let whole = i64::try_from(whole).unwrap_or(i64::MAX);
        Accrual {
            spent: self.spent.saturating_add(Money::from_micros(whole)),
            carry,
            accrued_at: to,
            hourly: self.hourly,
        }
    }

    /// Accrues up to `now`, then applies `hourly` from there on.
    pub fn observe(&self, now: Timestamp, not_before: Timestamp, hourly: Money) -> Accrual {
        Accrual {
            hourly,
            ..self.advance(now, not_before)
        }
    }

    /// What to persist after observing `hourly` at `now`: accrued to `now` when the rate
    /// changed or at least `every` has passed since the last accrual, else the state
    /// unchanged (the pending time is accrued later at the same rate, so the result is
    /// the same; this only keeps an idle environment's status from being rewritten at
    /// every reconcile).
    pub fn persisted(
        &self,
        now: Timestamp,
        not_before: Timestamp,
        hourly: Money,
        every: std::time::Duration,
    ) -> Accrual {
        let due = whole_second(now).as_second() - self.accrued_at.as_second()
            >= i64::try_from(every.as_secs()).unwrap_or(i64::MAX);
        if hourly != self.hourly || due {
            self.observe(now, not_before, hourly)
        } else {
            *self
        }
    }
}

/// `t` truncated to the whole second.
fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn one_hour_at_a_rate_is_the_rate() {
        let a = Accrual::start(t(0), Money::from_micros(37_500));
        assert_eq!(a.advance(t(3600), t(0)).spent, Money::from_micros(37_500));
    }

    #[test]
    fn the_fraction_is_carried_not_rounded_away() {
        // 1 micro-dollar per hour, accrued every second: each step is 1/3600 µ$.
        let mut a = Accrual::start(t(0), Money::from_micros(1));
        for s in 1..=7200 {
            a = a.advance(t(s), t(0));
        }
        assert_eq!(a.spent, Money::from_micros(2));
        assert_eq!(a.carry, 0);
    }

    #[test]
    fn a_stale_state_accrues_to_the_same_amount() {
        let start = Accrual::start(t(0), Money::from_micros(40_000));
        let written = start.advance(t(1000), t(0));
        // A reconcile that still sees `start` (stale cache) and one that sees `written`.
        assert_eq!(start.advance(t(5000), t(0)), written.advance(t(5000), t(0)));
    }

    #[test]
    fn nothing_before_creation_or_backwards() {
        let a = Accrual::start(t(-86_400), Money::from_micros(3600));
        // Recorded a day before creation: only time since creation counts.
        assert_eq!(a.advance(t(10), t(0)).spent, Money::from_micros(10));
        let b = a.advance(t(10), t(0));
        assert_eq!(b.advance(t(5), t(0)), b);
    }

    #[test]
    fn sub_second_time_is_kept_for_later() {
        let a = Accrual::start(t(0), Money::from_micros(3600));
        let half = t(1)
            .checked_add(jiff::SignedDuration::from_millis(500))
            .unwrap();
        let b = a.advance(half, t(0));
        assert_eq!(b.accrued_at, t(1));
        assert_eq!(b.spent, Money::from_micros(1));
    }

    #[test]
    fn persisted_only_on_change_or_when_due() {
        let every = std::time::Duration::from_secs(900);
        let rate = Money::from_micros(3600);
        let a = Accrual::start(t(0), rate);
        assert_eq!(a.persisted(t(899), t(0), rate, every), a);
        assert_eq!(
            a.persisted(t(900), t(0), rate, every).spent,
            Money::from_micros(900)
        );
        let changed = a.persisted(t(10), t(0), Money::ZERO, every);
        assert_eq!(changed.spent, Money::from_micros(10));
        assert_eq!(changed.hourly, Money::ZERO);
    }
}
