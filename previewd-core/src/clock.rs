//! The source of "now": the system clock in production, a settable clock in tests.

use std::sync::{Arc, Mutex, PoisonError};

use jiff::{SignedDuration, Timestamp};

/// Tells the current time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug)]
pub struct FixedClock {
    now: Mutex<Timestamp>,
}

impl FixedClock {
    /// A clock stopped at `now`.
    pub fn new(now: Timestamp) -> Self {
        FixedClock {
            now: Mutex::new(now),
        }
    }

    /// Sets the time.
    pub fn set(&self, now: Timestamp) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Moves the time forward (or back, for a negative duration), saturating at the
    /// representable range.
    pub fn advance(&self, by: SignedDuration) {
        let mut guard = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = if by.is_negative() {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        };
        *guard = guard.checked_add(by).unwrap_or(limit);
    }
}

impl Default for FixedClock {
    /// Stopped at the Unix epoch.
    fn default() -> Self {
        FixedClock::new(Timestamp::UNIX_EPOCH)
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Box<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let start: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let clock = FixedClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(SignedDuration::from_hours(2));
        assert_eq!(clock.now(), "2025-01-01T02:00:00Z".parse().unwrap());
        clock.advance(SignedDuration::from_mins(-30));
        assert_eq!(clock.now(), "2025-01-01T01:30:00Z".parse().unwrap());
        clock.set(start);
        assert_eq!(clock.now(), start);
        clock.advance(SignedDuration::MAX);
        assert_eq!(clock.now(), Timestamp::MAX);
    }

    #[test]
    fn shared_clock_is_usable_as_trait_object() {
        let clock: Arc<dyn Clock> = Arc::new(FixedClock::default());
        assert_eq!(clock.now(), Timestamp::UNIX_EPOCH);
        let system = SystemClock;
        assert!(system.now() > "2020-01-01T00:00:00Z".parse().unwrap());
    }
}
