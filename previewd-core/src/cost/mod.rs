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
//! GiB-hour of memory, $0.073 per GiB-month of storage; network a flat hourly rate per
//! running environment, zero by default.
//!
//! # What runs, and what it has spent
//!
//! [`PodRequests::effective`] is what the scheduler reserves for a pod (init containers,
//! sidecars and overhead counted the Kubernetes way); [`Accrual`] integrates the hourly
//! rate between observations into an exact spend to date.
//!
//! A month is 730 hours (365 × 24 / 12), the convention of cloud price lists.
//!
//! # Quantities
//!
//! [`parse_cpu`] and [`parse_memory`] follow the Kubernetes quantity grammar: an
//! optional `+`, a decimal number (`1`, `1.5`, `.5`, `1.`), and one suffix: binary
//! `Ki Mi Gi Ti Pi Ei`, decimal `n u m k M G T P E`, or a decimal exponent `e<int>` /
//! `E<int>`. They accept exactly what [`QUANTITY_PATTERN`] (the CRD schema's rule)
//! admits. Like Kubernetes, conversion to millicores or bytes rounds up (`0.1m` CPU is
//! `1m`, `1.5m` bytes is 1 byte) and caps values beyond the range. Negative quantities
//! are refused (requests cannot be negative).

mod accrual;
mod budget;
mod estimate;
mod money;
mod pod;
mod quantity;

pub use accrual::Accrual;
pub use pod::{InitContainer, PodRequests};

pub use budget::{BUDGET_WARN_PERCENT, Budget, BudgetLimit, BudgetPolicy, BudgetVerdict};
pub use estimate::{CostBreakdown, CostEstimate, HOURS_PER_MONTH, Pricing, actual_cost};
pub use money::{Money, MoneyError};
pub use quantity::{
    QUANTITY_MAX_LENGTH, QUANTITY_MESSAGE_EXPRESSION, QUANTITY_PATTERN, QuantityError,
    ResourceRequests, format_cpu, format_memory, parse_cpu, parse_memory, quantity_schema,
};
