//! Builds the eBPF probes (ebpf/kmend-probes) with aya-build and leaves them
//! in OUT_DIR, where src/verify.rs embeds them.
//!
//! aya-build runs a nested `cargo build --target bpfel-unknown-none`; on a
//! stable toolchain that needs `RUSTC_BOOTSTRAP=1` (for `-Z build-std=core`),
//! which `cargo xtask` sets.

use anyhow::{
    Context as _,
    anyhow, //
};

fn main() -> anyhow::Result<()> {
    let metadata_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ebpf/kmend-probes");
    let root_dir = metadata_root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", metadata_root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "kmend-probes",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("stable"),
    )
    .context("building the eBPF probes (is bpf-linker installed? run `cargo xtask setup`)")
}
