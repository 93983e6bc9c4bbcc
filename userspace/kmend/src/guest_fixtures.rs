//! BPF objects the guest suite loads to play other users of a function kmend
//! redirects (built by build.rs with the probes). Only with the
//! `guest-fixtures` feature, which only tests/guest enables.

/// `ebpf/kmend-probes/src/fentry_witness.rs`: a BPF fentry program on
/// `cmdline_proc_show` counting calls in its per-CPU map `CALLS`.
pub static FENTRY_WITNESS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fentry_witness"));
