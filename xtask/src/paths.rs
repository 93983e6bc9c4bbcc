//! Where things live: the repository and the build cache.

use std::{
    env,
    path::PathBuf, //
};

/// Root of the repository (the workspace).
pub fn repo() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    repo.canonicalize().unwrap_or(repo)
}

/// The build cache: `$KMEND_CACHE`, else `~/.cache/kmend`.
pub fn cache() -> PathBuf {
    if let Some(dir) = env::var_os("KMEND_CACHE") {
        // Absolute: the toolchain chroot binds the cache at its own path.
        return std::path::absolute(PathBuf::from(&dir)).unwrap_or_else(|_| PathBuf::from(dir));
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/kmend")
}

/// Pinned tools installed with `cargo install --root`.
pub fn tools_bin() -> PathBuf {
    cache().join("tools/bin")
}

/// `PATH` with the pinned tools first.
pub fn tool_path() -> std::ffi::OsString {
    let mut paths = vec![tools_bin()];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).unwrap_or_default()
}

/// The Rust target of the guest's userspace binaries.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
