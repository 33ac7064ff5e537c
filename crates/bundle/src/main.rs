//! `portswap-bundle`: packs a CodeDeploy revision; see `portswap-bundle --help`.

fn main() -> std::process::ExitCode {
    portswap_bundle::cli::run()
}
