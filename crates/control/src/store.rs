//! Persistent storage for trunks, their sub-resources and flows (SQLite through sqlx).
//!
//! [`Store::open`] connects and runs the versioned migrations in `crates/control/migrations/`.
//! The schema is plain portable SQL; queries use `?` placeholders (a PostgreSQL port would
//! rewrite those only).
//!
//! Every write is one transaction, and writes are serialized by an in-process lock, so a
//! read-then-write (check the trunk exists, then insert) never races another writer and never
//! meets SQLite's lock-upgrade `SQLITE_BUSY`. Deleting a trunk deletes its numbers, IPs,
//! destination URIs, credentials and settings in the same transaction.
//!
//! Account scoping: trunks and flows carry an `account_sid`; methods that take an
//! `account_sid` only see that account's rows. Sub-resource methods take a `trunk_sid`: the
//! caller (the API) checks the trunk belongs to the account first; the store re-checks the
//! trunk exists inside the write transaction.
//!
//! [`Store::snapshot`] reads everything in one transaction and builds the
//! [`ControlSnapshot`] the SIP side needs; [`Store::trunk_slice`] reads one trunk's part of it.
//!
//! One module per resource holds its records (which serialize as the API shows them) and its
//! part of `impl Store`; `table` holds the queries they share; this file keeps opening,
//! paging, ids and dates, and the snapshot.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Sqlite, Transaction};
use tokio::sync::Mutex;

use crate::model::{IpNet, Mode, NumberMapping, Snapshot, Trunk, DEFAULT_CALLS_PER_MINUTE};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (duplicate trunk name in an account, number, IP on a
    /// trunk, destination on a trunk, user name on a trunk). The API answers 1008 / 409.
    #[error("duplicate: {0}")]
    Duplicate(String),
    /// The trunk (or other parent row) the operation needs does not exist.
    #[error("not found")]
    NotFound,
    /// A phone number in flow mode names a flow that does not exist in the trunk's account.
    #[error("flow {0:?} not found")]
    UnknownFlow(String),
    /// A flow cannot be deleted while phone numbers point at it.
    #[error("flow is used by {0} phone number(s)")]
    FlowInUse(i64),
    /// A row holds data the code cannot read back (e.g. malformed JSON).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return StoreError::Duplicate(db.message().to_string());
            }
        }
        StoreError::Database(e)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A page of a list: at most `limit` rows after skipping `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u32,
}

impl Page {
    /// Everything (for tests and internal use).
    pub const ALL: Page = Page {
        limit: u32::MAX,
        offset: 0,
    };
}

/// The current time as ISO 8601 UTC with milliseconds: `2025-01-02T03:04:05.678Z`.
pub fn now_iso8601() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    iso8601_utc(d.as_secs() as i64, d.subsec_millis())
}

/// Formats seconds since the Unix epoch (plus milliseconds) as ISO 8601 UTC.
pub fn iso8601_utc(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to an era-based calendar starting on 0000-03-01 (400-year eras of 146097 days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// A fresh id: `prefix` and 32 random hex digits (`TR…` for trunks, like Exotel's sids).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

// ---------------------------------------------------------------------------------------------
// Records

/// A credential as the SIP side needs it for digest auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSecret {
    pub trunk_sid: String,
    pub user_name: String,
    pub password: String,
    /// `(date_created, id)`: the store's order, which decides between trunks that share a
    /// user name.
    pub order: (String, String),
}

/// Everything the SIP side reads, from one consistent read.
///
/// `snapshot` is what [`crate::Admission`] needs (trunks with whitelists, `has_credentials`
/// and limits; number mappings). The rest serves routing and auth: full trunk records
/// (`secure_trunking`, `domain_name`), destination URIs (sorted by trunk, then priority),
/// settings (e.g. `trunk_external_alias`), credentials for digest auth, and flows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlSnapshot {
    pub snapshot: Snapshot,
    pub trunks: Vec<TrunkRecord>,
    pub credentials: Vec<CredentialSecret>,
    pub destinations: Vec<DestinationRecord>,
    pub settings: Vec<SettingRecord>,
    pub flows: Vec<FlowRecord>,
}

/// One trunk's part of a [`ControlSnapshot`] (its `flows` empty), from
/// [`Store::trunk_slice`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrunkSlice(ControlSnapshot);

impl TrunkSlice {
    pub fn rows(&self) -> &ControlSnapshot {
        &self.0
    }
}

impl ControlSnapshot {
    pub fn flow(&self, id: &str) -> Option<&FlowRecord> {
        self.flows.iter().find(|f| f.id == id)
    }

    /// `(user_name, password)` of a trunk's credentials.
    pub fn credentials_of<'a>(
        &'a self,
        trunk_sid: &'a str,
    ) -> impl Iterator<Item = &'a CredentialSecret> + 'a {
        self.credentials
            .iter()
            .filter(move |c| c.trunk_sid == trunk_sid)
    }

    /// A trunk's destination URIs, lowest priority first.
    pub fn destinations_of<'a>(
        &'a self,
        trunk_sid: &'a str,
    ) -> impl Iterator<Item = &'a DestinationRecord> + 'a {
        self.destinations
            .iter()
            .filter(move |d| d.trunk_sid == trunk_sid)
    }

    pub fn setting(&self, trunk_sid: &str, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|s| s.trunk_sid == trunk_sid && s.name == name)
            .map(|s| s.value.as_str())
    }

    pub fn trunk_record(&self, sid: &str) -> Option<&TrunkRecord> {
        self.trunks.iter().find(|t| t.sid == sid)
    }
}

// ---------------------------------------------------------------------------------------------
// The store

/// The database handle. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    pool: SqlitePool,
    /// Serializes write transactions (see the module docs).
    write: Mutex<()>,
}

impl Store {
    /// Opens `sqlite://path` (the file is created if missing) or `sqlite::memory:` and runs
    /// the migrations. An in-memory database lives as long as the `Store`.
    pub async fn open(url: &str) -> StoreResult<Store> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        if !memory {
            options = options.journal_mode(SqliteJournalMode::Wal);
        }
        // Each connection to `:memory:` is its own database: keep exactly one, forever.
        let pool_options = if memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(4)
        };
        let pool = pool_options.connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pool,
            write: Mutex::new(()),
        })
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn trunk_in_tx(
        tx: &mut Transaction<'_, Sqlite>,
        sid: &str,
    ) -> StoreResult<Option<TrunkRecord>> {
        Ok(sqlx::query_as("SELECT * FROM trunks WHERE sid = ?")
            .bind(sid)
            .fetch_optional(&mut **tx)
            .await?)
    }

    // --- snapshot ---

    /// Everything the SIP side needs, read in one transaction.
    pub async fn snapshot(&self) -> StoreResult<ControlSnapshot> {
        let mut tx = self.pool.begin().await?;
        let mut snapshot = Self::trunk_rows(&mut tx, None).await?;
        let flow_rows: Vec<FlowRow> =
            sqlx::query_as("SELECT * FROM flows ORDER BY date_created, id")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        for row in flow_rows {
            match FlowRecord::try_from(row) {
                Ok(f) => snapshot.flows.push(f),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable flow"),
            }
        }
        Ok(snapshot)
    }

    /// One trunk's part of [`Store::snapshot`], read in one transaction; `None` once the
    /// trunk is gone.
    pub async fn trunk_slice(&self, sid: &str) -> StoreResult<Option<TrunkSlice>> {
        let mut tx = self.pool.begin().await?;
        let rows = Self::trunk_rows(&mut tx, Some(sid)).await?;
        tx.commit().await?;
        Ok((!rows.trunks.is_empty()).then_some(TrunkSlice(rows)))
    }

    /// The flow `id` whatever its account, as [`Store::snapshot`] would hold it.
    pub async fn flow_by_id(&self, id: &str) -> StoreResult<Option<FlowRecord>> {
        let row: Option<FlowRow> = sqlx::query_as("SELECT * FROM flows WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(FlowRecord::try_from).transpose()
    }

    /// The trunks (all, or only `only`) and their rows as the SIP side needs them, no flows.
    async fn trunk_rows(
        tx: &mut Transaction<'_, Sqlite>,
        only: Option<&str>,
    ) -> StoreResult<ControlSnapshot> {
        async fn rows<T: Table>(
            tx: &mut Transaction<'_, Sqlite>,
            only: Option<&str>,
            order: &str,
        ) -> StoreResult<Vec<T>> {
            let filter = if only.is_some() {
                "WHERE trunk_sid = ?"
            } else {
                ""
            };
            let sql = format!("SELECT * FROM {} {filter} ORDER BY {order}", T::TABLE);
            let mut query = sqlx::query_as(&sql);
            if let Some(sid) = only {
                query = query.bind(sid);
            }
            Ok(query.fetch_all(&mut **tx).await?)
        }
        let trunks: Vec<TrunkRecord> = match only {
            Some(sid) => Self::trunk_in_tx(tx, sid).await?.into_iter().collect(),
            None => {
                sqlx::query_as("SELECT * FROM trunks ORDER BY date_created, sid")
                    .fetch_all(&mut **tx)
                    .await?
            }
        };
        let ips: Vec<IpRecord> = rows(tx, only, "date_created, id").await?;
        let credentials: Vec<CredentialRecord> = rows(tx, only, "date_created, id").await?;
        let numbers: Vec<NumberRecord> = rows(tx, only, "date_created, id").await?;
        let destinations: Vec<DestinationRecord> =
            rows(tx, only, "trunk_sid, priority, date_created, id").await?;
        let settings: Vec<SettingRecord> = rows(tx, only, "trunk_sid, name").await?;

        let mut ips_by_trunk: HashMap<&str, Vec<&IpRecord>> = HashMap::new();
        for ip in &ips {
            ips_by_trunk.entry(&ip.trunk_sid).or_default().push(ip);
        }
        let with_credentials: HashSet<&str> =
            credentials.iter().map(|c| c.trunk_sid.as_str()).collect();
        let model_trunks = trunks
            .iter()
            .map(|rec| {
                let mut t = rec.to_model();
                for ip in ips_by_trunk.get(rec.sid.as_str()).into_iter().flatten() {
                    match ip.to_net() {
                        Some(net) => t.whitelisted.push(net),
                        None => tracing::warn!(id = %ip.id, "unreadable whitelisted IP row"),
                    }
                }
                t.has_credentials = with_credentials.contains(rec.sid.as_str());
                t
            })
            .collect();
        Ok(ControlSnapshot {
            snapshot: Snapshot {
                trunks: model_trunks,
                numbers: numbers
                    .iter()
                    .map(|n| NumberMapping {
                        number: n.number.clone(),
                        trunk_sid: n.trunk_sid.clone(),
                        mode: n.to_mode(),
                    })
                    .collect(),
            },
            trunks,
            credentials: credentials
                .into_iter()
                .map(|c| CredentialSecret {
                    trunk_sid: c.trunk_sid,
                    user_name: c.user_name,
                    password: c.password,
                    order: (c.date_created, c.id),
                })
                .collect(),
            destinations,
            settings,
            flows: Vec::new(),
        })
    }
}

#[macro_use]
mod table;

mod calls;
mod credentials;
mod destinations;
mod flows;
mod ips;
mod numbers;
mod registrations;
mod settings;
mod trunks;
pub use calls::{CallChange, CallInProgress};
pub use credentials::*;
pub use destinations::*;
pub use flows::*;
pub use ips::*;
pub use numbers::*;
pub use registrations::Binding;
pub use settings::*;
pub(crate) use table::{Keyed, SqliteQuery, Table};
pub use trunks::*;

#[cfg(test)]
mod tests;
