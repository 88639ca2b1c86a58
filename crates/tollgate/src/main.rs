//! The `tollgate` binary: parse the command line, run the command, exit with its code.

use clap::Parser;

/// mimalloc: markedly less allocator time than glibc malloc on the proxy's many small,
/// cross-thread allocations (see the README's benchmark section).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Memory settings, applied before any other thread runs:
/// - no transparent huge pages: mimalloc is built without its `MADV_HUGEPAGE` advice
///   (`no_thp`), and the process opts out of THP where the kernel applies it to every mapping,
///   or each heap would pin 2 MiB pages (idle RSS 34 MiB instead of 19);
/// - mimalloc commits arena memory on demand (options numbered as in mimalloc's `mi_option_e`).
///   Freed pages go back after mimalloc's default delay: returning them at once (purge delay 0)
///   doubled the page faults under load and saved about 1 MiB.
///
/// An operator's own `MIMALLOC_*` setting wins.
fn tune_memory() {
    const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl(PR_SET_THP_DISABLE) takes integer arguments only and changes nothing
        // but this process's huge-page policy.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
    for (option, env, value) in [
        (
            MI_OPTION_ARENA_EAGER_COMMIT,
            "MIMALLOC_ARENA_EAGER_COMMIT",
            0,
        ),
        (MI_OPTION_ALLOW_THP, "MIMALLOC_ALLOW_THP", 0),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: a plain setter of a global allocator option, called before any other
            // thread runs.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

fn main() -> std::process::ExitCode {
    tune_memory();
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
