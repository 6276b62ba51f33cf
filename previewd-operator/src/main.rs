//! The `previewd` binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    previewd_operator::main().await
}
