//! The `previewd` binary.

/// jemalloc: its background thread returns the memory of a burst to the system once it
/// is free (glibc's allocator keeps it).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    previewd_operator::main().await
}
