//! The `switch` hook of portswap; see `switch --help`.

fn main() -> std::process::ExitCode {
    portswap::cli::run(
        &portswap::commands::switch::HOOK,
        portswap::commands::switch::run,
    )
}
