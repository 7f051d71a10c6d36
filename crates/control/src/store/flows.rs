//! Flows: which bot a flow-mode number streams to, in which dialect, and what follows.

use super::*;

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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowRecord {
    pub id: String,
    #[serde(skip)]
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
pub(super) struct FlowRow {
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

impl TryFrom<&FlowRecord> for FlowRow {
    type Error = StoreError;
    fn try_from(f: &FlowRecord) -> StoreResult<FlowRow> {
        let enc = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        Ok(FlowRow {
            id: f.id.clone(),
            account_sid: f.account_sid.clone(),
            name: f.name.clone(),
            stream_url: f.stream_url.clone(),
            protocol: f.protocol.as_str().into(),
            direction: f.direction.as_str().into(),
            custom_parameters: serde_json::to_string(&f.custom_parameters).map_err(enc)?,
            on_stream_end: serde_json::to_string(&f.on_stream_end).map_err(enc)?,
            agent_assist: f.agent_assist,
            fallback: f.fallback.as_str().into(),
            date_created: f.date_created.clone(),
            date_updated: f.date_updated.clone(),
        })
    }
}

table!(FlowRow = "flows" by "account_sid" order "date_created, id" key id {
    id, account_sid, name, stream_url, protocol, direction, custom_parameters, on_stream_end,
    agent_assist, fallback, date_created, date_updated
});

impl FlowRecord {
    fn from_new(new: &NewFlow, id: String, account_sid: String, date_created: String) -> Self {
        FlowRecord {
            id,
            account_sid,
            name: new.name.clone(),
            stream_url: new.stream_url.clone(),
            protocol: new.protocol,
            direction: new.direction,
            custom_parameters: new.custom_parameters.clone(),
            on_stream_end: new.on_stream_end.clone(),
            agent_assist: new.agent_assist,
            fallback: new.fallback,
            date_updated: date_created.clone(),
            date_created,
        }
    }
}

impl Store {
    pub async fn create_flow(&self, account_sid: &str, new: &NewFlow) -> StoreResult<FlowRecord> {
        let rec = FlowRecord::from_new(new, new_id("FL"), account_sid.into(), now_iso8601());
        let row = FlowRow::try_from(&rec)?;
        let mut w = self.write().await?;
        w.insert(&row).await?;
        w.commit().await?;
        Ok(rec)
    }

    pub async fn flow(&self, account_sid: &str, id: &str) -> StoreResult<Option<FlowRecord>> {
        let row: Option<FlowRow> = self.find(id, account_sid).await?;
        row.map(FlowRecord::try_from).transpose()
    }

    pub async fn list_flows(&self, account_sid: &str, page: Page) -> StoreResult<Vec<FlowRecord>> {
        let rows: Vec<FlowRow> = self.list_of(account_sid, page).await?;
        rows.into_iter().map(FlowRecord::try_from).collect()
    }

    /// Replaces the flow's fields; `None` if it is not the account's.
    pub async fn update_flow(
        &self,
        account_sid: &str,
        id: &str,
        new: &NewFlow,
    ) -> StoreResult<Option<FlowRecord>> {
        let mut w = self.write().await?;
        let Some(old) = w.find::<FlowRow>(id, account_sid).await? else {
            return Ok(None);
        };
        let mut rec = FlowRecord::from_new(new, old.id, old.account_sid, old.date_created);
        rec.date_updated = now_iso8601();
        w.update(&FlowRow::try_from(&rec)?).await?;
        w.commit().await?;
        Ok(Some(rec))
    }

    /// Deletes the flow; [`StoreError::FlowInUse`] while phone numbers point at it.
    pub async fn delete_flow(
        &self,
        account_sid: &str,
        id: &str,
    ) -> StoreResult<Option<FlowRecord>> {
        let mut w = self.write().await?;
        let Some(row) = w.find::<FlowRow>(id, account_sid).await? else {
            return Ok(None);
        };
        let (users,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM phone_numbers WHERE mode = 'flow' AND flow_id = ?",
        )
        .bind(id)
        .fetch_one(&mut *w.tx)
        .await?;
        if users > 0 {
            return Err(StoreError::FlowInUse(users));
        }
        w.delete(&row).await?;
        w.commit().await?;
        Ok(Some(FlowRecord::try_from(row)?))
    }
}
