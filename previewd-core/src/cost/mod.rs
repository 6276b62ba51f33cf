//! Money, Kubernetes resource quantities, cost estimates and budgets.
//!
//! # Money
//!
//! [`Money`] is a non-negative amount of US dollars held as integer micro-dollars
//! (`$1 = 1_000_000`), so sums never drift: adding the parts of a bill always gives
//! exactly its total. `Display` rounds half-up to cents (`$2.35` for 2.345 dollars);
//! the alternate form `{:#}` and serde keep full precision (`$2.345`, `$0.000001`).
//!
//! # Prices and units
//!
//! Prices are per hour of a *requested* resource (what the scheduler reserves), and
//! memory and storage are priced per **GiB** (2^30 bytes), the unit Kubernetes
//! quantities use (`512Mi`, `1Gi`) and the unit cloud providers actually bill memory
//! in even where their price lists say "GB". Defaults: $0.04 per core-hour, $0.005 per
//! GiB-hour of memory, $0.0001 per GiB-hour of storage (about $0.07 per GiB-month).
//! Network egress is not metered: the `network` part of a breakdown is zero.
//!
//! A month is 730 hours (365 × 24 / 12), the convention of cloud price lists.
//!
//! # Quantities
//!
//! [`parse_cpu`] and [`parse_memory`] follow the Kubernetes quantity grammar: an
//! optional sign, a decimal number (`1`, `1.5`, `.5`, `1.`), and one suffix: binary
//! `Ki Mi Gi Ti Pi Ei`, decimal `n u m k M G T P E`, or a decimal exponent `e<int>` /
//! `E<int>`. Like Kubernetes, conversion to millicores or bytes rounds up (`0.1m` CPU is
//! `1m`, `1.5m` bytes is 1 byte). Negative quantities are refused (requests cannot be
//! negative), as are values with more than 20 significant digits and values that do not
//! fit in a `u64`.

mod budget;
mod estimate;
mod money;
mod quantity;

pub use budget::{BUDGET_WARN_PERCENT, Budget, BudgetLimit, BudgetVerdict};
pub use estimate::{CostBreakdown, CostEstimate, HOURS_PER_MONTH, Pricing, actual_cost};
pub use money::{Money, MoneyError};
pub use quantity::{
    QuantityError, ResourceRequests, format_cpu, format_memory, parse_cpu, parse_memory,
};
