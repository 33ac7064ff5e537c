//! The `stop` hook of portswap; see `stop --help`.

fn main() -> std::process::ExitCode {
    portswap::cli::run(
        &portswap::commands::stop::HOOK,
        portswap::commands::stop::run,
    )
}
