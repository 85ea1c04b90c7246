//! Build script: builds the runtime as a static library (`libmrc_runtime.a`, release profile)
//! and leaves it in `OUT_DIR`, where `src/targets/cpu.rs` embeds it, so that `mrc` links
//! programs from any directory with nothing beside it (`cargo install --path .` gives a
//! self-contained compiler). The runtime is built by a nested cargo with a target directory of
//! its own, inside `OUT_DIR`, so it never waits on the outer build's lock.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let runtime = manifest_dir.join("runtime");
    println!("cargo:rerun-if-changed={}", runtime.join("src").display());
    println!("cargo:rerun-if-changed={}", runtime.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", manifest_dir.join("Cargo.lock").display());

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("runtime");
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--lib", "-p", "mrc-runtime", "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // What cargo sets for this script is not for the nested build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    if std::env::var_os("CARGO_NET_OFFLINE").is_some() {
        command.arg("--offline");
    }
    let status = command.status().expect("cargo runs");
    if !status.success() {
        panic!("building the runtime library failed ({status})");
    }
    let library = target_dir.join("release").join("libmrc_runtime.a");
    assert!(library.exists(), "{} was not built", library.display());
    println!("cargo:rustc-env=MRC_RUNTIME_LIBRARY={}", library.display());
}
