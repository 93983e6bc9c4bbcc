//! `cargo xtask`: builds kmend end to end and proves it in QEMU.
//!
//! Every step caches its outputs under `~/.cache/kmend` (or `$KMEND_CACHE`),
//! keyed by what produced them, and skips itself when nothing changed.

use std::process::ExitCode;

use clap::{
    Parser,
    Subcommand, //
};

mod ansible;
mod bench;
mod build;
mod chroot;
mod debian;
mod debug_kernel;
mod diff_patch;
mod fixes;
mod initramfs;
mod kernel;
mod module_signing;
mod modules;
mod package;
mod package_test;
mod patch;
mod paths;
mod pins;
mod run;
mod server_root;
mod server_vm;
mod setup;
mod stock_kernel;
mod test;
mod vm;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and demo kmend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install host packages, Rust components, pinned tools and the kernel source.
    Setup,
    /// Build both guest kernels, the modules, the probes and the userspace binaries.
    Build,
    /// Boot the VM and run the end-to-end suite inside it.
    VmTest(vm::VmOptions),
    /// Host tests, then the VM suite: the README's test command.
    Test(vm::VmOptions),
    /// Boot the VM and show a live patch applied, proven and reverted.
    Demo(vm::VmOptions),
    /// The end-to-end test alone: a Debian server with systemd installs the
    /// package and is patched from a signed feed, then reboots (part of `test`).
    ServerTest(vm::VmOptions),
    /// Measure per-call overhead (kmend vs klp) and the switch pause in the VM.
    Bench(vm::VmOptions),
    /// Load the fleet server (registrations, check-ins, the hosts API,
    /// the dashboard) on SQLite and PostgreSQL, side by side; print the table.
    BenchFleet,
    /// Turn the upstream fixes between two Debian kernel sources into live patches; print the table.
    Fixes {
        /// Only candidates whose path contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Build the agent's Debian package (target/packages/kmend_<version>_amd64.deb).
    Package {
        /// Then install, upgrade, remove and purge it in a Debian root (part of `test`).
        #[arg(long)]
        test: bool,
    },
    /// Build a patch from source (patch.toml + patch.rs, or a C diff) into a .kmpatch artifact.
    #[command(subcommand)]
    Patch(PatchCommand),
}

#[derive(Subcommand)]
enum PatchCommand {
    /// Build the patch in <dir> against a guest kernel.
    Build {
        /// Directory with patch.toml and patch.rs.
        dir: std::path::PathBuf,
        /// The kernel to build against.
        #[arg(long, value_enum, default_value = "stock")]
        kernel: kernel::Flavor,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build => build::all(vm::ALL_KERNELS).map(|_| ()),
        Command::VmTest(opts) => test::vm_only(&opts),
        Command::Test(opts) => test::all(&opts),
        Command::Demo(opts) => vm::demo(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::BenchFleet => bench::fleet(),
        Command::ServerTest(opts) => test::server_only(&opts),
        Command::Package { test: false } => package::build(None).and_then(|_| package::build_fleet()).map(|_| ()),
        Command::Package { test: true } => package_test::run().and_then(|(passed, failed)| {
            println!("{passed} passed, {failed} failed");
            anyhow::ensure!(failed == 0, "{failed} package check(s) failed");
            Ok(())
        }),
        Command::Fixes { only } => fixes::run(only.as_deref()),
        Command::Patch(PatchCommand::Build { dir, kernel }) => build::one_patch(&dir, kernel),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
