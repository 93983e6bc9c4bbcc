//! Rebuild the probes when the linker changes (a new bpf-linker means new object code).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
