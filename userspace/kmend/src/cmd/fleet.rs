//! `kmend register` and `kmend checkin`: the host's side of the fleet
//! server (docs/fleet.md).

use kmend::{
    config::Config,
    exit::Exit,
    fleet::{
        Client,
        FleetError,
        Registration, //
    },
    identity::Uname,
    paths::Paths,
    report::Overview,
    sys::Kernel,
};
use serde_json::json;

fn client(paths: &Paths, server: &str) -> anyhow::Result<Client> {
    let config = Config::load(&paths.config_file())?;
    Ok(Client::new(server, config.proxy.as_deref(), config.timeout, config.ca_certs.as_deref().map(std::path::Path::new))?)
}

/// What a check-in reports: what `kmend status --json` prints.
fn report(paths: &Paths) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(Overview::gather(paths, &Kernel::from_env(paths))?)?)
}

/// Sends this host's status to its server, if it registered with one:
/// whether it did. Used by `kmend checkin` and by the daemon after each
/// cycle.
pub fn check_in_if_registered(paths: &Paths) -> anyhow::Result<bool> {
    let Some(reg) = Registration::load(paths)? else { return Ok(false) };
    client(paths, &reg.server)?.check_in(&reg, &report(paths)?)?;
    Ok(true)
}

pub fn register(key: &str, server: &str, hostname: Option<&str>, json: bool) -> anyhow::Result<Exit> {
    let paths = Paths::from_env();
    let hostname = hostname.map_or_else(|| Uname::get().nodename, str::to_owned);
    let reg = client(&paths, server)?.register(&paths, key, &hostname)?;
    // The first check-in at once, so the host shows up with its state.
    let checked_in = check_in_if_registered(&paths);
    if json {
        super::print_json(&json!({ "server": reg.server, "host_id": reg.host_id, "hostname": hostname, "checked_in": checked_in.is_ok() }))?;
    } else {
        println!("registered with {} as host {} ({hostname})", kmend::proxy::redact(&reg.server), reg.host_id);
    }
    checked_in?;
    Ok(Exit::Ok)
}

pub fn checkin(json: bool) -> anyhow::Result<Exit> {
    if !check_in_if_registered(&Paths::from_env())? {
        return Err(FleetError::NotRegistered.into());
    }
    if json {
        super::print_json(&json!({ "checked_in": true }))?;
    } else {
        println!("checked in");
    }
    Ok(Exit::Ok)
}
