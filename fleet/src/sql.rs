//! The two databases behind one small interface: SQLite (bundled, the
//! default: one file) and PostgreSQL (for fleets that outgrow one
//! machine). Queries are written once, in the SQL both accept, with `$1`,
//! `$2`… placeholders (rewritten to SQLite's `?1`, `?2`…); values are
//! 64-bit integers, text or NULL, which both store alike. Each backend
//! keeps its own list of migrations of the same schema.

use std::sync::{
    Arc,
    Mutex, //
};

/// A value going in or coming out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// One row of a result.
#[derive(Clone, Debug)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `i` as an integer (0 for NULL or text).
    pub fn int(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(Value::Int(v)) => *v,
            _ => 0,
        }
    }

    /// Column `i` as text (`None` for NULL).
    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Value::Text(t)) => Some(t.clone()),
            Some(Value::Int(v)) => Some(v.to_string()),
            _ => None,
        }
    }

    /// Column `i` as text (empty for NULL).
    pub fn text(&self, i: usize) -> String {
        self.opt_text(i).unwrap_or_default()
    }
}

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    PgSetup(#[from] crate::pg_pool::PgSetupError),
    /// No pooled connection within the wait (the server is down, or every
    /// connection stays busy).
    #[error("no connection to PostgreSQL: {0}")]
    Pool(#[from] r2d2::Error),
}

/// A PostgreSQL error with what the server or the TLS layer said: the
/// client's own text is only "db error" or "error performing TLS
/// handshake", with the reason in its source.
fn pg_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// `$N` placeholders as SQLite's `?N`.
fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// A transaction on either database.
pub enum Tx<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Postgres(postgres::Transaction<'a>),
}

impl Tx<'_> {
    /// Runs a statement: the number of rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, SqlError> {
        match self {
            Self::Sqlite(tx) => {
                let n = tx.execute(&sqlite_placeholders(sql), rusqlite::params_from_iter(params.iter().map(sqlite_value)))?;
                Ok(n as u64)
            }
            Self::Postgres(tx) => {
                let owned = pg_params(params);
                Ok(tx.execute(sql, &pg_refs(&owned))?)
            }
        }
    }

    /// Runs a query: its rows.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, SqlError> {
        match self {
            Self::Sqlite(tx) => {
                let mut stmt = tx.prepare(&sqlite_placeholders(sql))?;
                let n = stmt.column_count();
                let rows = stmt.query_map(rusqlite::params_from_iter(params.iter().map(sqlite_value)), |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => Value::Null,
                                rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                                rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                                rusqlite::types::ValueRef::Real(f) => Value::Text(f.to_string()),
                                rusqlite::types::ValueRef::Blob(b) => Value::Text(String::from_utf8_lossy(b).into_owned()),
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Row)
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }
            Self::Postgres(tx) => {
                let owned = pg_params(params);
                let rows = tx.query(sql, &pg_refs(&owned))?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, SqlError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    pub fn commit(self) -> Result<(), SqlError> {
        match self {
            Self::Sqlite(tx) => Ok(tx.commit()?),
            Self::Postgres(tx) => Ok(tx.commit()?),
        }
    }
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

/// PostgreSQL parameters: integers as BIGINT, text as TEXT, NULL as a
/// text NULL (every nullable column of the schema is text).
fn pg_params(params: &[Value]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn postgres::types::ToSql + Sync> {
            match v {
                Value::Null => Box::new(None::<String>),
                Value::Int(i) => Box::new(*i),
                Value::Text(t) => Box::new(t.clone()),
            }
        })
        .collect()
}

fn pg_refs(owned: &[Box<dyn postgres::types::ToSql + Sync>]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    owned.iter().map(|b| b.as_ref()).collect()
}

fn pg_row(r: &postgres::Row) -> Result<Row, SqlError> {
    use postgres::types::Type;
    let mut out = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let t = c.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int)
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?.map_or(Value::Null, |v| Value::Int(v.into()))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?.map_or(Value::Null, |v| Value::Int(v.into()))
        } else {
            r.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Text)
        };
        out.push(v);
    }
    Ok(Row(out))
}

/// The SQLite schema, one migration per entry, never edited once
/// released; `PRAGMA user_version` counts those applied.
const SQLITE_MIGRATIONS: &[&str] = &["
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_sha256 TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL
    );
    CREATE TABLE hosts (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        hostname TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE,
        registered TEXT NOT NULL,
        revoked TEXT,
        last_checkin TEXT,
        report TEXT
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
", "
    ALTER TABLE groups ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE rollout_steps (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        host_id INTEGER NOT NULL REFERENCES hosts(id),
        target TEXT NOT NULL,
        host_started TEXT NOT NULL,
        started TEXT NOT NULL,
        proven_at TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        finished TEXT,
        acknowledged INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX rollout_steps_group ON rollout_steps (group_id, state);
", "
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        created TEXT NOT NULL,
        done_channels TEXT NOT NULL DEFAULT '[]',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt TEXT NOT NULL,
        last_error TEXT,
        delivered TEXT
    );
    CREATE INDEX outbox_due ON outbox (delivered, next_attempt);
", "
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created TEXT NOT NULL
    );
"];

/// The same schema for PostgreSQL (64-bit integers, identity keys); the
/// `kmend_schema` table counts the migrations applied.
const POSTGRES_MIGRATIONS: &[&str] = &["
    CREATE TABLE groups (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_sha256 TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL
    );
    CREATE TABLE hosts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        group_id BIGINT NOT NULL REFERENCES groups(id),
        hostname TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE,
        registered TEXT NOT NULL,
        revoked TEXT,
        last_checkin TEXT,
        report TEXT
    );
    CREATE TABLE audit (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
", "
    ALTER TABLE groups ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE rollout_steps (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        group_id BIGINT NOT NULL REFERENCES groups(id),
        host_id BIGINT NOT NULL REFERENCES hosts(id),
        target TEXT NOT NULL,
        host_started TEXT NOT NULL,
        started TEXT NOT NULL,
        proven_at TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        finished TEXT,
        acknowledged BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX rollout_steps_group ON rollout_steps (group_id, state);
", "
    CREATE TABLE outbox (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        created TEXT NOT NULL,
        done_channels TEXT NOT NULL DEFAULT '[]',
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt TEXT NOT NULL,
        last_error TEXT,
        delivered TEXT
    );
    CREATE INDEX outbox_due ON outbox (delivered, next_attempt);
", "
    CREATE TABLE users (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created TEXT NOT NULL
    );
"];

/// An open database of either kind, shared by the server's handlers.
#[derive(Clone)]
pub enum Conn {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    /// A pool of connections (`crate::pg_pool`): transactions of
    /// concurrent requests run side by side.
    Postgres(crate::pg_pool::Pool),
}

impl Conn {
    /// SQLite at `path` (created if missing), migrated forward.
    pub fn sqlite(path: &std::path::Path) -> Result<Self, SqlError> {
        let mut conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (n, sql) in SQLITE_MIGRATIONS.iter().enumerate().skip(usize::try_from(applied).unwrap_or(0)) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", n + 1)?;
            tx.commit()?;
        }
        Ok(Self::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// PostgreSQL at `url` (`postgres://user@host:port/db`, TLS as its
    /// `sslmode` says: `crate::pg_pool`), migrated forward.
    pub fn postgres(url: &str) -> Result<Self, SqlError> {
        let target = crate::pg_pool::Target::parse(url)?;
        // One connection first, so that a wrong URL, a refused login or a
        // certificate that does not verify fails here, with its reason.
        let mut client = target.config.connect(target.tls.clone())?;
        client.batch_execute("CREATE TABLE IF NOT EXISTS kmend_schema (version BIGINT NOT NULL)")?;
        // One server at a time migrates (an advisory lock for the session).
        client.batch_execute("SELECT pg_advisory_lock(7458203)")?;
        let migrated = (|| {
            let applied: i64 = client.query_opt("SELECT version FROM kmend_schema", &[])?.map_or(0, |r| r.get(0));
            for (n, sql) in POSTGRES_MIGRATIONS.iter().enumerate().skip(usize::try_from(applied).unwrap_or(0)) {
                let mut tx = client.transaction()?;
                tx.batch_execute(sql)?;
                tx.batch_execute("DELETE FROM kmend_schema")?;
                tx.execute("INSERT INTO kmend_schema (version) VALUES ($1)", &[&i64::try_from(n + 1).unwrap_or(i64::MAX)])?;
                tx.commit()?;
            }
            Ok::<_, postgres::Error>(())
        })();
        client.batch_execute("SELECT pg_advisory_unlock(7458203)")?;
        migrated?;
        drop(client);
        Ok(Self::Postgres(target.pool()))
    }

    /// Runs `f` in a transaction, committed when it returns `Ok`.
    pub fn transaction<T, E: From<SqlError>>(&self, f: impl FnOnce(&mut Tx) -> Result<T, E>) -> Result<T, E> {
        // One handler that panicked cannot leave a half-written change
        // (each is one transaction), so a poisoned lock is still usable.
        match self {
            Self::Sqlite(c) => {
                let mut conn = c.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut tx = Tx::Sqlite(conn.transaction().map_err(SqlError::from)?);
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            }
            Self::Postgres(pool) => {
                let mut client = pool.get().map_err(SqlError::from)?;
                let mut tx = Tx::Postgres(client.transaction().map_err(SqlError::from)?);
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_sqlites_numbered_ones() {
        assert_eq!(sqlite_placeholders("SELECT $2, '$x' WHERE a = $1 AND b = $10"), "SELECT ?2, '$x' WHERE a = ?1 AND b = ?10");
    }
}
