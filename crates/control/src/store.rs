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

/// A trunk row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrunkRecord {
    pub sid: String,
    pub account_sid: String,
    pub name: String,
    pub nso_code: String,
    pub domain_name: String,
    /// "active" or "inactive".
    pub status: String,
    pub auth_type: String,
    pub registration_enabled: bool,
    pub edge_preference: String,
    /// "enabled" (TLS + SRTP) or "disabled".
    pub secure_trunking: String,
    pub max_concurrent_calls: Option<i64>,
    pub calls_per_minute: i64,
    pub date_created: String,
    pub date_updated: String,
}

impl TrunkRecord {
    /// The admission view of this trunk, without whitelist or credentials.
    pub fn to_model(&self) -> Trunk {
        let mut t = Trunk::new(self.sid.clone(), self.name.clone());
        t.active = self.status == "active";
        t.max_concurrent_calls = self
            .max_concurrent_calls
            .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX));
        t.calls_per_minute = u32::try_from(self.calls_per_minute.max(0)).unwrap_or(u32::MAX);
        t
    }
}

/// What creating a trunk needs. [`NewTrunk::new`] fills Exotel's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTrunk {
    pub name: String,
    pub nso_code: String,
    pub domain_name: String,
    pub status: String,
    pub auth_type: String,
    pub registration_enabled: bool,
    pub edge_preference: String,
    pub secure_trunking: String,
    pub max_concurrent_calls: Option<u32>,
    pub calls_per_minute: u32,
}

impl NewTrunk {
    /// Active, IP-whitelist auth, no registration, edge "auto", not secure, no concurrent
    /// limit, [`DEFAULT_CALLS_PER_MINUTE`].
    pub fn new(
        name: impl Into<String>,
        nso_code: impl Into<String>,
        domain_name: impl Into<String>,
    ) -> Self {
        NewTrunk {
            name: name.into(),
            nso_code: nso_code.into(),
            domain_name: domain_name.into(),
            status: "active".into(),
            auth_type: "IP-whitelist".into(),
            registration_enabled: false,
            edge_preference: "auto".into(),
            secure_trunking: "disabled".into(),
            max_concurrent_calls: None,
            calls_per_minute: DEFAULT_CALLS_PER_MINUTE,
        }
    }
}

/// Changes to a trunk; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkUpdate {
    pub name: Option<String>,
    pub nso_code: Option<String>,
    pub domain_name: Option<String>,
    pub status: Option<String>,
    pub secure_trunking: Option<String>,
    pub registration_enabled: Option<bool>,
    /// `Some(None)` removes the limit.
    pub max_concurrent_calls: Option<Option<u32>>,
    pub calls_per_minute: Option<u32>,
}

/// A phone number mapped to a trunk.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NumberRecord {
    pub id: String,
    pub account_sid: String,
    pub trunk_sid: String,
    pub number: String,
    /// "pstn" or "flow".
    pub mode: String,
    pub flow_id: Option<String>,
    pub date_created: String,
    pub date_updated: String,
}

impl NumberRecord {
    pub fn to_mode(&self) -> Mode {
        match (&*self.mode, &self.flow_id) {
            ("flow", Some(flow_id)) => Mode::Flow {
                flow_id: flow_id.clone(),
            },
            _ => Mode::Pstn,
        }
    }
}

/// A whitelisted network on a trunk.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IpRecord {
    pub id: String,
    pub trunk_sid: String,
    /// The network address (host bits cleared).
    pub ip: String,
    pub mask: i64,
    pub date_created: String,
}

impl IpRecord {
    pub fn to_net(&self) -> Option<IpNet> {
        IpNet::new(self.ip.parse().ok()?, u8::try_from(self.mask).ok()?).ok()
    }
}

/// A destination URI of a trunk (where outbound calls to the trunk go).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DestinationRecord {
    pub id: String,
    pub trunk_sid: String,
    /// With its `sip:` prefix, e.g. `sip:203.0.113.5:5061;transport=tls`.
    pub uri: String,
    /// Lower first.
    pub priority: i64,
    pub weight: i64,
    pub date_created: String,
}

/// A digest credential of a trunk. The password is stored as given (digest auth needs it or
/// its HA1); the API never returns it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialRecord {
    pub id: String,
    pub trunk_sid: String,
    pub user_name: String,
    pub password: String,
    pub friendly_name: Option<String>,
    pub date_created: String,
    pub date_updated: String,
}

/// What creating a credential needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    pub user_name: String,
    pub password: String,
    pub friendly_name: Option<String>,
}

/// Changes to a credential; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialUpdate {
    pub user_name: Option<String>,
    pub password: Option<String>,
    /// `Some(None)` clears the friendly name.
    pub friendly_name: Option<Option<String>>,
}

/// One trunk setting, e.g. `trunk_external_alias` (the outbound caller ID).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SettingRecord {
    pub trunk_sid: String,
    pub name: String,
    pub value: String,
    pub date_updated: String,
}

/// The WebSocket dialect a flow's bot speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowProtocol {
    Exotel,
    Twilio,
}

impl FlowProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowProtocol::Exotel => "exotel",
            FlowProtocol::Twilio => "twilio",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exotel" => Some(FlowProtocol::Exotel),
            "twilio" => Some(FlowProtocol::Twilio),
            _ => None,
        }
    }
}

/// Whether the bot only listens (unidirectional) or also talks back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowDirection {
    Bidirectional,
    Unidirectional,
}

impl FlowDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowDirection::Bidirectional => "bidirectional",
            FlowDirection::Unidirectional => "unidirectional",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bidirectional" => Some(FlowDirection::Bidirectional),
            "unidirectional" => Some(FlowDirection::Unidirectional),
            _ => None,
        }
    }
}

/// What happens to the call when the bot's stream ends.
/// JSON: `{"action":"hangup"}` or `{"action":"connect","destination":"sip:…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum OnStreamEnd {
    Hangup,
    Connect { destination: String },
}

/// What happens when the agent leg of a hand-off fails (busy, no answer, error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowFallback {
    /// End the call.
    #[default]
    Hangup,
    /// Go back to the bot.
    Bot,
}

impl FlowFallback {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowFallback::Hangup => "hangup",
            FlowFallback::Bot => "bot",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hangup" => Some(FlowFallback::Hangup),
            "bot" => Some(FlowFallback::Bot),
            _ => None,
        }
    }
}

/// A voicegate flow: which bot a call in flow mode streams to.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    pub id: String,
    pub account_sid: String,
    pub name: String,
    /// `ws://` or `wss://`.
    pub stream_url: String,
    pub protocol: FlowProtocol,
    pub direction: FlowDirection,
    /// Passed to the bot with the stream's start; SIP `X-` headers are added per call.
    pub custom_parameters: serde_json::Map<String, serde_json::Value>,
    pub on_stream_end: OnStreamEnd,
    /// After a hand-off to an agent the bot keeps receiving both parties' audio, listen-only.
    pub agent_assist: bool,
    /// What happens when the agent leg fails.
    pub fallback: FlowFallback,
    pub date_created: String,
    pub date_updated: String,
}

/// What creating (or replacing) a flow needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFlow {
    pub name: String,
    pub stream_url: String,
    pub protocol: FlowProtocol,
    pub direction: FlowDirection,
    pub custom_parameters: serde_json::Map<String, serde_json::Value>,
    pub on_stream_end: OnStreamEnd,
    pub agent_assist: bool,
    pub fallback: FlowFallback,
}

#[derive(sqlx::FromRow)]
struct FlowRow {
    id: String,
    account_sid: String,
    name: String,
    stream_url: String,
    protocol: String,
    direction: String,
    custom_parameters: String,
    on_stream_end: String,
    agent_assist: bool,
    fallback: String,
    date_created: String,
    date_updated: String,
}

impl TryFrom<FlowRow> for FlowRecord {
    type Error = StoreError;
    fn try_from(r: FlowRow) -> StoreResult<FlowRecord> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("flow {}: {what}", r.id));
        Ok(FlowRecord {
            protocol: FlowProtocol::parse(&r.protocol).ok_or_else(|| corrupt("protocol"))?,
            direction: FlowDirection::parse(&r.direction).ok_or_else(|| corrupt("direction"))?,
            custom_parameters: serde_json::from_str(&r.custom_parameters)
                .map_err(|_| corrupt("custom_parameters"))?,
            on_stream_end: serde_json::from_str(&r.on_stream_end)
                .map_err(|_| corrupt("on_stream_end"))?,
            fallback: FlowFallback::parse(&r.fallback).ok_or_else(|| corrupt("fallback"))?,
            agent_assist: r.agent_assist,
            id: r.id,
            account_sid: r.account_sid,
            name: r.name,
            stream_url: r.stream_url,
            date_created: r.date_created,
            date_updated: r.date_updated,
        })
    }
}

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

const TRUNK_COLUMNS: &str = "sid, account_sid, name, nso_code, domain_name, status, auth_type, \
     registration_enabled, edge_preference, secure_trunking, max_concurrent_calls, \
     calls_per_minute, date_created, date_updated";

fn limit_offset(page: Page) -> (i64, i64) {
    (i64::from(page.limit), i64::from(page.offset))
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
        Ok(
            sqlx::query_as(&format!("SELECT {TRUNK_COLUMNS} FROM trunks WHERE sid = ?"))
                .bind(sid)
                .fetch_optional(&mut **tx)
                .await?,
        )
    }

    // --- trunks ---

    pub async fn create_trunk(
        &self,
        account_sid: &str,
        new: &NewTrunk,
    ) -> StoreResult<TrunkRecord> {
        let now = now_iso8601();
        let rec = TrunkRecord {
            sid: new_id("TR"),
            account_sid: account_sid.to_string(),
            name: new.name.clone(),
            nso_code: new.nso_code.clone(),
            domain_name: new.domain_name.clone(),
            status: new.status.clone(),
            auth_type: new.auth_type.clone(),
            registration_enabled: new.registration_enabled,
            edge_preference: new.edge_preference.clone(),
            secure_trunking: new.secure_trunking.clone(),
            max_concurrent_calls: new.max_concurrent_calls.map(i64::from),
            calls_per_minute: i64::from(new.calls_per_minute),
            date_created: now.clone(),
            date_updated: now,
        };
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO trunks ({TRUNK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&rec.sid)
        .bind(&rec.account_sid)
        .bind(&rec.name)
        .bind(&rec.nso_code)
        .bind(&rec.domain_name)
        .bind(&rec.status)
        .bind(&rec.auth_type)
        .bind(rec.registration_enabled)
        .bind(&rec.edge_preference)
        .bind(&rec.secure_trunking)
        .bind(rec.max_concurrent_calls)
        .bind(rec.calls_per_minute)
        .bind(&rec.date_created)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The trunk `sid` if it belongs to `account_sid`.
    pub async fn trunk(&self, account_sid: &str, sid: &str) -> StoreResult<Option<TrunkRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {TRUNK_COLUMNS} FROM trunks WHERE sid = ? AND account_sid = ?"
        ))
        .bind(sid)
        .bind(account_sid)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The account's trunks, oldest first.
    pub async fn list_trunks(
        &self,
        account_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<TrunkRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(&format!(
            "SELECT {TRUNK_COLUMNS} FROM trunks WHERE account_sid = ? \
             ORDER BY date_created, sid LIMIT ? OFFSET ?"
        ))
        .bind(account_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies `update`; `None` if the trunk is not the account's.
    pub async fn update_trunk(
        &self,
        account_sid: &str,
        sid: &str,
        update: &TrunkUpdate,
    ) -> StoreResult<Option<TrunkRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(mut rec) = Self::trunk_in_tx(&mut tx, sid).await? else {
            return Ok(None);
        };
        if rec.account_sid != account_sid {
            return Ok(None);
        }
        if let Some(v) = &update.name {
            rec.name = v.clone();
        }
        if let Some(v) = &update.nso_code {
            rec.nso_code = v.clone();
        }
        if let Some(v) = &update.domain_name {
            rec.domain_name = v.clone();
        }
        if let Some(v) = &update.status {
            rec.status = v.clone();
        }
        if let Some(v) = &update.secure_trunking {
            rec.secure_trunking = v.clone();
        }
        if let Some(v) = update.registration_enabled {
            rec.registration_enabled = v;
        }
        if let Some(v) = update.max_concurrent_calls {
            rec.max_concurrent_calls = v.map(i64::from);
        }
        if let Some(v) = update.calls_per_minute {
            rec.calls_per_minute = i64::from(v);
        }
        rec.date_updated = now_iso8601();
        sqlx::query(
            "UPDATE trunks SET name = ?, nso_code = ?, domain_name = ?, status = ?, \
             secure_trunking = ?, registration_enabled = ?, max_concurrent_calls = ?, \
             calls_per_minute = ?, date_updated = ? WHERE sid = ?",
        )
        .bind(&rec.name)
        .bind(&rec.nso_code)
        .bind(&rec.domain_name)
        .bind(&rec.status)
        .bind(&rec.secure_trunking)
        .bind(rec.registration_enabled)
        .bind(rec.max_concurrent_calls)
        .bind(rec.calls_per_minute)
        .bind(&rec.date_updated)
        .bind(sid)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    /// Deletes the trunk and everything under it in one transaction; returns the deleted
    /// trunk, or `None` if it is not the account's.
    pub async fn delete_trunk(
        &self,
        account_sid: &str,
        sid: &str,
    ) -> StoreResult<Option<TrunkRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(rec) = Self::trunk_in_tx(&mut tx, sid).await? else {
            return Ok(None);
        };
        if rec.account_sid != account_sid {
            return Ok(None);
        }
        for table in [
            "phone_numbers",
            "whitelisted_ips",
            "destination_uris",
            "credentials",
            "trunk_settings",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE trunk_sid = ?"))
                .bind(sid)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM trunks WHERE sid = ?")
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    // --- phone numbers ---

    /// Checks a flow-mode number's flow exists in `account_sid`.
    async fn check_flow(
        tx: &mut Transaction<'_, Sqlite>,
        account_sid: &str,
        mode: &Mode,
    ) -> StoreResult<()> {
        if let Mode::Flow { flow_id } = mode {
            let found: Option<(String,)> =
                sqlx::query_as("SELECT id FROM flows WHERE id = ? AND account_sid = ?")
                    .bind(flow_id)
                    .bind(account_sid)
                    .fetch_optional(&mut **tx)
                    .await?;
            if found.is_none() {
                return Err(StoreError::UnknownFlow(flow_id.clone()));
            }
        }
        Ok(())
    }

    fn mode_columns(mode: &Mode) -> (&'static str, Option<String>) {
        match mode {
            Mode::Pstn => ("pstn", None),
            Mode::Flow { flow_id } => ("flow", Some(flow_id.clone())),
        }
    }

    /// Maps `number` to the trunk. Errors: [`StoreError::NotFound`] (no such trunk),
    /// [`StoreError::UnknownFlow`], [`StoreError::Duplicate`] (the number is mapped already,
    /// on any trunk of any account).
    pub async fn add_number(
        &self,
        trunk_sid: &str,
        number: &str,
        mode: &Mode,
    ) -> StoreResult<NumberRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let trunk = Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::check_flow(&mut tx, &trunk.account_sid, mode).await?;
        let (mode_s, flow_id) = Self::mode_columns(mode);
        let now = now_iso8601();
        let rec = NumberRecord {
            id: new_id("PN"),
            account_sid: trunk.account_sid,
            trunk_sid: trunk_sid.to_string(),
            number: number.to_string(),
            mode: mode_s.to_string(),
            flow_id,
            date_created: now.clone(),
            date_updated: now,
        };
        sqlx::query(
            "INSERT INTO phone_numbers (id, account_sid, trunk_sid, number, mode, flow_id, \
             date_created, date_updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.account_sid)
        .bind(&rec.trunk_sid)
        .bind(&rec.number)
        .bind(&rec.mode)
        .bind(&rec.flow_id)
        .bind(&rec.date_created)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn number(&self, trunk_sid: &str, id: &str) -> StoreResult<Option<NumberRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM phone_numbers WHERE id = ? AND trunk_sid = ?")
                .bind(id)
                .bind(trunk_sid)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn list_numbers(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<NumberRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM phone_numbers WHERE trunk_sid = ? \
             ORDER BY date_created, id LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces a mapping's number and mode; `None` if there is no such mapping on the trunk.
    pub async fn update_number(
        &self,
        trunk_sid: &str,
        id: &str,
        number: &str,
        mode: &Mode,
    ) -> StoreResult<Option<NumberRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(mut rec): Option<NumberRecord> =
            sqlx::query_as("SELECT * FROM phone_numbers WHERE id = ? AND trunk_sid = ?")
                .bind(id)
                .bind(trunk_sid)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        Self::check_flow(&mut tx, &rec.account_sid, mode).await?;
        let (mode_s, flow_id) = Self::mode_columns(mode);
        rec.number = number.to_string();
        rec.mode = mode_s.to_string();
        rec.flow_id = flow_id;
        rec.date_updated = now_iso8601();
        sqlx::query(
            "UPDATE phone_numbers SET number = ?, mode = ?, flow_id = ?, date_updated = ? \
             WHERE id = ?",
        )
        .bind(&rec.number)
        .bind(&rec.mode)
        .bind(&rec.flow_id)
        .bind(&rec.date_updated)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    /// Deletes the row `select` finds (binding the id, then its owner: trunk or account) with
    /// `delete` (binding the id), in one transaction; returns what was deleted.
    async fn delete_found<R>(
        &self,
        select: &str,
        delete: &str,
        id: &str,
        owner: &str,
    ) -> StoreResult<Option<R>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let rec: Option<R> = sqlx::query_as(select)
            .bind(id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
        if rec.is_some() {
            sqlx::query(delete).bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(rec)
    }

    pub async fn delete_number(
        &self,
        trunk_sid: &str,
        id: &str,
    ) -> StoreResult<Option<NumberRecord>> {
        self.delete_found::<NumberRecord>(
            "SELECT * FROM phone_numbers WHERE id = ? AND trunk_sid = ?",
            "DELETE FROM phone_numbers WHERE id = ?",
            id,
            trunk_sid,
        )
        .await
    }

    // --- whitelisted IPs ---

    /// Whitelists `net` on the trunk ([`StoreError::Duplicate`] if it already is).
    pub async fn add_ip(&self, trunk_sid: &str, net: IpNet) -> StoreResult<IpRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        let rec = IpRecord {
            id: new_id("IP"),
            trunk_sid: trunk_sid.to_string(),
            ip: net.addr().to_string(),
            mask: i64::from(net.prefix()),
            date_created: now_iso8601(),
        };
        sqlx::query(
            "INSERT INTO whitelisted_ips (id, trunk_sid, ip, mask, date_created) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.trunk_sid)
        .bind(&rec.ip)
        .bind(rec.mask)
        .bind(&rec.date_created)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn list_ips(&self, trunk_sid: &str, page: Page) -> StoreResult<Vec<IpRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM whitelisted_ips WHERE trunk_sid = ? \
             ORDER BY date_created, id LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delete_ip(&self, trunk_sid: &str, id: &str) -> StoreResult<Option<IpRecord>> {
        self.delete_found::<IpRecord>(
            "SELECT * FROM whitelisted_ips WHERE id = ? AND trunk_sid = ?",
            "DELETE FROM whitelisted_ips WHERE id = ?",
            id,
            trunk_sid,
        )
        .await
    }

    // --- destination URIs ---

    /// Adds a destination URI (already validated, with its `sip:` prefix). `priority`
    /// defaults to the number of destinations the trunk already has (so later ones come
    /// after), `weight` to 1.
    pub async fn add_destination(
        &self,
        trunk_sid: &str,
        uri: &str,
        priority: Option<i64>,
        weight: Option<i64>,
    ) -> StoreResult<DestinationRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        let priority = match priority {
            Some(p) => p,
            None => {
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM destination_uris WHERE trunk_sid = ?")
                        .bind(trunk_sid)
                        .fetch_one(&mut *tx)
                        .await?;
                n
            }
        };
        let rec = DestinationRecord {
            id: new_id("DU"),
            trunk_sid: trunk_sid.to_string(),
            uri: uri.to_string(),
            priority,
            weight: weight.unwrap_or(1),
            date_created: now_iso8601(),
        };
        sqlx::query(
            "INSERT INTO destination_uris (id, trunk_sid, uri, priority, weight, date_created) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.trunk_sid)
        .bind(&rec.uri)
        .bind(rec.priority)
        .bind(rec.weight)
        .bind(&rec.date_created)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The trunk's destinations, lowest priority first.
    pub async fn list_destinations(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<DestinationRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM destination_uris WHERE trunk_sid = ? \
             ORDER BY priority, date_created, id LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delete_destination(
        &self,
        trunk_sid: &str,
        id: &str,
    ) -> StoreResult<Option<DestinationRecord>> {
        self.delete_found::<DestinationRecord>(
            "SELECT * FROM destination_uris WHERE id = ? AND trunk_sid = ?",
            "DELETE FROM destination_uris WHERE id = ?",
            id,
            trunk_sid,
        )
        .await
    }

    // --- credentials ---

    pub async fn add_credential(
        &self,
        trunk_sid: &str,
        new: &NewCredential,
    ) -> StoreResult<CredentialRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        let now = now_iso8601();
        let rec = CredentialRecord {
            id: new_id("CR"),
            trunk_sid: trunk_sid.to_string(),
            user_name: new.user_name.clone(),
            password: new.password.clone(),
            friendly_name: new.friendly_name.clone(),
            date_created: now.clone(),
            date_updated: now,
        };
        sqlx::query(
            "INSERT INTO credentials (id, trunk_sid, user_name, password, friendly_name, \
             date_created, date_updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.trunk_sid)
        .bind(&rec.user_name)
        .bind(&rec.password)
        .bind(&rec.friendly_name)
        .bind(&rec.date_created)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn list_credentials(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<CredentialRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM credentials WHERE trunk_sid = ? \
             ORDER BY date_created, id LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    const CREDENTIAL_OF_ACCOUNT: &'static str = "SELECT c.id, c.trunk_sid, c.user_name, \
         c.password, c.friendly_name, c.date_created, c.date_updated FROM credentials c \
         JOIN trunks t ON t.sid = c.trunk_sid WHERE c.id = ? AND t.account_sid = ?";

    /// The credential `id` if its trunk belongs to `account_sid`.
    pub async fn credential(
        &self,
        account_sid: &str,
        id: &str,
    ) -> StoreResult<Option<CredentialRecord>> {
        Ok(sqlx::query_as(Self::CREDENTIAL_OF_ACCOUNT)
            .bind(id)
            .bind(account_sid)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn update_credential(
        &self,
        account_sid: &str,
        id: &str,
        update: &CredentialUpdate,
    ) -> StoreResult<Option<CredentialRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(mut rec): Option<CredentialRecord> = sqlx::query_as(Self::CREDENTIAL_OF_ACCOUNT)
            .bind(id)
            .bind(account_sid)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        if let Some(v) = &update.user_name {
            rec.user_name = v.clone();
        }
        if let Some(v) = &update.password {
            rec.password = v.clone();
        }
        if let Some(v) = &update.friendly_name {
            rec.friendly_name = v.clone();
        }
        rec.date_updated = now_iso8601();
        sqlx::query(
            "UPDATE credentials SET user_name = ?, password = ?, friendly_name = ?, \
             date_updated = ? WHERE id = ?",
        )
        .bind(&rec.user_name)
        .bind(&rec.password)
        .bind(&rec.friendly_name)
        .bind(&rec.date_updated)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    pub async fn delete_credential(
        &self,
        account_sid: &str,
        id: &str,
    ) -> StoreResult<Option<CredentialRecord>> {
        self.delete_found::<CredentialRecord>(
            Self::CREDENTIAL_OF_ACCOUNT,
            "DELETE FROM credentials WHERE id = ?",
            id,
            account_sid,
        )
        .await
    }

    // --- settings ---

    /// Sets (inserts or replaces) one setting of the trunk.
    pub async fn set_setting(
        &self,
        trunk_sid: &str,
        name: &str,
        value: &str,
    ) -> StoreResult<SettingRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        let rec = SettingRecord {
            trunk_sid: trunk_sid.to_string(),
            name: name.to_string(),
            value: value.to_string(),
            date_updated: now_iso8601(),
        };
        sqlx::query("DELETE FROM trunk_settings WHERE trunk_sid = ? AND name = ?")
            .bind(trunk_sid)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO trunk_settings (trunk_sid, name, value, date_updated) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(&rec.trunk_sid)
        .bind(&rec.name)
        .bind(&rec.value)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The trunk's settings, by name.
    pub async fn list_settings(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<SettingRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM trunk_settings WHERE trunk_sid = ? ORDER BY name LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    // --- flows ---

    fn flow_json(new: &NewFlow) -> StoreResult<(String, String)> {
        let enc = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        Ok((
            serde_json::to_string(&new.custom_parameters).map_err(enc)?,
            serde_json::to_string(&new.on_stream_end).map_err(enc)?,
        ))
    }

    pub async fn create_flow(&self, account_sid: &str, new: &NewFlow) -> StoreResult<FlowRecord> {
        let (custom, on_end) = Self::flow_json(new)?;
        let now = now_iso8601();
        let rec = FlowRecord {
            id: new_id("FL"),
            account_sid: account_sid.to_string(),
            name: new.name.clone(),
            stream_url: new.stream_url.clone(),
            protocol: new.protocol,
            direction: new.direction,
            custom_parameters: new.custom_parameters.clone(),
            on_stream_end: new.on_stream_end.clone(),
            agent_assist: new.agent_assist,
            fallback: new.fallback,
            date_created: now.clone(),
            date_updated: now,
        };
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO flows (id, account_sid, name, stream_url, protocol, direction, \
             custom_parameters, on_stream_end, agent_assist, fallback, date_created, \
             date_updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.account_sid)
        .bind(&rec.name)
        .bind(&rec.stream_url)
        .bind(rec.protocol.as_str())
        .bind(rec.direction.as_str())
        .bind(custom)
        .bind(on_end)
        .bind(rec.agent_assist)
        .bind(rec.fallback.as_str())
        .bind(&rec.date_created)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn flow(&self, account_sid: &str, id: &str) -> StoreResult<Option<FlowRecord>> {
        let row: Option<FlowRow> =
            sqlx::query_as("SELECT * FROM flows WHERE id = ? AND account_sid = ?")
                .bind(id)
                .bind(account_sid)
                .fetch_optional(&self.pool)
                .await?;
        row.map(FlowRecord::try_from).transpose()
    }

    pub async fn list_flows(&self, account_sid: &str, page: Page) -> StoreResult<Vec<FlowRecord>> {
        let (limit, offset) = limit_offset(page);
        let rows: Vec<FlowRow> = sqlx::query_as(
            "SELECT * FROM flows WHERE account_sid = ? ORDER BY date_created, id \
             LIMIT ? OFFSET ?",
        )
        .bind(account_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(FlowRecord::try_from).collect()
    }

    /// Replaces the flow's fields; `None` if it is not the account's.
    pub async fn update_flow(
        &self,
        account_sid: &str,
        id: &str,
        new: &NewFlow,
    ) -> StoreResult<Option<FlowRecord>> {
        let (custom, on_end) = Self::flow_json(new)?;
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(row): Option<FlowRow> =
            sqlx::query_as("SELECT * FROM flows WHERE id = ? AND account_sid = ?")
                .bind(id)
                .bind(account_sid)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        let now = now_iso8601();
        sqlx::query(
            "UPDATE flows SET name = ?, stream_url = ?, protocol = ?, direction = ?, \
             custom_parameters = ?, on_stream_end = ?, agent_assist = ?, fallback = ?, \
             date_updated = ? WHERE id = ?",
        )
        .bind(&new.name)
        .bind(&new.stream_url)
        .bind(new.protocol.as_str())
        .bind(new.direction.as_str())
        .bind(custom)
        .bind(on_end)
        .bind(new.agent_assist)
        .bind(new.fallback.as_str())
        .bind(&now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(FlowRecord {
            id: row.id,
            account_sid: row.account_sid,
            name: new.name.clone(),
            stream_url: new.stream_url.clone(),
            protocol: new.protocol,
            direction: new.direction,
            custom_parameters: new.custom_parameters.clone(),
            on_stream_end: new.on_stream_end.clone(),
            agent_assist: new.agent_assist,
            fallback: new.fallback,
            date_created: row.date_created,
            date_updated: now,
        }))
    }

    /// Deletes the flow; [`StoreError::FlowInUse`] while phone numbers point at it.
    pub async fn delete_flow(
        &self,
        account_sid: &str,
        id: &str,
    ) -> StoreResult<Option<FlowRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(row): Option<FlowRow> =
            sqlx::query_as("SELECT * FROM flows WHERE id = ? AND account_sid = ?")
                .bind(id)
                .bind(account_sid)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        let (users,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM phone_numbers WHERE mode = 'flow' AND flow_id = ?",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if users > 0 {
            return Err(StoreError::FlowInUse(users));
        }
        sqlx::query("DELETE FROM flows WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(FlowRecord::try_from(row)?))
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
        async fn rows<T>(
            tx: &mut Transaction<'_, Sqlite>,
            select: &str,
            only: Option<&str>,
            order: &str,
        ) -> StoreResult<Vec<T>>
        where
            T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
        {
            let filter = if only.is_some() {
                "WHERE trunk_sid = ?"
            } else {
                ""
            };
            let sql = format!("{select} {filter} ORDER BY {order}");
            let mut query = sqlx::query_as(&sql);
            if let Some(sid) = only {
                query = query.bind(sid);
            }
            Ok(query.fetch_all(&mut **tx).await?)
        }
        let trunks: Vec<TrunkRecord> = match only {
            Some(sid) => Self::trunk_in_tx(tx, sid).await?.into_iter().collect(),
            None => {
                sqlx::query_as(&format!(
                    "SELECT {TRUNK_COLUMNS} FROM trunks ORDER BY date_created, sid"
                ))
                .fetch_all(&mut **tx)
                .await?
            }
        };
        let ips: Vec<IpRecord> = rows(
            tx,
            "SELECT * FROM whitelisted_ips",
            only,
            "date_created, id",
        )
        .await?;
        let credentials: Vec<CredentialRecord> =
            rows(tx, "SELECT * FROM credentials", only, "date_created, id").await?;
        let numbers: Vec<NumberRecord> =
            rows(tx, "SELECT * FROM phone_numbers", only, "date_created, id").await?;
        let destinations: Vec<DestinationRecord> = rows(
            tx,
            "SELECT * FROM destination_uris",
            only,
            "trunk_sid, priority, date_created, id",
        )
        .await?;
        let settings: Vec<SettingRecord> =
            rows(tx, "SELECT * FROM trunk_settings", only, "trunk_sid, name").await?;

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

mod calls;
mod registrations;
pub use calls::{CallChange, CallInProgress};
pub use registrations::Binding;

#[cfg(test)]
mod tests;
