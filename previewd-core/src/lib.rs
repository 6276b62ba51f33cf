//! Pure domain core of previewd: the phase machine, TTL and expiry, cost and budget,
//! resource tiers, naming rules, the service catalogue, and the provider traits that
//! adapters (Kubernetes, GitHub, AI models) implement.
//!
//! This crate performs no I/O and depends on neither kube nor tokio.

pub mod ai;
pub mod catalogue;
pub mod checks;
pub mod clock;
pub mod cost;
pub mod environment;
pub mod gating;
pub mod image_template;
pub mod naming;
pub mod phase;
pub mod retry;
pub mod source_control;
pub mod tenancy;
pub mod testrun;
pub mod testselect;
pub mod tier;
pub mod ttl;

pub use catalogue::{CatalogueService, ServiceCatalogue};
pub use clock::{Clock, FixedClock, SystemClock};
pub use cost::{
    Accrual, Budget, BudgetLimit, BudgetPolicy, BudgetVerdict, CostBreakdown, CostEstimate,
    InitContainer, Money, MoneyError, PodRequests, Pricing, QuantityError, ResourceRequests,
    actual_cost, parse_cpu, parse_memory,
};
pub use environment::{
    Advice, AiStatus, EnvironmentAdvisor, EnvironmentReporter, EnvironmentView, NoAdvice,
    NoopReporter, ReportAuthoriser, TestResults,
};
pub use naming::{
    NameError, environment_name, ingress_host, is_dns1123_label, namespace_name,
    validate_dns1123_subdomain,
};
pub use phase::{Observation, Phase, Transition, TransitionError, transition};
pub use tier::{Tier, use_spot};
pub use ttl::{DO_NOT_EXPIRE_LABEL, ExpiryPolicy, ExpiryPolicyError, Ttl, TtlChoice, TtlError};
