//! The previewd AI engine.
pub mod advisor;
pub mod builddefs;
pub mod config;
pub mod data;
pub mod environment;
pub mod eval;
pub mod history;
pub mod lifespan;
pub mod provider;
pub mod scrub;
pub mod services;
pub mod tests_select;
pub mod tier;
