//! The Exotel-compatible trunk REST API (see `trunk-api.md`), plus voicegate's flows.
//!
//! [`router`] serves everything under `/v2/accounts/{account_sid}`:
//!
//! | method and path | |
//! |---|---|
//! | POST, GET `/trunks` | create; list (`page_size`, `offset`, optional `trunk_sid` filter) |
//! | DELETE `/trunks?trunk_sid=…` | delete with everything under it (also `DELETE /trunks/{sid}`) |
//! | GET, PUT `/trunks/{trunk_sid}` | get; update (voicegate extension: `status`, limits, …) |
//! | POST, GET `/trunks/{sid}/phone-numbers` | map; list |
//! | GET, PUT, DELETE `/trunks/{sid}/phone-numbers/{id}` | |
//! | POST, GET `/trunks/{sid}/whitelisted-ips`; DELETE `…/{id}` | |
//! | POST, GET `/trunks/{sid}/destination-uris`; DELETE `…/{id}` | multi-item POST |
//! | POST, GET `/trunks/{sid}/credentials` | |
//! | GET, PUT `/credentials/{id}`; DELETE `/credentials?id=…` (and `/credentials/{id}`) | |
//! | POST, GET `/trunks/{sid}/settings` | multi-item POST |
//! | POST, GET `/flows`; GET, PUT, DELETE `/flows/{flow_id}` | voicegate's flows |
//!
//! Underscore spellings (`phone_numbers`, `whitelisted_ips`, `destination_uris`) are accepted
//! too. Lists take `page_size` (default [`DEFAULT_PAGE_SIZE`], 1..=[`MAX_PAGE_SIZE`]) and
//! `offset` (default 0).
//!
//! Checks, in order: Basic auth against an [`ApiAccount`] whose sid is the path's (401 / 1010),
//! then for POST and PUT a JSON content type (415 / 1011) and a parseable JSON object body
//! (400 / 1007), then the parameters (1001 missing, 1002 invalid), then ownership (403 / 1003
//! for a trunk that is not the account's; 404 / 1000 for other missing ids). Duplicates answer
//! HTTP 409 with code 1008. After every successful write [`ApiState::on_change`] is called with
//! the [`Change`] it made.
//!
//! Sizes are bounded ([`MAX_BODY_BYTES`], [`MAX_URI_BYTES`], [`MAX_ITEMS_PER_REQUEST`], the
//! per-trunk limits), and every answer is in the envelope, including those axum makes itself
//! (405, 413, a path that is not UTF-8).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Map, Value};

// What every handler shares.
mod envelope;
mod params;
mod resource;

pub use envelope::ApiError;
use envelope::*;
use params::*;
use resource::*;

// One module per resource: what is its own (its view, what creating and updating it takes).
mod credentials;
mod destinations;
mod flows;
mod ips;
mod numbers;
mod settings;
mod trunks;

use credentials::*;
pub use destinations::parse_destination;
use destinations::*;
use flows::*;
use ips::*;
use numbers::*;
use settings::*;
use trunks::*;

use crate::admission::check_e164;
use crate::model::{IpNet, Mode};
use crate::store::{
    new_id, CredentialRecord, CredentialUpdate, DestinationRecord, FlowDirection, FlowFallback,
    FlowProtocol, FlowRecord, IpRecord, Keyed, NewCredential, NewFlow, NewTrunk, NumberRecord,
    OnStreamEnd, Page, SettingRecord, Store, StoreError, Table, TrunkRecord, TrunkUpdate,
};

/// Page size of a list when `page_size` is not given.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest `page_size` accepted.
pub const MAX_PAGE_SIZE: u32 = 100;
/// The largest request body accepted (413 / 1013 beyond). Ample for [`MAX_ITEMS_PER_REQUEST`]
/// items; a bigger body is refused before it is read in full.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest request target (path and query) accepted (414 / 1014 beyond).
pub const MAX_URI_BYTES: usize = 2048;
/// The most items in one multi-item POST (destinations, settings): 413 / 1013 beyond.
pub const MAX_ITEMS_PER_REQUEST: usize = 100;
/// The most destination URIs one trunk may have: a POST that would exceed it is refused
/// whole (400 / 1012), so the snapshot every call reads stays small.
pub const MAX_DESTINATIONS_PER_TRUNK: usize = 100;
/// The most whitelisted IP ranges one trunk may have (400 / 1012 beyond).
pub const MAX_IPS_PER_TRUNK: usize = 100;

/// One account allowed to use the API: Basic auth user `api_key`, password `api_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAccount {
    pub account_sid: String,
    pub api_key: String,
    pub api_token: String,
}

/// What a successful write changed: the rows the SIP side must read again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A trunk or its sub-resources (numbers, IPs, destinations, credentials, settings).
    Trunk(String),
    /// A flow, by id.
    Flow(String),
    /// Anything: read everything again.
    All,
}

/// What [`ApiState::on_change`] returns.
pub type ChangeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    /// With none, every request is refused (401 / 1010).
    pub accounts: Vec<ApiAccount>,
    /// Awaited after every successful write, with what it changed, and before the response,
    /// so the SIP snapshot is refreshed by the time the client hears back (a change is live
    /// for its next call).
    pub on_change: Arc<dyn Fn(Change) -> ChangeFuture + Send + Sync>,
}

impl ApiState {
    /// A state whose `on_change` does nothing.
    pub fn new(store: Arc<Store>, accounts: Vec<ApiAccount>) -> Self {
        ApiState {
            store,
            accounts,
            on_change: Arc::new(|_| Box::pin(async {})),
        }
    }

    async fn changed(&self, change: Change) {
        (self.on_change)(change).await;
    }

    async fn trunk_changed(&self, sid: &str) {
        self.changed(Change::Trunk(sid.to_string())).await;
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("accounts", &self.accounts.len())
            .finish_non_exhaustive()
    }
}

type St = State<Arc<ApiState>>;
type Params = Path<HashMap<String, String>>;
type QueryMap = Query<HashMap<String, String>>;

/// The API's routes, ready to serve (`axum::serve(listener, router(state))`).
pub fn router(state: ApiState) -> Router {
    let mut r: Router<Arc<ApiState>> = Router::new()
        .route(
            &format!("{PREFIX}/trunks"),
            post(create_trunk)
                .get(list_trunks)
                .delete(delete_by_query::<TrunkRecord>),
        )
        .route(
            &format!("{PREFIX}/trunks/{{trunk_sid}}"),
            get(get_of_account::<TrunkRecord>)
                .put(update_trunk)
                .delete(delete_by_path::<TrunkRecord>),
        )
        .route(
            &format!("{PREFIX}/trunks/{{trunk_sid}}/credentials"),
            post(create_credential).get(list_in_trunk::<CredentialRecord>),
        )
        .route(
            &format!("{PREFIX}/credentials"),
            delete(delete_by_query::<CredentialRecord>),
        )
        .route(
            &format!("{PREFIX}/credentials/{{id}}"),
            get(get_of_account::<CredentialRecord>)
                .put(update_credential)
                .delete(delete_by_path::<CredentialRecord>),
        )
        .route(
            &format!("{PREFIX}/trunks/{{trunk_sid}}/settings"),
            post(set_settings).get(list_in_trunk::<SettingRecord>),
        )
        .route(
            &format!("{PREFIX}/flows"),
            post(create_flow).get(list_flows),
        )
        .route(
            &format!("{PREFIX}/flows/{{flow_id}}"),
            get(get_of_account::<FlowRecord>)
                .put(update_flow)
                .delete(delete_by_path::<FlowRecord>),
        );
    for name in ["phone-numbers", "phone_numbers"] {
        r = r
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}"),
                post(create_number).get(list_in_trunk::<NumberRecord>),
            )
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}/{{id}}"),
                get(get_in_trunk::<NumberRecord>)
                    .put(update_number)
                    .delete(delete_in_trunk::<NumberRecord>),
            );
    }
    for name in ["whitelisted-ips", "whitelisted_ips"] {
        r = r
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}"),
                post(create_ip).get(list_in_trunk::<IpRecord>),
            )
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}/{{id}}"),
                delete(delete_in_trunk::<IpRecord>),
            );
    }
    for name in ["destination-uris", "destination_uris"] {
        r = r
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}"),
                post(create_destinations).get(list_in_trunk::<DestinationRecord>),
            )
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}/{{id}}"),
                delete(delete_in_trunk::<DestinationRecord>),
            );
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Extractor rejections (a body over the limit, a path that is not UTF-8, …) are
        // axum's plain-text answers; this puts them in the envelope like every other answer.
        .layer(axum::middleware::map_response(envelope_bare_answers))
        .layer(axum::middleware::from_fn(refuse_long_uri))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(state))
}

const PREFIX: &str = "/v2/accounts/{account_sid}";

#[cfg(test)]
mod tests;
