//! The web dashboard: server-rendered HTML, no JavaScript, nothing to
//! build. Every page shows what the JSON API already serves:
//!
//! | path | what |
//! |---|---|
//! | `/` | hosts per group (outdated or drifting hosts amber; silent ones, and those whose old code still ran, red), each group's policy and rollout |
//! | `/hosts/{id}` | one host: kernel, patches, proofs, coverage, its last journal entries |
//! | `/compliance` | each CVE fixed live: on which hosts, since when |
//! | `/login/{code}?next=/…` | opens a session from a one-time login link (`crate::session`) |
//! | `POST /login` (form: `user`, `password`) | opens a session for a dashboard user (`crate::users`) |
//!
//! Pages need a session cookie (or the admin token as a bearer header).

use axum::{
    Form,
    extract::{
        Path,
        Query,
        State, //
    },
    http::{
        HeaderMap,
        StatusCode,
        header, //
    },
    response::{
        Html,
        IntoResponse,
        Response, //
    },
};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    api::AppState,
    db::Host,
    rollout::GroupRollout,
    session,
};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}

const STYLE: &str = "body{font-family:'DejaVu Sans',sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}\
th{background:#eee}tr.amber{background:#ffd27f}tr.red{background:#f4a3a3}tr.revoked{color:#999}\
p.rollout.halted{color:#a00;font-weight:bold}nav a{margin-right:1em}code{font-size:90%}";

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} - kmend fleet</title>\
         <style>{STYLE}</style></head><body><nav><a href=\"/\">Hosts</a><a href=\"/compliance\">Compliance</a></nav>\
         <h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies.split(';').find_map(|c| c.trim().strip_prefix(session::COOKIE)?.strip_prefix('='))
}

/// The login form for dashboard users, and the other way in.
const LOGIN_FORM: &str = "<form method=\"post\" action=\"/login\">\
    <p><label>User <input name=\"user\" autocomplete=\"username\" required></label></p>\
    <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
    <p><button type=\"submit\">Log in</button></p></form>\
    <p>Or with a one-time link: <code>curl -X POST -H \"Authorization: Bearer $(cat admin.token)\" \
    http://&lt;server&gt;/api/v1/login-links</code>, then open the <code>path</code> it returns.</p>";

/// A page for a logged-in admin, or the way to log in.
fn require_session(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    if session_cookie(headers).is_some_and(|id| state.sessions.valid(id)) || crate::api::is_admin(state, headers) {
        return Ok(());
    }
    let mut r = page("Login required", LOGIN_FORM);
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    Err(r)
}

/// Sets session `id`'s cookie and goes to `next` (a path on this server
/// only).
fn enter(id: &str, next: Option<String>) -> Response {
    let next = next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\')).unwrap_or_else(|| "/".into());
    let cookie = format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        session::COOKIE,
        session::SESSION_LIFETIME.as_secs()
    );
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, next)]).into_response()
}

#[derive(Deserialize)]
pub struct PasswordLogin {
    user: String,
    password: String,
    next: Option<String>,
}

/// `POST /login`: a dashboard user's name and password open a session;
/// anything else is refused with the form again (audited either way).
pub async fn login_with_password(State(state): State<AppState>, Form(f): Form<PasswordLogin>) -> Response {
    let db = state.db.clone();
    let PasswordLogin { user, password, next } = f;
    match crate::api::blocking(move || db.log_in(&user, &password)).await {
        Ok(true) => enter(&state.sessions.open_for_user(), next),
        Ok(false) => {
            let body = format!("<p class=\"error\">Wrong user name or password.</p>{LOGIN_FORM}");
            let mut r = page("Login required", &body);
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /login/{code}`: spends the code, sets the session cookie, and
/// goes to `next` (a path on this server only).
pub async fn login(State(state): State<AppState>, Path(code): Path<String>, Query(q): Query<LoginQuery>) -> Response {
    let Some(id) = state.sessions.open(&code) else {
        let mut r = page("Login link not valid", "<p>This link is unknown, expired (after 5 minutes) or already used. Ask for a new one.</p>");
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    };
    // Audited: who logged in is an admin with a link; when is kept.
    let db = state.db.clone();
    if crate::api::blocking(move || db.record("admin", "login", "a dashboard session opened with a one-time link")).await.is_err() {
        tracing::error!("the login was not audited (the database error is logged above)");
    }
    enter(&id, q.next)
}

/// What the dashboard says of a host, and the row's colour.
fn host_state(h: &Host, drift: &[&str], silent: bool) -> (&'static str, String) {
    if h.revoked.is_some() {
        return ("revoked", "revoked".into());
    }
    if silent {
        return ("red", "silent".into());
    }
    let failed_proof = h.report.as_ref().and_then(|r| r["verifications"].as_array()).is_some_and(|v| {
        v.iter().any(|v| v["old_body_hits"].as_u64().unwrap_or(0) > 0)
    });
    if failed_proof {
        return ("red", "verification failed".into());
    }
    let summary = h.report.as_ref().map(|r| text(r, "summary")).unwrap_or("");
    if summary == "updates_available" {
        return ("amber", "updates available".into());
    }
    if summary == "kernel_unsupported" {
        return ("amber", "kernel not supported".into());
    }
    if !drift.is_empty() {
        return ("amber", format!("drift: {}", drift.join(", ")));
    }
    if h.report.is_none() {
        return ("", "no check-in yet".into());
    }
    ("", summary.replace('_', " "))
}

fn patches_of(report: &Value) -> String {
    let managed = report["managed"].as_array().cloned().unwrap_or_default();
    managed.iter().map(|p| format!("{} v{}", text(p, "id"), p["version"])).collect::<Vec<_>>().join(", ")
}

/// "proven", "NOT PROVEN", "—" for a host's applied patches.
fn proofs_of(report: &Value) -> String {
    let v = report["verifications"].as_array().cloned().unwrap_or_default();
    if v.is_empty() {
        return "—".into();
    }
    if v.iter().any(|v| v["old_body_hits"].as_u64().unwrap_or(0) > 0) {
        return "NOT PROVEN: old body ran".into();
    }
    if v.iter().all(|v| v["proven"] == true) { "proven".into() } else { "not exercised yet".into() }
}

fn rollout_html(g: &GroupRollout) -> String {
    let mut out = String::new();
    let p = &g.policy;
    let mut policy = Vec::new();
    if let Some(c) = &p.channel {
        policy.push(format!("channel {}", esc(c)));
    }
    if let Some(d) = p.delay_seconds {
        policy.push(format!("delay {d}s"));
    }
    if let Some(s) = &p.sticky {
        policy.push(format!("sticky {}", esc(s)));
    }
    if let Some(r) = &p.rollout {
        policy.push(format!("rollout {} at a time, health window {}s", r.max, r.health_window_seconds));
    }
    let policy = if policy.is_empty() { "hosts' own config".to_owned() } else { policy.join("; ") };
    out.push_str(&format!("<p class=\"policy\">Policy: {policy}</p>"));
    let group = esc(&g.group);
    if let Some(h) = &g.halted {
        out.push_str(&format!("<p class=\"rollout halted\" data-group=\"{group}\">Rollout halted: {}</p>", esc(h)));
    } else if let Some(s) = g.steps.iter().find(|s| s.state == "in_progress") {
        let why = s.reason.as_deref().unwrap_or("");
        out.push_str(&format!(
            "<p class=\"rollout running\" data-group=\"{group}\">Rollout: {} applying {} ({})</p>",
            esc(&s.hostname),
            esc(&s.target.join(", ")),
            esc(why)
        ));
    } else if p.rollout.is_some() {
        out.push_str(&format!("<p class=\"rollout idle\" data-group=\"{group}\">Rollout: no host applying</p>"));
    }
    if !g.steps.is_empty() {
        out.push_str("<table class=\"steps\"><tr><th>host</th><th>patches</th><th>step</th><th>reason</th><th>started</th><th>finished</th></tr>");
        for s in g.steps.iter().take(20) {
            out.push_str(&format!(
                "<tr class=\"step {state}\" data-hostname=\"{h}\"><td>{h}</td><td>{t}</td><td>{state}</td><td>{r}</td><td>{st}</td><td>{f}</td></tr>",
                state = esc(&s.state),
                h = esc(&s.hostname),
                t = esc(&s.target.join(", ")),
                r = esc(s.reason.as_deref().unwrap_or("")),
                st = esc(&s.started),
                f = esc(s.finished.as_deref().unwrap_or("")),
            ));
        }
        out.push_str("</table>");
    }
    out
}

async fn load(state: &AppState) -> Result<(Vec<Host>, Vec<GroupRollout>), Response> {
    let (db, silent_after) = (state.db.clone(), state.silent_after);
    crate::api::blocking(move || Ok((db.hosts()?, db.rollouts(silent_after)?))).await.map_err(IntoResponse::into_response)
}

/// `GET /`: hosts per group, with each group's rollout.
pub async fn hosts(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require_session(&state, &headers) {
        return r;
    }
    let (hosts, rollouts) = match load(&state).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let drift = crate::drift::drift(&hosts);
    let now = jiff::Timestamp::now();
    let mut body = String::new();
    for g in &rollouts {
        body.push_str(&format!("<h2>Group {}</h2>", esc(&g.group)));
        body.push_str(&rollout_html(g));
        body.push_str(&format!(
            "<table class=\"hosts\" data-group=\"{}\"><tr><th>host</th><th>state</th><th>kernel</th><th>effective version</th>\
             <th>patches</th><th>proof</th><th>tags</th><th>last check-in</th></tr>",
            esc(&g.group)
        ));
        for h in hosts.iter().filter(|h| h.group == g.group) {
            let d = drift.get(&h.id).cloned().unwrap_or_default();
            let (class, what) = host_state(h, &d, crate::drift::silent(h, now, state.silent_after));
            let r = h.report.clone().unwrap_or_default();
            body.push_str(&format!(
                "<tr class=\"host {class}\" data-hostname=\"{name}\" data-state=\"{what}\"><td><a href=\"/hosts/{id}\">{name}</a></td>\
                 <td>{what}</td><td>{kernel}</td><td>{eff}</td><td>{patches}</td><td>{proof}</td><td>{tags}</td><td>{last}</td></tr>",
                id = h.id,
                name = esc(&h.hostname),
                what = esc(&what),
                kernel = esc(text(&r["kernel"], "release")),
                eff = esc(text(&r, "effective_version")),
                patches = esc(&patches_of(&r)),
                proof = esc(&proofs_of(&r)),
                tags = esc(&r["tags"].as_array().map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")).unwrap_or_default()),
                last = esc(h.last_checkin.as_deref().unwrap_or("never")),
            ));
        }
        body.push_str("</table>");
    }
    if rollouts.is_empty() {
        body.push_str("<p>No groups yet: <code>kmend-fleet group add --db … &lt;name&gt;</code>.</p>");
    }
    page("Hosts", &body)
}

/// `GET /hosts/{id}`: one host in detail.
pub async fn host(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    if let Err(r) = require_session(&state, &headers) {
        return r;
    }
    let (hosts, _) = match load(&state).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(h) = hosts.iter().find(|h| h.id == id) else {
        let mut r = page("No such host", &format!("<p>No host {id}.</p>"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let r = h.report.clone().unwrap_or_default();
    let k = &r["kernel"];
    let mut body = format!(
        "<table class=\"facts\"><tr><th>group</th><td>{g}</td></tr><tr><th>kernel</th><td>{rel}</td></tr>\
         <tr><th>build id</th><td><code>{bid}</code></td></tr><tr><th>effective version</th><td>{eff}</td></tr>\
         <tr><th>state</th><td>{sum}</td></tr><tr><th>coverage</th><td>{cov}</td></tr>\
         <tr><th>registered</th><td>{reg}</td></tr><tr><th>last check-in</th><td>{last}</td></tr>\
         <tr><th>last update</th><td>{upd}</td></tr></table>",
        g = esc(&h.group),
        rel = esc(text(k, "release")),
        bid = esc(text(k, "build_id")),
        eff = esc(text(&r, "effective_version")),
        sum = esc(&text(&r, "summary").replace('_', " ")),
        cov = esc(text(&r["coverage"], "state")),
        reg = esc(&h.registered),
        last = esc(h.last_checkin.as_deref().unwrap_or("never")),
        upd = esc(&match (&r["last_update"]["time"], r["last_update"]["error"].as_str()) {
            (Value::String(t), Some(e)) => format!("{t}: failed: {e}"),
            (Value::String(t), None) => format!("{t}: ok"),
            _ => "none".into(),
        }),
    );
    body.push_str("<h2>Patches</h2><table class=\"patches\"><tr><th>patch</th><th>version</th><th>CVEs</th><th>applied</th><th>proof</th></tr>");
    for p in r["managed"].as_array().cloned().unwrap_or_default() {
        let id = text(&p, "id");
        let v = r["verifications"].as_array().and_then(|vs| vs.iter().find(|v| v["id"] == id).cloned());
        let proof = match v {
            Some(v) if v["old_body_hits"].as_u64().unwrap_or(0) > 0 => format!("NOT PROVEN: old body ran {} times", v["old_body_hits"]),
            Some(v) if v["proven"] == true => format!("proven at {}", text(&v, "time")),
            Some(_) => "not exercised yet".into(),
            None => "not verified".into(),
        };
        let cves: Vec<&str> = p["cves"].as_array().map(|c| c.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        body.push_str(&format!(
            "<tr data-patch=\"{id}\"><td>{id}</td><td>{v}</td><td>{c}</td><td>{a}</td><td>{proof}</td></tr>",
            id = esc(id),
            v = p["version"],
            c = esc(&cves.join(", ")),
            a = esc(text(&p, "applied_at")),
            proof = esc(&proof),
        ));
    }
    body.push_str("</table><h2>Journal (last entries)</h2><table class=\"journal\"><tr><th>time</th><th>actor</th><th>action</th><th>patch</th><th>result</th></tr>");
    for e in r["journal"].as_array().cloned().unwrap_or_default().iter().rev() {
        let result = match e["error"].as_str() {
            Some(err) => format!("{}: {err}", text(e, "result")),
            None => text(e, "result").to_owned(),
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(text(e, "time")),
            esc(text(e, "actor")),
            esc(text(e, "action")),
            esc(text(e, "patch")),
            esc(&result)
        ));
    }
    body.push_str("</table>");
    page(&format!("Host {}", h.hostname), &body)
}

/// `GET /compliance`: each CVE fixed live, where and since when.
pub async fn compliance(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require_session(&state, &headers) {
        return r;
    }
    let (hosts, _) = match load(&state).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let cves = crate::compliance::of(&hosts);
    let mut body = String::from("<table class=\"cves\"><tr><th>CVE</th><th>fixed on</th><th>not fixed on</th></tr>");
    for c in &cves {
        let fixed_on: Vec<String> = c.fixed_on.iter().map(|f| format!("{} ({}, since {})", esc(&f.host), esc(&f.patch), esc(&f.since))).collect();
        let missing: Vec<String> = c.not_fixed_on.iter().map(|h| esc(h)).collect();
        body.push_str(&format!(
            "<tr data-cve=\"{cve}\"><td>{cve}</td><td>{}</td><td>{}</td></tr>",
            fixed_on.join("<br>"),
            missing.join(", "),
            cve = esc(&c.cve)
        ));
    }
    body.push_str("</table>");
    if cves.is_empty() {
        body.push_str("<p>No host reports a CVE fixed live yet.</p>");
    }
    page("Compliance", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_hosts_is_escaped() {
        assert_eq!(esc("<script>\"x\" & 'y'</script>"), "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;");
    }
}
