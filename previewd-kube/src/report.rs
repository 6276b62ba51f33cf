//! Reporting environment changes to the outside world (GitHub commit statuses,
//! deployments, the sticky PR comment). The interface lives in `previewd-core`
//! ([`EnvironmentReporter`] takes an [`EnvironmentView`](crate::advice::EnvironmentView));
//! this module re-exports it.

pub use previewd_core::environment::{EnvironmentReporter, NoopReporter};
