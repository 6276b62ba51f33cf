//! Hourly prices, cost estimates and the cost of time already run.
//!
//! Prices are per hour of a *requested* resource (what the scheduler reserves), and
//! memory and storage are priced per **GiB** (2^30 bytes), the unit Kubernetes
//! quantities use (`512Mi`, `1Gi`) and the unit cloud providers actually bill memory
//! in even where their price lists say "GB". Defaults: $0.04 per core-hour, $0.005 per
//! GiB-hour of memory, $0.073 per GiB-month of storage (exactly $0.0001 per GiB-hour).
//! Network egress is not metered: the `network` part is a configurable flat hourly rate
//! per running environment, zero by default.
//!
//! A month is 730 hours (365 × 24 / 12), the convention of cloud price lists.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::money::{Money, mul_div_round};
use super::quantity::ResourceRequests;

const GIB: u64 = 1 << 30;
/// Hours in the month used for monthly figures (365 × 24 / 12).
pub const HOURS_PER_MONTH: u64 = 730;

/// Hourly prices of requested resources (memory and storage per GiB, see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Pricing {
    /// Price of one requested CPU core for one hour (default $0.04).
    pub cpu_per_core_hour: Money,
    /// Price of one GiB of requested memory for one hour (default $0.005).
    pub memory_per_gib_hour: Money,
    /// Price of one GiB of persistent storage for one month of 730 hours (default
    /// $0.073, that is $0.0001 per GiB-hour).
    pub storage_per_gib_month: Money,
    /// Flat network price of an environment that runs at least one pod, per hour
    /// (default zero: egress is not metered).
    pub network_per_hour: Money,
}

impl Pricing {
    /// The default prices.
    pub const DEFAULT: Pricing = Pricing {
        cpu_per_core_hour: Money::from_micros(40_000),
        memory_per_gib_hour: Money::from_micros(5_000),
        storage_per_gib_month: Money::from_micros(73_000),
        network_per_hour: Money::ZERO,
    };
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing::DEFAULT
    }
}

/// Hourly cost split by kind; the parts add up exactly to [`CostEstimate::hourly`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostBreakdown {
    /// CPU and memory.
    pub compute: Money,
    /// Persistent storage.
    pub storage: Money,
    /// Network: the flat hourly rate while pods run (zero by default).
    pub network: Money,
}

impl CostBreakdown {
    /// Sum of the parts.
    pub fn total(&self) -> Money {
        self.compute + self.storage + self.network
    }
}

/// What an environment costs to keep running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostEstimate {
    /// Cost per hour (rounded half-up to the micro-dollar).
    pub hourly: Money,
    /// `hourly × 24`.
    pub daily: Money,
    /// `hourly × 730`.
    pub monthly: Money,
    /// The hourly cost split by kind.
    pub breakdown: CostBreakdown,
}

impl CostEstimate {
    /// Estimate for CPU and memory requests, without storage.
    pub fn estimate(requests: &ResourceRequests, pricing: &Pricing) -> CostEstimate {
        CostEstimate::estimate_with_storage(requests, 0, pricing)
    }

    /// Estimate for CPU and memory requests plus `storage_bytes` of persistent storage
    /// (network not charged).
    pub fn estimate_with_storage(
        requests: &ResourceRequests,
        storage_bytes: u64,
        pricing: &Pricing,
    ) -> CostEstimate {
        CostEstimate::estimate_running(requests, storage_bytes, false, pricing)
    }

    /// Estimate for CPU and memory requests and `storage_bytes` of persistent storage,
    /// with the flat network rate when `running` (at least one pod exists).
    pub fn estimate_running(
        requests: &ResourceRequests,
        storage_bytes: u64,
        running: bool,
        pricing: &Pricing,
    ) -> CostEstimate {
        // One rounding for compute: cpu·p_cpu/1000 + mem·p_mem/2^30 over a common
        // denominator, so CPU and memory are not rounded separately.
        let den = 1000u128 * GIB as u128;
        let cpu = (requests.cpu_millicores as u128)
            .checked_mul(pricing.cpu_per_core_hour.micros() as u128)
            .and_then(|v| v.checked_mul(GIB as u128));
        let mem = (requests.memory_bytes as u128)
            .checked_mul(pricing.memory_per_gib_hour.micros() as u128)
            .and_then(|v| v.checked_mul(1000));
        let compute = match cpu.zip(mem).and_then(|(c, m)| c.checked_add(m)) {
            Some(num) => Money::from_micros(mul_div_round(num, 1, den)),
            None => Money::MAX,
        };
        let storage = Money::from_micros(mul_div_round(
            storage_bytes as u128,
            pricing.storage_per_gib_month.micros() as u128,
            GIB as u128 * HOURS_PER_MONTH as u128,
        ));
        let breakdown = CostBreakdown {
            compute,
            storage,
            network: if running {
                pricing.network_per_hour
            } else {
                Money::ZERO
            },
        };
        let hourly = breakdown.total();
        CostEstimate {
            hourly,
            daily: hourly.saturating_mul(24),
            monthly: hourly.saturating_mul(HOURS_PER_MONTH),
            breakdown,
        }
    }

    /// What running for `running_for` costs at this hourly rate (rounded half-up to the
    /// micro-dollar). One hour gives exactly `hourly`.
    pub fn accrued(&self, running_for: Duration) -> Money {
        self.hourly
            .mul_ratio(running_for.as_nanos(), 3_600 * 1_000_000_000)
    }
}

/// Cost of running `requests` for `running_for` at `pricing` (CPU and memory only).
pub fn actual_cost(requests: &ResourceRequests, pricing: &Pricing, running_for: Duration) -> Money {
    CostEstimate::estimate(requests, pricing).accrued(running_for)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MI: u64 = 1 << 20;

    fn money(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn three_small_services_with_default_prices() {
        let small = ResourceRequests {
            cpu_millicores: 250,
            memory_bytes: 512 * MI,
        };
        let total: ResourceRequests = std::iter::repeat_n(small, 3).sum();
        let est = CostEstimate::estimate(&total, &Pricing::default());
        // 0.75 core × $0.04 = $0.03; 1.5 GiB × $0.005 = $0.0075; per hour $0.0375.
        assert_eq!(est.hourly, money("0.0375"));
        assert_eq!(est.breakdown.compute, money("0.0375"));
        assert_eq!(est.breakdown.storage, Money::ZERO);
        assert_eq!(est.breakdown.network, Money::ZERO);
        // Per day 24 × $0.0375 = $0.90; per month 730 × $0.0375 = $27.375.
        assert_eq!(est.daily, money("0.90"));
        assert_eq!(est.monthly, money("27.375"));
        assert_eq!(est.monthly.to_string(), "$27.38");
        // Two and a half hours: $0.09375.
        assert_eq!(
            actual_cost(&total, &Pricing::default(), Duration::from_secs(9000)),
            money("0.09375")
        );
        assert_eq!(est.accrued(Duration::from_secs(3600)), est.hourly);
    }

    #[test]
    fn storage_is_priced_per_gib_month() {
        let est = CostEstimate::estimate_with_storage(
            &ResourceRequests::ZERO,
            10 << 30,
            &Pricing::default(),
        );
        assert_eq!(est.breakdown.storage, money("0.001"));
        assert_eq!(est.hourly, est.breakdown.total());
        assert_eq!(est.breakdown.network, Money::ZERO);
        let pricing = Pricing {
            network_per_hour: money("0.01"),
            ..Pricing::default()
        };
        let running = CostEstimate::estimate_running(&ResourceRequests::ZERO, 0, true, &pricing);
        assert_eq!(running.hourly, money("0.01"));
        let idle = CostEstimate::estimate_running(&ResourceRequests::ZERO, 0, false, &pricing);
        assert_eq!(idle.hourly, Money::ZERO);
    }

    #[test]
    fn rounding_is_half_up_at_the_micro_dollar() {
        // 1 millicore × $0.04 = $0.00004 = 40 micros exactly; 1 byte of memory is
        // 5000/2^30 micros, rounds to zero.
        let est = CostEstimate::estimate(
            &ResourceRequests {
                cpu_millicores: 1,
                memory_bytes: 1,
            },
            &Pricing::default(),
        );
        assert_eq!(est.hourly.micros(), 40);
        // 1 millicore at $0.0005/core-hour is 0.5 micros: rounds up.
        let pricing = Pricing {
            cpu_per_core_hour: money("0.0005"),
            ..Pricing::default()
        };
        let est = CostEstimate::estimate(
            &ResourceRequests {
                cpu_millicores: 1,
                memory_bytes: 0,
            },
            &pricing,
        );
        assert_eq!(est.hourly.micros(), 1);
    }

    #[test]
    fn pricing_serde_defaults() {
        let p: Pricing = serde_json::from_str(r#"{"cpuPerCoreHour":"$0.05"}"#).unwrap();
        assert_eq!(p.cpu_per_core_hour, money("0.05"));
        assert_eq!(p.memory_per_gib_hour, money("0.005"));
        let json = serde_json::to_value(Pricing::default()).unwrap();
        assert_eq!(json["memoryPerGibHour"], "$0.005");
    }

    #[test]
    fn schemas_inline_money_as_patterned_strings() {
        let schema = serde_json::to_value(schemars::schema_for!(Pricing)).unwrap();
        let cpu = &schema["properties"]["cpuPerCoreHour"];
        assert_eq!(cpu["type"], "string");
        assert_eq!(cpu["pattern"], Money::PATTERN);
        assert!(!schema.to_string().contains("$ref"), "{schema}");
    }
}
