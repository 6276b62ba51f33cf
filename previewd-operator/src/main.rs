//! The `previewd` binary.

/// jemalloc returns the pages a burst of watch events freed (glibc's malloc keeps them
/// in per-thread arenas); the library crates leave the allocator to the binary.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    previewd_operator::main().await
}
