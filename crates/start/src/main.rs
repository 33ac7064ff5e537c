//! The `start` hook of portswap; see `start --help`.

fn main() -> std::process::ExitCode {
    portswap::cli::run(
        &portswap::commands::start::HOOK,
        portswap::commands::start::run,
    )
}
