//! Hands the target triple this crate is compiled for to `bins.rs`: the executables it
//! rebuilds must land in `<target-dir>/<triple>/<profile>` exactly when the running test does.

fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=PORTSWAP_TESTKIT_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
