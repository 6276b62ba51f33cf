//! Errors of the data engine.

/// What can go wrong while seeding.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The database refused a statement or the connection failed.
    #[error("database: {}", pg_message(.0))]
    Database(#[from] tokio_postgres::Error),
    /// The spec asks for something impossible or names unknown tables.
    #[error("spec: {0}")]
    Spec(String),
    /// The schema cannot be seeded as it is (e.g. a cycle of required foreign keys).
    #[error("schema: {0}")]
    Schema(String),
    /// A production snapshot could not be read or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A background task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl DataError {
    /// A short static category, for metric labels and reasons.
    pub fn category(&self) -> &'static str {
        match self {
            DataError::Database(_) => "database",
            DataError::Spec(_) => "spec",
            DataError::Schema(_) => "schema",
            DataError::Snapshot(_) => "snapshot",
            DataError::Internal(_) => "internal",
        }
    }
}

/// The server's message and detail (tokio-postgres prints only "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}
