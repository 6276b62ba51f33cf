//! Resource tiers: the size of each service's container in a preview environment.
//!
//! | tier      | CPU request | memory request | CPU limit | memory limit |
//! |-----------|-------------|----------------|-----------|--------------|
//! | `minimal` | 100m        | 256Mi          | 200m      | 256Mi        |
//! | `small`   | 250m        | 512Mi          | 500m      | 512Mi        |
//! | `medium`  | 500m        | 1Gi            | 1         | 1Gi          |
//! | `large`   | 1           | 2Gi            | 2         | 2Gi          |
//!
//! Limits are twice the CPU request (previews are bursty: a cold start compiles,
//! warms caches, runs migrations) and exactly the memory request (memory cannot be
//! reclaimed without killing the pod, so requesting less than the limit only invites
//! out-of-memory kills on a busy node). Cost is computed from requests, which is what
//! the scheduler reserves.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cost::{ResourceRequests, format_cpu, format_memory};

const MI: u64 = 1024 * 1024;

/// Expected lifespans shorter than this may run on spot capacity: 4 hours.
pub const SPOT_MAX_LIFESPAN: Duration = Duration::from_secs(4 * 3600);

/// The size of a service's container.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// 100m CPU, 256Mi memory.
    Minimal,
    /// 250m CPU, 512Mi memory (the default).
    #[default]
    Small,
    /// 500m CPU, 1Gi memory.
    Medium,
    /// 1 CPU, 2Gi memory.
    Large,
}

impl Tier {
    /// Every tier, smallest first.
    pub const ALL: [Tier; 4] = [Tier::Minimal, Tier::Small, Tier::Medium, Tier::Large];

    /// The lowercase name, as serialised.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Minimal => "minimal",
            Tier::Small => "small",
            Tier::Medium => "medium",
            Tier::Large => "large",
        }
    }

    /// Resource requests of one container of this tier.
    pub const fn requests(self) -> ResourceRequests {
        let (cpu_millicores, memory_bytes) = match self {
            Tier::Minimal => (100, 256 * MI),
            Tier::Small => (250, 512 * MI),
            Tier::Medium => (500, 1024 * MI),
            Tier::Large => (1000, 2048 * MI),
        };
        ResourceRequests {
            cpu_millicores,
            memory_bytes,
        }
    }

    /// Resource limits of one container: twice the CPU request, the memory request.
    pub const fn limits(self) -> ResourceRequests {
        let r = self.requests();
        ResourceRequests {
            cpu_millicores: r.cpu_millicores * 2,
            memory_bytes: r.memory_bytes,
        }
    }

    /// CPU request as a Kubernetes quantity (`"250m"`, `"1"`).
    pub fn cpu_quantity(self) -> String {
        format_cpu(self.requests().cpu_millicores)
    }

    /// Memory request as a Kubernetes quantity (`"512Mi"`, `"1Gi"`).
    pub fn memory_quantity(self) -> String {
        format_memory(self.requests().memory_bytes)
    }

    /// CPU limit as a Kubernetes quantity.
    pub fn cpu_limit_quantity(self) -> String {
        format_cpu(self.limits().cpu_millicores)
    }

    /// Memory limit as a Kubernetes quantity.
    pub fn memory_limit_quantity(self) -> String {
        format_memory(self.limits().memory_bytes)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A string that names no [`Tier`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?} (expected minimal, small, medium or large)")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_owned()))
    }
}

/// Whether an environment may run on spot (preemptible) capacity: only when spot is
/// allowed and the expected lifespan is shorter than [`SPOT_MAX_LIFESPAN`] (short-lived
/// previews tolerate a reclaim; long-lived ones would be interrupted too often).
pub fn use_spot(expected_lifespan: Duration, allowed: bool) -> bool {
    allowed && expected_lifespan < SPOT_MAX_LIFESPAN
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cost::{parse_cpu, parse_memory};

    #[test]
    fn requests_and_quantities_agree() {
        let expected = [
            (Tier::Minimal, "100m", "256Mi", "200m", "256Mi"),
            (Tier::Small, "250m", "512Mi", "500m", "512Mi"),
            (Tier::Medium, "500m", "1Gi", "1", "1Gi"),
            (Tier::Large, "1", "2Gi", "2", "2Gi"),
        ];
        for (tier, cpu, mem, cpu_lim, mem_lim) in expected {
            assert_eq!(tier.cpu_quantity(), cpu);
            assert_eq!(tier.memory_quantity(), mem);
            assert_eq!(tier.cpu_limit_quantity(), cpu_lim);
            assert_eq!(tier.memory_limit_quantity(), mem_lim);
            let r = tier.requests();
            assert_eq!(parse_cpu(cpu).unwrap(), r.cpu_millicores);
            assert_eq!(parse_memory(mem).unwrap(), r.memory_bytes);
            assert!(tier.limits().cpu_millicores >= r.cpu_millicores);
            assert!(tier.limits().memory_bytes >= r.memory_bytes);
        }
        assert_eq!(Tier::Small.requests().cpu_millicores, 250);
        assert_eq!(Tier::Large.requests().memory_bytes, 2 * 1024 * 1024 * 1024);
    }

    #[test]
    fn order_default_and_serde() {
        assert!(Tier::Minimal < Tier::Small && Tier::Medium < Tier::Large);
        assert_eq!(Tier::default(), Tier::Small);
        assert_eq!(serde_json::to_string(&Tier::Medium).unwrap(), "\"medium\"");
        assert_eq!(
            serde_json::from_str::<Tier>("\"large\"").unwrap(),
            Tier::Large
        );
        assert!(serde_json::from_str::<Tier>("\"Large\"").is_err());
        assert_eq!("minimal".parse::<Tier>().unwrap(), Tier::Minimal);
        assert_eq!(Tier::Small.to_string(), "small");
        assert!("huge".parse::<Tier>().is_err());
    }

    #[test]
    fn spot_only_for_short_lived_and_allowed() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert!(use_spot(h(1), true));
        assert!(use_spot(h(4) - Duration::from_secs(1), true));
        assert!(!use_spot(h(4), true));
        assert!(!use_spot(h(24), true));
        assert!(!use_spot(h(1), false));
    }
}
