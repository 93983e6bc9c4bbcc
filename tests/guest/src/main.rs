//! PID 1 of the test VM (exec'd by vm-images/init): runs the mode named by
//! the `kmend_guest=` kernel parameter, then powers the VM off.
//!
//! Modes: `test` (the end-to-end suite, [`suite`]), `demo` (the narrated
//! walk-through, [`demo`]), `bench` (measurements, [`bench`]), `textpoke`
//! (a control run without kmend, [`textpoke`]), `try` (the patches of
//! `cargo xtask vm-test --patch`, [`try_patch`]). The host (`cargo xtask`) reads the verdict
//! line and scans the console for kernel warnings.

mod agent_suite;
mod bench;
mod core_suite;
mod demo;
mod fentry_suite;
mod fix_suite;
mod harness;
mod signing_suite;
mod suite;
mod switch_suite;
mod textpoke;
mod try_patch;

/// Whether loopback was up when `kmend boot` ran on the second boot.
pub static NETWORK_WAS_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() {
    // The kernel hands unknown `a=b` boot parameters to init as environment.
    let mode = std::env::var("kmend_guest").unwrap_or_else(|_| "test".to_owned());
    if mode != "test-reboot" {
        let _ = std::process::Command::new("/bin/ip").args(["link", "set", "lo", "up"]).status();
    }
    match mode.as_str() {
        "test" => suite::run(),
        "demo" => demo::run(),
        "bench" => bench::run(),
        "test-reboot" => suite::run_second_boot(),
        "textpoke" => textpoke::run(),
        "try" => try_patch::run(),
        other => println!("kmend-guest: unknown mode '{other}'"),
    }
    harness::power_off();
}
