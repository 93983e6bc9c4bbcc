//! `kmend daemon`: the long-running agent (kmend.service).
//!
//! Every `interval` plus a random part of `jitter` it checks the feed, and
//! applies updates when `auto_update` is on. The first check waits a
//! random part of `jitter` too, so a fleet that boots together does not
//! call the feed together. A failed cycle is retried with exponential
//! backoff (30 s, 1 min, 2 min... up to `interval`), each wait randomised
//! between half and all of it ("equal jitter"). The
//! config is re-read each cycle; with no `feed_url` yet (a fresh install),
//! every 10 s, so writing the config is all it takes. SIGTERM or SIGINT stop it cleanly: a
//! cycle in progress is finished first, so an apply is never cut short.
//! The blocking agent work runs on tokio's blocking pool. A fix held back
//! because its module is not loaded is applied as soon as the module
//! loads: the daemon hears the kernel's uevent and checks at once
//! (`kmend::module_loads`).

use std::time::Duration;

use kmend::{
    agent::{
        Agent,
        AgentError,
    },
    config::Config,
    exit::Exit,
    module_loads::ModuleLoads,
    paths::Paths,
    policy::{
        HeldBack,
        PolicyError, //
    },
    report::Overview,
    timestamp::Timestamp,
};
use rand::Rng as _;
use tokio::signal::unix::{
    SignalKind,
    signal, //
};

/// First retry delay after a failed cycle.
const BACKOFF_BASE: Duration = Duration::from_secs(30);

/// How often a daemon with no `feed_url` looks at its config again: a
/// freshly installed package starts the daemon before the admin writes
/// the config, and the admin should not need to restart it.
const UNCONFIGURED_RECHECK: Duration = Duration::from_secs(10);

/// What one cycle tells the scheduler.
struct Cycle {
    interval: Duration,
    jitter: Duration,
    ok: bool,
    /// Modules whose fixes wait for them to load.
    awaited: Vec<String>,
}

fn cycle() -> Cycle {
    let paths = Paths::from_env();
    // Read once per cycle: the fleet client, the agent, the check-in and
    // the metrics all use this.
    let config = match Config::load(&paths.config_file()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{}", kmend::proxy::redact_text(&e.to_string()));
            let d = Config::default();
            return Cycle { interval: d.interval, jitter: d.jitter, ok: false, awaited: Vec::new() };
        }
    };
    // A registered host follows its group's policy (fetched here, applied
    // by the agent) and rollout gate; a server that cannot be reached
    // never stops a host outside a gate.
    let mut fleet = super::fleet::FleetCycle::begin(&paths, &config).unwrap_or_else(|e| {
        tracing::warn!("fleet: {}", kmend::proxy::redact_text(&format!("{e:#}")));
        None
    });
    let agent = Agent::with_config(paths.clone(), "daemon".into(), config);
    let gated = fleet.as_ref().is_some_and(super::fleet::FleetCycle::gated);
    let (interval, mut jitter) = (agent.config.interval, agent.config.jitter);
    let mut awaited = Vec::new();
    let result = if agent.config.auto_update {
        let mut gate = |target: &[kmend::policy::PatchRef]| fleet.as_mut().map_or(Ok(()), |f| f.gate(target));
        agent.update_gated(false, &mut gate).map(|r| {
            for (p, why) in &r.check.plan.held_back {
                if let HeldBack::ModuleNotLoaded { module } = why {
                    tracing::info!("patch '{}' fixes module {module}, which is not loaded: applied when it loads", p.id);
                    awaited.push(module.clone());
                }
            }
            for p in &r.applied {
                tracing::info!("patch '{}' version {} applied", p.id, p.version);
            }
            match &r.held {
                Some(why) => tracing::info!("feed checked: {} update(s) held back by the fleet: {why}", r.check.plan.apply.len()),
                None => tracing::info!("feed checked: {} patch(es) applied, kernel up to date", r.applied.len()),
            }
        })
    } else {
        agent.check(false).map(|r| tracing::info!("feed checked: {} update(s) available (auto_update is off)", r.plan.apply.len()))
    };
    // No feed yet: looked for again soon; the fleet still hears from the
    // host below (registered first, configured later).
    let mut unconfigured = false;
    let ok = match result {
        Ok(()) => true,
        Err(e @ AgentError::NoFeed(_)) => {
            tracing::warn!("{e}; looking again every {}s", UNCONFIGURED_RECHECK.as_secs());
            unconfigured = true;
            true
        }
        // Not a transient failure: retrying sooner would not help.
        Err(AgentError::Policy(e @ PolicyError::Unsupported { .. })) => {
            tracing::warn!("{e}");
            true
        }
        Err(e @ AgentError::NoCore { .. }) => {
            tracing::warn!("{e}");
            true
        }
        Err(e) => {
            tracing::error!("update failed: {}", kmend::proxy::redact_text(&e.to_string()));
            false
        }
    };
    // The proof: what a gated rollout waits for, and what the metrics and
    // the check-in report.
    if agent.config.auto_update && (gated || agent.config.verify_after_apply) {
        super::verify::unproven(&agent, agent.config.verify_window);
    }
    // The fleet server hears about every cycle; when it is down, patching
    // goes on and only this is logged.
    let mut interval = interval;
    if unconfigured {
        (interval, jitter) = (UNCONFIGURED_RECHECK, Duration::ZERO);
    }
    // The state after this cycle, gathered once for the check-in and the
    // metrics.
    let overview = if fleet.is_some() || agent.config.metrics_textfile.is_some() {
        Overview::gather(&paths, &agent.kernel).map_err(|e| tracing::warn!("status not gathered: {e}")).ok()
    } else {
        None
    };
    if let (Some(f), Some(o)) = (fleet.as_mut(), &overview) {
        match f.check_in(&paths, &agent.config, o) {
            Ok(()) => {}
            Err(e) => tracing::warn!("fleet check-in failed: {}", kmend::proxy::redact_text(&format!("{e:#}"))),
        }
        // In, or waiting for, a rollout step: the server wants to hear
        // sooner than the interval.
        if let Some(r) = f.recheck.filter(|r| *r < interval) {
            (interval, jitter) = (r, Duration::ZERO);
        }
    }
    if let (Some(file), Some(o)) = (&agent.config.metrics_textfile, &overview) {
        let text = kmend::metrics::render(o, Timestamp::now());
        if let Err(e) = super::metrics::write(std::path::Path::new(file), &text) {
            tracing::warn!("metrics not written: {e:#}");
        }
    }
    Cycle { interval, jitter, ok, awaited }
}

/// The next module load, or never without a listener.
async fn next_load(loads: &mut Option<ModuleLoads>) -> std::io::Result<String> {
    match loads {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

/// A random duration in `0..=max`.
fn random_up_to(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(if ms == 0 { 0 } else { rand::thread_rng().gen_range(0..=ms) })
}

/// The wait before the next cycle.
fn next_wait(c: &Cycle, failures: u32) -> Duration {
    if failures == 0 {
        c.interval + random_up_to(c.jitter)
    } else {
        let backoff = BACKOFF_BASE.saturating_mul(1u32 << (failures - 1).min(16)).min(c.interval);
        backoff / 2 + random_up_to(backoff / 2)
    }
}

/// The wait before the first cycle: a random part of the configured
/// jitter (none when `jitter = "0"`, nor before a feed is configured).
fn first_wait() -> Duration {
    let jitter = Config::load(&Paths::from_env().config_file())
        .map(|c| if c.feed_url.is_some() { c.jitter } else { Duration::ZERO })
        .unwrap_or_default();
    random_up_to(jitter)
}

pub fn run(_json: bool) -> anyhow::Result<Exit> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut failures = 0u32;
        tracing::info!("kmend daemon started");
        // From the start, so that a load during a cycle is not missed.
        let mut loads = ModuleLoads::listen()
            .map_err(|e| tracing::warn!("module loads not heard ({e}): fixes waiting for a module apply at the next check"))
            .ok();
        let first = first_wait();
        if !first.is_zero() {
            tracing::info!("first check in {}s (jitter)", first.as_secs());
            tokio::select! {
                _ = tokio::time::sleep(first) => {}
                _ = term.recv() => return anyhow::Ok(()),
                _ = int.recv() => return anyhow::Ok(()),
            }
        }
        loop {
            let mut work = tokio::task::spawn_blocking(cycle);
            let mut stopping = false;
            let done = loop {
                tokio::select! {
                    r = &mut work => break r?,
                    _ = term.recv() => stopping = true,
                    _ = int.recv() => stopping = true,
                }
                if stopping {
                    tracing::info!("stopping: finishing the current cycle first");
                }
            };
            if stopping {
                break;
            }
            failures = if done.ok { 0 } else { failures.saturating_add(1) };
            let wait = next_wait(&done, failures);
            tracing::info!("next check in {}s", wait.as_secs());
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            let stop = loop {
                tokio::select! {
                    _ = &mut sleep => break false,
                    _ = term.recv() => break true,
                    _ = int.recv() => break true,
                    loaded = next_load(&mut loads), if !done.awaited.is_empty() => match loaded {
                        Ok(m) if done.awaited.contains(&m) => {
                            tracing::info!("module {m} loaded: checking now for the fix that waits for it");
                            break false;
                        }
                        Ok(_) => {}
                        // The socket's buffer overflowed: a load may be
                        // among the events lost.
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            tracing::info!("module loads: events lost (socket buffer full): checking now");
                            break false;
                        }
                        Err(e) => {
                            tracing::warn!("module loads: {e}: fixes waiting for a module apply at the next check");
                            loads = None;
                        }
                    },
                }
            };
            if stop {
                break;
            }
        }
        tracing::info!("kmend daemon stopped");
        anyhow::Ok(())
    })?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval_with_jitter() {
        let c = Cycle { interval: Duration::from_secs(600), jitter: Duration::ZERO, ok: false, awaited: Vec::new() };
        for (failures, full) in (1..=6).zip([30, 60, 120, 240, 480, 600]) {
            let waits: Vec<Duration> = (0..50).map(|_| next_wait(&c, failures)).collect();
            for w in &waits {
                assert!(*w >= Duration::from_secs(full / 2) && *w <= Duration::from_secs(full), "{failures}: {w:?}");
            }
            assert!(waits.iter().any(|w| *w != waits[0]), "{failures}: no jitter in {waits:?}");
        }
        assert_eq!(next_wait(&c, 0), Duration::from_secs(600));
        let j = Cycle { interval: Duration::from_secs(60), jitter: Duration::from_secs(10), ok: true, awaited: Vec::new() };
        for _ in 0..50 {
            let w = next_wait(&j, 0);
            assert!(w >= Duration::from_secs(60) && w <= Duration::from_secs(70), "{w:?}");
        }
    }
}
