//! The command line (clap derive): one variant per verb.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::Duration, //
};

use clap::{
    Parser,
    Subcommand,
    ValueEnum, //
};
use kmend::exit::EXIT_CODES_HELP;

/// kmend: live patches for the running Linux kernel, with eBPF proof.
#[derive(Debug, Parser)]
#[command(name = "kmend", version, after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Print machine-readable JSON instead of text (every verb).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show applied patches, the effective kernel version, pending updates
    /// and the last feed check (exit 0 up to date, 1 nothing applied,
    /// 2 updates available, 3 kernel unsupported).
    Status,
    /// Ask the feed whether the newest eligible patch is applied (exit 0
    /// yes, 1 no, 3 kernel unsupported); changes nothing.
    Check {
        /// Also consider patches blocked by the crash-loop guard.
        #[arg(long)]
        force: bool,
    },
    /// Fetch and apply what the feed offers now, following the policy.
    Update {
        /// Also apply patches blocked by the crash-loop guard.
        #[arg(long)]
        force: bool,
    },
    /// Apply a patch artifact (`.kmpatch`, checked against the running
    /// kernel first) or a bare patch module (`.ko`; its module name is the
    /// patch id).
    Apply {
        /// Path of the artifact or module.
        file: PathBuf,
    },
    /// Revert an applied patch and unload its module.
    Revert {
        /// Patch id, as `kmend status` shows it.
        id: String,
    },
    /// Revert every applied patch, newest first.
    Unload,
    /// List applied patches and those available at the last check.
    List,
    /// Show one patch: functions, CVEs, release time.
    Info {
        /// Patch id.
        id: String,
    },
    /// Print the effective kernel version (what a scanner should see):
    /// `<release>-kmend<N>`.
    Uname {
        /// Print the effective release only (the default).
        #[arg(short = 'r', long)]
        release: bool,
        /// Print all fields, like `uname -a`, with the effective release.
        #[arg(short = 'a', long, conflicts_with = "release")]
        all: bool,
    },
    /// List the CVEs fixed by the applied patches.
    Cves,
    /// Print Prometheus metrics: patches applied, effective version, last
    /// check and its age, state (docs/agent.md).
    Metrics {
        /// Write them to this file, atomically (node_exporter's textfile
        /// collector), instead of printing.
        #[arg(long)]
        textfile: Option<PathBuf>,
    },
    /// Compliance export: applied patches, CVEs and the journal.
    Report {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
        format: ReportFormat,
        /// Only check the journal's hash chain (exit 0 intact, 4 broken).
        #[arg(long)]
        verify: bool,
    },
    /// Diagnostic bundle: versions, config (secrets redacted), kernel and
    /// agent state, recent journal, kernel log.
    Doctor {
        /// Write a tar file instead of printing.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Run the agent: check the feed every `interval` (± `jitter`) and
    /// apply updates when `auto_update` is on; stops on SIGTERM.
    Daemon,
    /// Re-apply the cached patches at boot (kmend-boot.service).
    Boot,
    /// Prove with eBPF that a patch's replacements run and the old code does not.
    Verify {
        /// Patch id, as `kmend status` shows it.
        id: String,
        /// How long to watch the patched functions, e.g. `2s`, `500ms`.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        window: Duration,
    },
    /// Register this host with a fleet server, with its group's key; the
    /// daemon then checks in after every cycle (docs/fleet.md).
    Register {
        /// The group's registration key (`kmend-fleet group add` prints it).
        key: String,
        /// The fleet server's URL, e.g. `https://fleet.example:8470`.
        #[arg(long)]
        server: String,
        /// The name the server shows (default: this host's name).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Send this host's status to its fleet server now.
    Checkin,
    /// Print a shell completion script for bash, zsh or fish.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (kmend.1 and one per verb) into a directory.
    #[command(hide = true)]
    Manpages {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Build and inspect patch artifacts.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Build, sign, verify and serve patch feeds.
    #[command(subcommand)]
    Feed(FeedCommand),
}

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Pack a manifest and a patch module into a `.kmpatch` artifact.
    Pack {
        /// manifest.json (module_sha256 may be left out: it is computed).
        #[arg(long)]
        manifest: PathBuf,
        /// The patch module (`.ko`); its module name must be the manifest id.
        #[arg(long)]
        module: PathBuf,
        /// Artifact to write.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Check an artifact and show its manifest.
    Inspect {
        /// The `.kmpatch` file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum FeedCommand {
    /// Add artifacts to a channel of a feed directory (unsigns it).
    Build {
        /// Feed directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// `stable` or `test`.
        #[arg(long, value_parser = ["stable", "test"])]
        channel: String,
        /// Release time of these patches (RFC 3339; default now).
        #[arg(long)]
        released: Option<String>,
        /// `.kmpatch` artifacts.
        #[arg(required = true)]
        artifacts: Vec<PathBuf>,
    },
    /// Say what live patches cover for a kernel (every build of a release
    /// on a channel): until when, end of life, CVEs that need a reboot.
    /// Replaces what was said before; unsigns the feed like `build`.
    Coverage {
        #[arg(long)]
        dir: PathBuf,
        /// `stable` or `test`.
        #[arg(long, value_parser = ["stable", "test"])]
        channel: String,
        /// The kernel release (`uname -r`), as listed in the feed.
        #[arg(long)]
        kernel: String,
        /// Live patches for it end then (RFC 3339); after: "upgrade required".
        #[arg(long)]
        until: Option<String>,
        /// The kernel reached its end of life.
        #[arg(long)]
        end_of_life: bool,
        /// A known CVE no live patch fixes: `CVE-…` or `CVE-…=<fixed-in release>` (repeatable).
        #[arg(long = "needs-reboot")]
        needs_reboot: Vec<String>,
    },
    /// Create a feed's signed root (metadata/1.root.json): the trust
    /// anchor every machine is given as /etc/kmend/root.json.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Secret key of the root role (repeat for several).
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        /// How many root keys must sign a new root.
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// Public key that signs publishes (targets, snapshot, timestamp;
        /// repeatable). Default: the root keys.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// How long the root stays valid.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        expires: Duration,
    },
    /// Publish: sign the staged index.json and artifacts (TUF targets,
    /// snapshot, timestamp). Run after every build, and daily from cron:
    /// machines refuse a feed whose metadata expired.
    Sign {
        #[arg(long)]
        dir: PathBuf,
        /// Secret key(s) of the feed's publishing role.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// How long this publish stays valid.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires: Duration,
    },
    /// Change the feed's keys: root N+1, signed by the current root keys
    /// and the new ones. Machines follow it on their next check.
    RotateRoot {
        #[arg(long)]
        dir: PathBuf,
        /// Secret key(s) of the current root (its threshold of them).
        #[arg(long = "old-root-key", required = true)]
        old_root_keys: Vec<PathBuf>,
        /// Secret key(s) of the new root role.
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// Public key(s) that sign publishes from now on. Default: the new
        /// root keys.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        expires: Duration,
    },
    /// Check a feed directory as a machine would: metadata, index, every artifact.
    Verify {
        #[arg(long)]
        dir: PathBuf,
        /// The trusted root (e.g. the feed's metadata/1.root.json).
        #[arg(long)]
        root: PathBuf,
    },
    /// Create a signing key pair: `<prefix>.key` (secret, PEM, 0600) and
    /// `<prefix>.pub` (public, TUF key JSON). Never overwrites.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve a feed directory over HTTP (prints the bound address first).
    Serve {
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReportFormat {
    Json,
    Csv,
}

/// Parses `500ms`, `2s`, `5m`, `12h`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    kmend::duration::parse(s).map_err(|e| e.to_string())
}
