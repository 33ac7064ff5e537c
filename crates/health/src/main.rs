//! The `health` hook of portswap; see `health --help`.

fn main() -> std::process::ExitCode {
    portswap::cli::run(
        &portswap::commands::health::HOOK,
        portswap::commands::health::run,
    )
}
