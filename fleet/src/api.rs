//! The HTTP API (JSON), under `/api/v1`:
//!
//! | method, path | who | what |
//! |---|---|---|
//! | `POST /api/v1/register` `{"key","hostname"}` | a host with its group's key | `201 {"host_id","token"}`; 401 for an unknown key |
//! | `POST /api/v1/checkin` (any JSON object: `kmend status --json`) | a host, `Authorization: Bearer <token>` | `200 {"recheck_after"?}`; 401 for an unknown or revoked token |
//! | `GET /api/v1/policy` | a host | its group's policy (`crate::policy::GroupPolicy`) |
//! | `POST /api/v1/rollout/claim` `{"target","time"}` | a host | `{"go", "reason"?, "recheck_after"?}`: whether it may apply `target` now |
//! | `GET /api/v1/groups` | admin token | every group's policy and rollout (steps, halt reason) |
//! | `POST /api/v1/groups` `{"name"}` | admin token | `201 {"group","key"}`: the registration key, shown once; 400 for a bad or taken name |
//! | `PUT /api/v1/groups/{name}/policy` | admin token | the policy (`crate::policy::PolicyInput`); 400 with the bad field |
//! | `POST /api/v1/groups/{name}/rollout/resume` | admin token | 204: a halted rollout goes on |
//! | `GET /api/v1/hosts[?group=&tag=&silent=&checked_in_within=]` | admin token | the hosts with their last report and drift |
//! | `POST /api/v1/hosts/{id}/revoke` | admin token | 204; 404 unknown host |
//! | `GET /api/v1/compliance` | admin token | each CVE fixed live: `fixed_on` (host, patch, since), `not_fixed_on` |
//! | `GET /api/v1/events` | admin token | the newest notifications (`crate::notify`) and where they were delivered |
//! | `GET /api/v1/check[?group=G]` | admin token | Nagios-style line: OK, WARNING (drift), CRITICAL (silent hosts) |
//! | `GET /metrics` | admin token | Prometheus text: hosts, drifting hosts, check-in times |
//! | `POST /api/v1/login-links` | admin token | `201 {"path": "/login/<code>"}`: opens a dashboard session once, within 5 minutes |
//! | `GET /healthz` | anyone | `ok` |
//!
//! The dashboard's pages (`/`, `/hosts/{id}`, `/compliance`) are in
//! `crate::dashboard`.
//!
//! Errors are `{"error": "..."}` with the status code.

use std::sync::Arc;

use axum::{
    Json,
    Router,
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
        IntoResponse,
        Response, //
    },
    routing::{
        get,
        post,
        put, //
    },
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    db::{
        Db,
        DbError, //
    },
    secret,
};

/// Largest request body accepted (a report of a host with many patches
/// is a few KiB).
const BODY_LIMIT: usize = 256 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// SHA-256 of the admin token.
    pub admin_digest: Arc<str>,
    /// A host that has not checked in for this long is silent.
    pub silent_after: jiff::SignedDuration,
    /// The dashboard's browser sessions.
    pub sessions: crate::session::Sessions,
    /// Where notifications go, and how often the outbox is looked at.
    pub notify: crate::notify::Notify,
    pub notify_tick: std::time::Duration,
}

impl AppState {
    /// The state of a server with admin token digest `admin_digest`.
    pub fn new(db: Db, admin_digest: &str, silent_after: jiff::SignedDuration) -> Self {
        Self {
            db,
            admin_digest: Arc::from(admin_digest),
            silent_after,
            sessions: Default::default(),
            notify: crate::notify::Notify { sendmail: "/usr/sbin/sendmail".into(), ..Default::default() },
            notify_tick: std::time::Duration::from_secs(30),
        }
    }

    /// Whether `host` has been silent for longer than allowed at `now`.
    fn silent(&self, host: &crate::db::Host, now: jiff::Timestamp) -> bool {
        crate::drift::silent(host, now, self.silent_after)
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(crate::dashboard::hosts))
        .route("/hosts/{id}", get(crate::dashboard::host))
        .route("/compliance", get(crate::dashboard::compliance))
        .route("/login/{code}", get(crate::dashboard::login))
        .route("/login", post(crate::dashboard::login_with_password))
        .route("/api/v1/login-links", post(login_link))
        .route("/api/v1/register", post(register))
        .route("/api/v1/checkin", post(check_in))
        .route("/api/v1/policy", get(host_policy))
        .route("/api/v1/rollout/claim", post(claim))
        .route("/api/v1/groups", get(groups).post(add_group))
        .route("/api/v1/groups/{name}/policy", put(set_policy))
        .route("/api/v1/groups/{name}/rollout/resume", post(resume))
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/events", get(events))
        .route("/api/v1/compliance", get(compliance))
        .route("/api/v1/hosts/{id}/revoke", post(revoke))
        .route("/api/v1/check", get(check))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// An error answer.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!("{e}");
        Self(StatusCode::INTERNAL_SERVER_ERROR, "database error (see the server log)".into())
    }
}

/// Runs a database call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, DbError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("database task failed: {e}")))?
        .map_err(ApiError::from)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// Whether the request carries the admin token.
pub(crate) fn is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|t| secret::same(&secret::digest(t), &state.admin_digest))
}

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if is_admin(state, headers) {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "admin token required (Authorization: Bearer <token>)".into()))
    }
}

/// A one-time link that opens a dashboard session (`crate::session`).
async fn login_link(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let code = state.sessions.new_link();
    let db = state.db.clone();
    blocking(move || db.record("admin", "login-link", "a one-time dashboard login link")).await?;
    let body = json!({ "path": format!("/login/{code}"), "expires_in_seconds": crate::session::LINK_LIFETIME.as_secs() });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
struct Registration {
    key: String,
    hostname: String,
}

async fn register(State(state): State<AppState>, Json(r): Json<Registration>) -> Result<Response, ApiError> {
    if r.hostname.is_empty() || r.hostname.len() > 253 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "hostname: 1 to 253 characters".into()));
    }
    let db = state.db.clone();
    match blocking(move || db.register(&r.key, &r.hostname)).await? {
        Some((host_id, token)) => Ok((StatusCode::CREATED, Json(json!({ "host_id": host_id, "token": token }))).into_response()),
        None => Err(ApiError(StatusCode::UNAUTHORIZED, "unknown registration key".into())),
    }
}

fn host_token(headers: &HeaderMap) -> Result<String, ApiError> {
    Ok(bearer(headers).ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "host token required".into()))?.to_owned())
}

fn unknown_host() -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "unknown or revoked host token: register again".into())
}

async fn check_in(State(state): State<AppState>, headers: HeaderMap, Json(report): Json<serde_json::Value>) -> Result<Response, ApiError> {
    let token = host_token(&headers)?;
    if !report.is_object() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "a check-in is a JSON object (kmend status --json)".into()));
    }
    let db = state.db.clone();
    match blocking(move || db.check_in(&token, &report)).await? {
        Some((_, Some(recheck))) => Ok(Json(json!({ "recheck_after": recheck })).into_response()),
        Some((_, None)) => Ok(Json(json!({})).into_response()),
        None => Err(unknown_host()),
    }
}

async fn host_policy(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = host_token(&headers)?;
    let db = state.db.clone();
    let policy = blocking(move || db.policy_for_host(&token)).await?.ok_or_else(unknown_host)?;
    Ok(Json(policy).into_response())
}

#[derive(Deserialize)]
struct ClaimRequest {
    /// The patches the host is about to apply, `id@version`.
    target: Vec<String>,
    /// The host's clock when it asked (its reports use that clock).
    time: String,
}

async fn claim(State(state): State<AppState>, headers: HeaderMap, Json(c): Json<ClaimRequest>) -> Result<Response, ApiError> {
    let token = host_token(&headers)?;
    if c.target.is_empty() || c.target.len() > 1000 || c.time.parse::<jiff::Timestamp>().is_err() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "a claim is {\"target\": [\"id@version\", ...], \"time\": RFC 3339}".into()));
    }
    let (db, silent_after) = (state.db.clone(), state.silent_after);
    let answer = blocking(move || db.claim(&token, &c.target, &c.time, silent_after)).await?.ok_or_else(unknown_host)?;
    Ok(Json(answer).into_response())
}

async fn groups(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let (db, silent_after) = (state.db.clone(), state.silent_after);
    let groups = blocking(move || db.rollouts(silent_after)).await?;
    Ok(Json(json!({ "groups": groups })).into_response())
}

#[derive(Deserialize)]
struct NewGroup {
    name: String,
}

/// Creates a group: its registration key, shown once.
async fn add_group(State(state): State<AppState>, headers: HeaderMap, Json(g): Json<NewGroup>) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let db = state.db.clone();
    let name = g.name.clone();
    match tokio::task::spawn_blocking(move || db.add_group(&name, "admin")).await {
        Ok(Ok(key)) => Ok((StatusCode::CREATED, Json(json!({ "group": g.name, "key": key }))).into_response()),
        Ok(Err(e @ (DbError::GroupExists(_) | DbError::BadGroupName(_)))) => Err(ApiError(StatusCode::BAD_REQUEST, e.to_string())),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("database task failed: {e}"))),
    }
}

async fn set_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(input): Json<crate::policy::PolicyInput>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let policy = input.validate().map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let (db, p) = (state.db.clone(), policy.clone());
    if blocking(move || db.set_policy(&name, &p, "admin")).await? {
        Ok(Json(policy).into_response())
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, "no such group".into()))
    }
}

async fn resume(State(state): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    require_admin(&state, &headers)?;
    let db = state.db.clone();
    if blocking(move || db.resume(&name, "admin")).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, "no such group".into()))
    }
}

/// Hosts as the API and `kmend-fleet hosts` list them: each with its
/// `drift` (from `drift`, judged on the whole fleet) and whether it is
/// `silent` at `now`.
pub fn host_views(
    hosts: &[crate::db::Host],
    drift: &std::collections::HashMap<i64, Vec<&'static str>>,
    now: jiff::Timestamp,
    silent_after: jiff::SignedDuration,
) -> Vec<serde_json::Value> {
    hosts
        .iter()
        .map(|h| {
            let mut v = serde_json::to_value(h).unwrap_or_default();
            v["drift"] = json!(drift.get(&h.id).cloned().unwrap_or_default());
            v["silent"] = json!(crate::drift::silent(h, now, silent_after));
            v
        })
        .collect()
}

/// `GET /api/v1/hosts` filters (all optional, all must hold).
#[derive(Deserialize)]
struct HostsQuery {
    group: Option<String>,
    /// A tag the host's last check-in carried.
    tag: Option<String>,
    silent: Option<bool>,
    /// Checked in at most this long ago (`1h`, `30m`).
    checked_in_within: Option<String>,
}

async fn hosts(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<HostsQuery>) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let within = match &q.checked_in_within {
        Some(w) => Some(w.parse::<jiff::SignedDuration>().map_err(|e| {
            ApiError(StatusCode::BAD_REQUEST, format!("checked_in_within: '{w}' is not a duration such as 1h or 30m ({e})"))
        })?),
        None => None,
    };
    let db = state.db.clone();
    let hosts = blocking(move || db.hosts()).await?;
    // Drift is judged against the whole group, before any filter.
    let drift = crate::drift::drift(&hosts);
    let now = jiff::Timestamp::now();
    let keep = |h: &&crate::db::Host| {
        let tagged = |t: &String| h.report.as_ref().and_then(|r| r["tags"].as_array()).is_some_and(|tags| tags.iter().any(|x| x == t));
        let recent = |w: jiff::SignedDuration| {
            h.last_checkin.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).is_some_and(|t| now.duration_since(t) <= w)
        };
        q.group.as_ref().is_none_or(|g| &h.group == g)
            && q.tag.as_ref().is_none_or(tagged)
            && q.silent.is_none_or(|s| state.silent(h, now) == s)
            && within.is_none_or(recent)
    };
    let kept: Vec<crate::db::Host> = hosts.iter().filter(keep).cloned().collect();
    Ok(Json(json!({ "hosts": host_views(&kept, &drift, now, state.silent_after) })).into_response())
}

/// Each CVE fixed live: on which hosts since when, and on which not.
async fn compliance(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let db = state.db.clone();
    let hosts = blocking(move || db.hosts()).await?;
    Ok(Json(json!({ "cves": crate::compliance::of(&hosts) })).into_response())
}

/// The newest notifications and whether they were delivered.
async fn events(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let db = state.db.clone();
    let events = blocking(move || db.events(200)).await?;
    Ok(Json(json!({ "events": events })).into_response())
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let db = state.db.clone();
    let hosts = blocking(move || db.hosts()).await?;
    let text = crate::metrics::render(&hosts, jiff::Timestamp::now(), state.silent_after);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[derive(Deserialize)]
struct CheckQuery {
    group: Option<String>,
}

/// A Nagios-style check: one line, `KMEND-FLEET OK|WARNING|CRITICAL - …`,
/// then performance data after `|`. Silent hosts are critical, drifting
/// ones a warning.
async fn check(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<CheckQuery>) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let db = state.db.clone();
    let all = blocking(move || db.hosts()).await?;
    let drift = crate::drift::drift(&all);
    let now = jiff::Timestamp::now();
    let hosts: Vec<_> = all.iter().filter(|h| h.revoked.is_none() && q.group.as_ref().is_none_or(|g| &h.group == g)).collect();
    let silent: Vec<&str> = hosts.iter().filter(|h| state.silent(h, now)).map(|h| h.hostname.as_str()).collect();
    let drifting: Vec<&str> = hosts.iter().filter(|h| drift.contains_key(&h.id)).map(|h| h.hostname.as_str()).collect();
    let scope = q.group.as_deref().map_or_else(|| "all groups".to_owned(), |g| format!("group {g}"));
    let (word, what) = if !silent.is_empty() {
        ("CRITICAL", format!("{} silent ({}), {} drifting", silent.len(), silent.join(", "), drifting.len()))
    } else if !drifting.is_empty() {
        ("WARNING", format!("{} drifting ({})", drifting.len(), drifting.join(", ")))
    } else {
        ("OK", format!("{} hosts checking in, none drifting", hosts.len()))
    };
    let line = format!(
        "KMEND-FLEET {word} - {scope}: {what} | hosts={} silent={} drifting={}\n",
        hosts.len(),
        silent.len(),
        drifting.len()
    );
    Ok(([(header::CONTENT_TYPE, "text/plain")], line).into_response())
}

async fn revoke(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    require_admin(&state, &headers)?;
    let db = state.db.clone();
    if blocking(move || db.revoke(id, "admin")).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, format!("no host {id} with a live token")))
    }
}

/// Serves the API on `listener` until `shutdown` resolves: plain HTTP, or
/// HTTPS with `tls` (see [`tls_config`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// [`serve`], with TLS when `tls` is given.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let notifier = tokio::spawn(crate::notify::run(state.db.clone(), state.notify.clone(), state.silent_after, state.notify_tick));
    let app = router(state);
    let served = match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        Some(config) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, config)?.handle(handle).serve(app.into_make_service()).await
        }
    };
    notifier.abort();
    served
}

/// The TLS configuration from a PEM certificate chain and its PEM private
/// key; the error names the file and what is wrong.
pub async fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    use anyhow::Context as _;
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("'{}': read", p.display()));
    let (c, k) = (read(cert)?, read(key)?);
    axum_server::tls_rustls::RustlsConfig::from_pem(c, k)
        .await
        .with_context(|| format!("TLS: '{}' and '{}' are not a PEM certificate chain and its private key", cert.display(), key.display()))
}
