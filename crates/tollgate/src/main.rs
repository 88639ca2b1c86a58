//! The `tollgate` binary: parse the command line, run the command, exit with its code.

use clap::Parser;

/// mimalloc: markedly less allocator time than glibc malloc on the proxy's many small,
/// cross-thread allocations (see the README's benchmark section).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc options (numbering of mimalloc 2's `mi_option_e`): commit arena memory on demand and
/// return freed pages at once. Without them peak RSS under the benchmark's load doubles (~65 MiB
/// instead of ~30) for no throughput gain.
fn tune_allocator() {
    const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // An operator's own MIMALLOC_* setting wins.
    for (option, env, value) in [
        (
            MI_OPTION_ARENA_EAGER_COMMIT,
            "MIMALLOC_ARENA_EAGER_COMMIT",
            0,
        ),
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: a plain setter of a global allocator option, called before any other
            // thread runs.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
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
