//! Conditions and status helpers (the planner's, re-exported for the controller and
//! embedders).

pub use crate::plan::conditions::{condition_is_true, set_condition};
