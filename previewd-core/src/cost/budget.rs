//! Spending limits and the verdict of checking costs against them.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::money::Money;

/// A budget is in the warning zone from this percentage of its limit.
pub const BUDGET_WARN_PERCENT: u64 = 80;

/// Spending limits of one environment (or of a repository's environments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Limit on the estimated cost per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<Money>,
    /// Limit on the total spent so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Money>,
}

/// What happens to an environment whose budget is exceeded (or would be, were it
/// created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPolicy {
    /// Condition `BudgetExceeded`, a Warning event and a line in the PR comment; the
    /// environment keeps running.
    #[default]
    Warn,
    /// As `warn`, and every workload is scaled to zero (namespace and volumes kept) until
    /// the budget allows it again or someone wakes it.
    Sleep,
    /// As `warn`, and the environment is deleted.
    Delete,
}

impl BudgetPolicy {
    /// The lowercase name, as serialised.
    pub const fn as_str(self) -> &'static str {
        match self {
            BudgetPolicy::Warn => "warn",
            BudgetPolicy::Sleep => "sleep",
            BudgetPolicy::Delete => "delete",
        }
    }
}

impl fmt::Display for BudgetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which limit of a [`Budget`] a verdict is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetLimit {
    /// The daily limit (compared with the estimated daily cost).
    Daily,
    /// The total limit (compared with the spend to date).
    Total,
}

impl fmt::Display for BudgetLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetLimit::Daily => "daily",
            BudgetLimit::Total => "total",
        })
    }
}

/// The outcome of checking costs against a [`Budget`].
///
/// A limit is exceeded when the amount is strictly above it; at or above
/// [`BUDGET_WARN_PERCENT`] of a (non-zero) limit the verdict is a warning. When several
/// apply, the most severe wins: total exceeded, daily exceeded, then warnings (total
/// before daily).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "verdict"
)]
pub enum BudgetVerdict {
    /// Comfortably within every limit (or no limits).
    WithinBudget,
    /// At least [`BUDGET_WARN_PERCENT`] of a limit is used.
    Warning {
        /// Which limit.
        limit: BudgetLimit,
        /// Estimated daily cost or spend to date.
        used: Money,
        /// The limit.
        allowed: Money,
    },
    /// The estimated daily cost is above the daily limit.
    DailyExceeded {
        /// Estimated cost per day.
        estimated_daily: Money,
        /// The daily limit.
        limit: Money,
    },
    /// The spend to date is above the total limit.
    TotalExceeded {
        /// Spent so far.
        spent: Money,
        /// The total limit.
        limit: Money,
    },
}

impl BudgetVerdict {
    /// True when a limit is exceeded (the environment should not be (re)created).
    pub const fn is_exceeded(&self) -> bool {
        matches!(
            self,
            BudgetVerdict::DailyExceeded { .. } | BudgetVerdict::TotalExceeded { .. }
        )
    }

    /// CamelCase reason word for conditions and Events.
    pub const fn reason(&self) -> &'static str {
        match self {
            BudgetVerdict::WithinBudget => "WithinBudget",
            BudgetVerdict::Warning { .. } => "BudgetWarning",
            BudgetVerdict::DailyExceeded { .. } => "DailyBudgetExceeded",
            BudgetVerdict::TotalExceeded { .. } => "TotalBudgetExceeded",
        }
    }
}

impl fmt::Display for BudgetVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetVerdict::WithinBudget => f.write_str("within budget"),
            BudgetVerdict::Warning {
                limit,
                used,
                allowed,
            } => {
                let pct = used.percent_of(*allowed).unwrap_or(0);
                write!(f, "{used} is {pct}% of the {limit} budget of {allowed}")
            }
            BudgetVerdict::DailyExceeded {
                estimated_daily,
                limit,
            } => write!(
                f,
                "estimated daily cost {estimated_daily} exceeds the daily budget of {limit}"
            ),
            BudgetVerdict::TotalExceeded { spent, limit } => {
                write!(f, "spent {spent}, above the total budget of {limit}")
            }
        }
    }
}

fn in_warning_zone(used: Money, limit: Money) -> bool {
    !limit.is_zero()
        && (used.micros() as i128) * 100 >= (limit.micros() as i128) * BUDGET_WARN_PERCENT as i128
}

impl Budget {
    /// No limits.
    pub const UNLIMITED: Budget = Budget {
        daily: None,
        total: None,
    };

    /// Checks the estimated daily cost and the spend to date against the limits.
    pub fn evaluate(&self, estimated_daily: Money, spent_to_date: Money) -> BudgetVerdict {
        if let Some(limit) = self.total
            && spent_to_date > limit
        {
            return BudgetVerdict::TotalExceeded {
                spent: spent_to_date,
                limit,
            };
        }
        if let Some(limit) = self.daily
            && estimated_daily > limit
        {
            return BudgetVerdict::DailyExceeded {
                estimated_daily,
                limit,
            };
        }
        if let Some(limit) = self.total
            && in_warning_zone(spent_to_date, limit)
        {
            return BudgetVerdict::Warning {
                limit: BudgetLimit::Total,
                used: spent_to_date,
                allowed: limit,
            };
        }
        if let Some(limit) = self.daily
            && in_warning_zone(estimated_daily, limit)
        {
            return BudgetVerdict::Warning {
                limit: BudgetLimit::Daily,
                used: estimated_daily,
                allowed: limit,
            };
        }
        BudgetVerdict::WithinBudget
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn money(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn policy_serde_is_lowercase() {
        assert_eq!(
            serde_json::to_string(&BudgetPolicy::Sleep).unwrap(),
            "\"sleep\""
        );
        assert_eq!(
            serde_json::from_str::<BudgetPolicy>("\"delete\"").unwrap(),
            BudgetPolicy::Delete
        );
        assert!(serde_json::from_str::<BudgetPolicy>("\"Delete\"").is_err());
        assert_eq!(BudgetPolicy::default(), BudgetPolicy::Warn);
        assert_eq!(BudgetPolicy::Warn.to_string(), "warn");
    }

    #[test]
    fn verdict_serde_is_camel_case() {
        let v = BudgetVerdict::DailyExceeded {
            estimated_daily: Money::from_cents(101),
            limit: Money::from_dollars(1),
        };
        let json = serde_json::to_value(v).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"verdict": "dailyExceeded", "estimatedDaily": "$1.01", "limit": "$1.00"})
        );
        assert_eq!(serde_json::from_value::<BudgetVerdict>(json).unwrap(), v);
    }

    #[test]
    fn budget_verdicts() {
        let budget = Budget {
            daily: Some(money("1.00")),
            total: Some(money("10.00")),
        };
        assert_eq!(
            budget.evaluate(money("0.50"), money("1")),
            BudgetVerdict::WithinBudget
        );
        assert_eq!(
            budget.evaluate(money("0.80"), money("1")),
            BudgetVerdict::Warning {
                limit: BudgetLimit::Daily,
                used: money("0.80"),
                allowed: money("1.00"),
            }
        );
        assert_eq!(
            budget.evaluate(money("0.79"), money("1")),
            BudgetVerdict::WithinBudget
        );
        // Equal to the limit is not exceeded.
        assert!(!budget.evaluate(money("1.00"), money("10")).is_exceeded());
        let daily = budget.evaluate(money("1.01"), money("1"));
        assert_eq!(
            daily,
            BudgetVerdict::DailyExceeded {
                estimated_daily: money("1.01"),
                limit: money("1.00"),
            }
        );
        assert_eq!(
            daily.to_string(),
            "estimated daily cost $1.01 exceeds the daily budget of $1.00"
        );
        // Total wins over daily.
        let total = budget.evaluate(money("5"), money("10.01"));
        assert_eq!(total.reason(), "TotalBudgetExceeded");
        assert!(total.is_exceeded());
        // Total warning wins over daily warning.
        match budget.evaluate(money("0.9"), money("9")) {
            BudgetVerdict::Warning { limit, .. } => assert_eq!(limit, BudgetLimit::Total),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            Budget::UNLIMITED.evaluate(Money::MAX, Money::MAX),
            BudgetVerdict::WithinBudget
        );
        let zero = Budget {
            daily: Some(Money::ZERO),
            total: None,
        };
        assert_eq!(
            zero.evaluate(Money::ZERO, Money::ZERO),
            BudgetVerdict::WithinBudget
        );
        assert!(
            zero.evaluate(Money::from_micros(1), Money::ZERO)
                .is_exceeded()
        );
    }
}
