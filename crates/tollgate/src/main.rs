//! The `tollgate` binary: parse the command line, run the command, exit with its code.

use clap::Parser;

/// mimalloc: markedly less allocator time than glibc malloc on the proxy's many small,
/// cross-thread allocations (see the README's benchmark section).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tollgate::cli::Cli::parse();
    match tollgate::cli::run(cli).await {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                tollgate::store::redact_url(&format!("{e:#}"))
            );
            std::process::ExitCode::FAILURE
        }
    }
}
