//! Admission of each INVITE by the customer trunks: the source address, digest credentials
//! and the dialled number decide whether a call is taken, challenged (401) or refused, with
//! the seed's answers (403, 404/484, 486, 503). The decision itself is
//! [`voicegate_control::Admission`]; this module feeds it from the SIP request and holds the
//! digest nonces and the per-trunk counters.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::warn;
use voicegate_bridge::dialect::Protocol;
use voicegate_bridge::ws::BotUrl;
use voicegate_control::{
    Admission, Change, ControlSnapshot, Decision, DestinationRecord, FlowDirection, FlowProtocol,
    FlowRecord, InviteFacts, IpNet, Mode, NumberMapping, Snapshot, Store, StoreError, Trunk,
    TrunkSlice,
};
use voicegate_sip::digest::{DigestServer, Verdict};
use voicegate_sip::message::Request;

use crate::settings::FlowRoute;
use crate::trunk_config::TrunkConfig;

/// How long a digest nonce is good for.
const NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// The trunks as calls see them: replaced as a whole when they change. Cheap to clone (a
/// trunk's destinations are shared), so one change can be applied to a copy.
#[derive(Clone, Default)]
pub struct Trunks {
    pub snapshot: Snapshot,
    /// Config-file credentials first, then the store's in its order.
    credentials: Vec<Credential>,
    /// Flows of the trunk API, by id.
    flows: HashMap<String, Arc<FlowRoute>>,
    /// Trunks whose PBX may REGISTER.
    registering: HashSet<String>,
    /// Destination URIs by trunk, lowest priority first.
    destinations: HashMap<String, Arc<Vec<DestinationRecord>>>,
    /// `trunk_external_alias` by trunk: the caller ID of the calls it places.
    aliases: HashMap<String, String>,
    /// `date_created` of the store's trunks, which orders them after the config file's.
    created: HashMap<String, String>,
}

/// A digest credential and its place in the store's order (empty for the config file's).
#[derive(Clone, Debug)]
struct Credential {
    order: (String, String),
    trunk_sid: String,
    user_name: String,
    password: String,
}

impl Trunks {
    /// The trunks declared in the config file, then those of the trunk API's store.
    pub fn build(config: &[TrunkConfig], store: Option<&ControlSnapshot>) -> Self {
        let mut out = Self::from_config(config);
        let Some(store) = store else { return out };
        out.add_store_rows(store);
        for flow in &store.flows {
            out.set_flow(&flow.id, Some(flow));
        }
        out
    }

    /// Replaces a store trunk's rows by `slice` (removes them when it is `None`), in place:
    /// the trunk keeps its position, or takes the one its `date_created` gives it.
    pub fn set_trunk(&mut self, sid: &str, slice: Option<&TrunkSlice>) {
        if self.created.remove(sid).is_some() {
            self.snapshot.trunks.retain(|t| t.sid != sid);
            self.snapshot.numbers.retain(|n| n.trunk_sid != sid);
            self.credentials.retain(|c| c.trunk_sid != sid);
            self.registering.remove(sid);
            self.destinations.remove(sid);
            self.aliases.remove(sid);
        }
        if let Some(slice) = slice {
            self.add_store_rows(slice.rows());
        }
    }

    /// Replaces a flow of the trunk API (removes it when `flow` is `None`).
    pub fn set_flow(&mut self, id: &str, flow: Option<&FlowRecord>) {
        self.flows.remove(id);
        let Some(flow) = flow else { return };
        match flow_route(flow) {
            Ok(route) => {
                self.flows.insert(flow.id.clone(), Arc::new(route));
            }
            Err(e) => warn!(flow = flow.id, error = %e, "flow with an unusable stream_url ignored"),
        }
    }

    /// Adds the trunks of `store` (none of them present yet) at their place in its order.
    fn add_store_rows(&mut self, store: &ControlSnapshot) {
        for (trunk, record) in store.snapshot.trunks.iter().zip(&store.trunks) {
            let key = (record.date_created.as_str(), record.sid.as_str());
            let at = self.snapshot.trunks.partition_point(|t| {
                let created = self.created.get(&t.sid).map_or("", String::as_str);
                (created, t.sid.as_str()) < key
            });
            self.snapshot.trunks.insert(at, trunk.clone());
            self.created
                .insert(record.sid.clone(), record.date_created.clone());
            if record.registration_enabled {
                self.registering.insert(record.sid.clone());
            }
        }
        self.snapshot
            .numbers
            .extend(store.snapshot.numbers.iter().cloned());
        let mut destinations: HashMap<&str, Vec<DestinationRecord>> = HashMap::new();
        for d in &store.destinations {
            destinations
                .entry(&d.trunk_sid)
                .or_default()
                .push(d.clone());
        }
        for (sid, mut list) in destinations {
            list.sort_by_key(|d| d.priority);
            self.destinations.insert(sid.to_string(), Arc::new(list));
        }
        for s in &store.settings {
            if s.name == "trunk_external_alias" && !s.value.is_empty() {
                self.aliases.insert(s.trunk_sid.clone(), s.value.clone());
            }
        }
        for c in &store.credentials {
            let at = self
                .credentials
                .partition_point(|have| have.order <= c.order);
            self.credentials.insert(
                at,
                Credential {
                    order: c.order.clone(),
                    trunk_sid: c.trunk_sid.clone(),
                    user_name: c.user_name.clone(),
                    password: c.password.clone(),
                },
            );
        }
    }

    /// A trunk's destination URIs, lowest priority first.
    pub fn destinations(&self, trunk_sid: &str) -> &[DestinationRecord] {
        self.destinations
            .get(trunk_sid)
            .map(|list| list.as_slice())
            .unwrap_or_default()
    }

    /// The caller ID for calls the trunk places, if set.
    pub fn external_alias(&self, trunk_sid: &str) -> Option<String> {
        self.aliases.get(trunk_sid).cloned()
    }

    /// Whether the trunk's PBX may REGISTER.
    pub fn registration_enabled(&self, trunk_sid: &str) -> bool {
        self.registering.contains(trunk_sid)
    }

    /// Whether any trunk exists: without one, admission is off (a demo setup).
    pub fn is_empty(&self) -> bool {
        self.snapshot.trunks.is_empty()
    }

    /// The trunks declared in the config file.
    fn from_config(trunks: &[TrunkConfig]) -> Self {
        let mut out = Trunks::default();
        for (i, t) in trunks.iter().enumerate() {
            let sid = format!("cfg-{i}-{}", t.name);
            let mut trunk = Trunk::new(sid.clone(), t.name.clone());
            trunk.active = t.active;
            trunk.whitelisted = t
                .whitelisted_ips
                .iter()
                .filter_map(|n| IpNet::parse(n).ok())
                .collect();
            trunk.has_credentials = !t.credentials.is_empty();
            trunk.max_concurrent_calls =
                (t.max_concurrent_calls > 0).then_some(t.max_concurrent_calls);
            trunk.calls_per_minute = t.calls_per_minute;
            out.snapshot.trunks.push(trunk);
            if t.registration_enabled {
                out.registering.insert(sid.clone());
            }
            for c in &t.credentials {
                out.credentials.push(Credential {
                    order: Default::default(),
                    trunk_sid: sid.clone(),
                    user_name: c.user_name.clone(),
                    password: c.password.clone(),
                });
            }
            for n in &t.numbers {
                // Config numbers name config flows (by name); the call looks them up there.
                let mode = if n.mode == "flow" {
                    Mode::Flow {
                        flow_id: n.flow.clone(),
                    }
                } else {
                    Mode::Pstn
                };
                out.snapshot.numbers.push(NumberMapping {
                    number: n.number.clone(),
                    trunk_sid: sid.clone(),
                    mode,
                });
            }
        }
        out
    }
}

/// A flow of the store as calls use it.
fn flow_route(flow: &FlowRecord) -> Result<FlowRoute, String> {
    let url = BotUrl::parse(&flow.stream_url).map_err(|e| e.to_string())?;
    Ok(FlowRoute {
        name: flow.id.clone(),
        account_sid: flow.account_sid.clone(),
        url,
        protocol: match flow.protocol {
            FlowProtocol::Exotel => Protocol::Exotel,
            FlowProtocol::Twilio => Protocol::Twilio,
        },
        bidirectional: flow.direction == FlowDirection::Bidirectional,
        numbers: Vec::new(),
        connect_on_end: match &flow.on_stream_end {
            voicegate_control::OnStreamEnd::Connect { destination } => Some(destination.clone()),
            voicegate_control::OnStreamEnd::Hangup => None,
        },
        default_agent: match &flow.on_stream_end {
            voicegate_control::OnStreamEnd::Connect { destination } => Some(destination.clone()),
            voicegate_control::OnStreamEnd::Hangup => None,
        },
        agent_assist: flow.agent_assist,
        fallback_to_bot: flow.fallback == voicegate_control::FlowFallback::Bot,
        parameters: flow
            .custom_parameters
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
    })
}

/// Puts the MD5 challenge first. RFC 8760 would put SHA-256 first, but many deployed UAs
/// (SIPp among them) answer only the first challenge and know only MD5; UAs that support
/// SHA-256 still find it in the second header.
fn md5_first(mut challenges: Vec<String>) -> Vec<String> {
    challenges.sort_by_key(|c| !c.contains("algorithm=MD5"));
    challenges
}

/// What admission says about one INVITE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Taken: on this trunk (counted until [`Gate::call_ended`]), going to a flow or the PSTN.
    Admitted { trunk_sid: String, mode: Mode },
    /// 401 with these WWW-Authenticate values.
    Challenge(Vec<String>),
    Refused {
        status: u16,
        reason: String,
        retry_after: Option<u32>,
    },
}

/// The admission gate every INVITE passes when trunks are configured.
pub struct Gate {
    trunks: RwLock<Arc<Trunks>>,
    admission: Mutex<Admission>,
    digest: Mutex<DigestServer>,
}

impl Gate {
    pub fn new(trunks: Trunks, realm: &str) -> Self {
        Gate {
            trunks: RwLock::new(Arc::new(trunks)),
            admission: Mutex::new(Admission::new()),
            digest: Mutex::new(DigestServer::new(realm, NONCE_LIFETIME)),
        }
    }

    /// A flow of the trunk API, by id.
    pub fn flow(&self, id: &str) -> Option<Arc<FlowRoute>> {
        self.trunks().flows.get(id).cloned()
    }

    /// Whether admission applies (some trunk exists).
    pub fn is_active(&self) -> bool {
        !self.trunks().is_empty()
    }

    pub fn trunks(&self) -> Arc<Trunks> {
        self.trunks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes changed trunks live for the next call.
    pub fn replace(&self, trunks: Trunks) {
        *self.trunks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(trunks);
    }

    pub fn decide(&self, invite: &Request, source: IpAddr, dialled: &str) -> Outcome {
        let trunks = self.trunks();
        let authorization = invite
            .headers
            .get("Authorization")
            .or_else(|| invite.headers.get("Proxy-Authorization"));
        let authenticated_trunk = match authorization {
            Some(header) => match self.verify(&trunks, header, invite.method.as_str()) {
                Ok(trunk) => Some(trunk),
                Err(answer) => return answer,
            },
            None => None,
        };
        let facts = InviteFacts {
            source,
            dialled,
            authenticated_trunk: authenticated_trunk.as_deref(),
            offered_credentials: authorization.is_some(),
        };
        let decision = self
            .admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decide(&trunks.snapshot, &facts, Instant::now());
        match decision {
            Decision::Admit { trunk_sid, mode } => Outcome::Admitted { trunk_sid, mode },
            Decision::Challenge => self.challenge(false),
            Decision::Reject {
                status,
                reason,
                retry_after,
            } => Outcome::Refused {
                status,
                reason,
                retry_after,
            },
        }
    }

    /// Digest authentication alone (for REGISTER): the trunk whose credentials the request
    /// carries, or the 401/403 to answer.
    pub fn authenticate(&self, request: &Request) -> Result<String, Outcome> {
        match request.headers.get("Authorization") {
            Some(header) => self.verify(&self.trunks(), header, request.method.as_str()),
            None => Err(self.challenge(false)),
        }
    }

    /// Checks an Authorization header against every trunk's credentials: the trunk it
    /// authenticates, or the answer (a new challenge, or 403).
    fn verify(&self, trunks: &Trunks, header: &str, method: &str) -> Result<String, Outcome> {
        let password_for = |user: &str| {
            trunks
                .credentials
                .iter()
                .find(|c| c.user_name == user)
                .map(|c| c.password.clone())
        };
        let verdict = self
            .digest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verify(header, method, crate::clock::unix_secs(), password_for);
        let forbidden = |reason: String| Outcome::Refused {
            status: 403,
            reason,
            retry_after: None,
        };
        match verdict {
            Verdict::Ok { username } => trunks
                .credentials
                .iter()
                .find(|c| c.user_name == username)
                .map(|c| c.trunk_sid.clone())
                .ok_or_else(|| forbidden("Forbidden (bad credentials)".into())),
            Verdict::Stale => Err(self.challenge(true)),
            Verdict::Replay => Err(self.challenge(false)),
            Verdict::BadCredentials => Err(forbidden("Forbidden (bad credentials)".into())),
            Verdict::Malformed(why) => {
                Err(forbidden(format!("Forbidden (bad Authorization: {why})")))
            }
        }
    }

    fn challenge(&self, stale: bool) -> Outcome {
        let values = self
            .digest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .challenge(crate::clock::unix_secs(), stale);
        Outcome::Challenge(md5_first(values))
    }

    /// Frees the trunk's concurrent-call slot taken when the call was admitted.
    pub fn call_ended(&self, trunk_sid: &str) {
        self.admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .call_ended(trunk_sid);
    }
}

/// A burst touching more trunks and flows than this re-reads everything in one transaction
/// rather than each in its own.
const MAX_SCOPED_CHANGES: usize = 16;

/// Makes `changes` live: re-reads what they name (everything for [`Change::All`] or a large
/// burst) and swaps the result in whole. Calls must not overlap (see [`CoalescedReload`]):
/// each starts from the trunks the previous one left.
pub async fn refresh(store: &Store, gate: &Gate, changes: Vec<Change>) {
    let scoped = changes.len() <= MAX_SCOPED_CHANGES && !changes.contains(&Change::All);
    let result = if scoped {
        match reread(store, gate, &changes).await {
            Ok(next) => Ok(next),
            Err(e) => {
                // E.g. a flow row that does not parse: a full reload skips it and goes on.
                tracing::warn!(error = %e, "could not re-read what an API change touched");
                full_reload(store).await
            }
        }
    } else {
        full_reload(store).await
    };
    match result {
        Ok(next) => gate.replace(next),
        Err(e) => tracing::error!(error = %e, "could not reload trunks after an API change"),
    }
}

/// The gate's trunks with the trunks and flows `changes` name read again.
async fn reread(store: &Store, gate: &Gate, changes: &[Change]) -> Result<Trunks, StoreError> {
    let mut next = (*gate.trunks()).clone();
    for change in changes {
        match change {
            Change::Trunk(sid) => next.set_trunk(sid, store.trunk_slice(sid).await?.as_ref()),
            Change::Flow(id) => next.set_flow(id, store.flow_by_id(id).await?.as_ref()),
            Change::All => return full_reload(store).await,
        }
    }
    Ok(next)
}

async fn full_reload(store: &Store) -> Result<Trunks, StoreError> {
    Ok(Trunks::build(&[], Some(&store.snapshot().await?)))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use voicegate_control::store::CredentialUpdate;
    use voicegate_control::{
        Change, NewCredential, NewFlow, NewTrunk, OnStreamEnd, Store, TrunkUpdate,
    };

    use super::*;

    /// Everything calls can see, in an order that does not depend on how it was built.
    /// Numbers are unique in the store, so their order means nothing; the order of trunks
    /// and credentials does (the first match wins) and is kept.
    fn dump(t: &Trunks) -> String {
        let mut numbers = t.snapshot.numbers.clone();
        numbers.sort_by(|a, b| a.number.cmp(&b.number));
        let flows: BTreeMap<_, _> = t.flows.iter().collect();
        let registering: BTreeSet<_> = t.registering.iter().collect();
        let destinations: BTreeMap<_, _> = t.destinations.iter().collect();
        let aliases: BTreeMap<_, _> = t.aliases.iter().collect();
        let created: BTreeMap<_, _> = t.created.iter().collect();
        format!(
            "{:#?}",
            (
                &t.snapshot.trunks,
                numbers,
                &t.credentials,
                flows,
                registering,
                destinations,
                aliases,
                created
            )
        )
    }

    fn flow(url: &str) -> NewFlow {
        NewFlow {
            name: "bot".into(),
            stream_url: url.into(),
            protocol: FlowProtocol::Exotel,
            direction: FlowDirection::Bidirectional,
            custom_parameters: Default::default(),
            on_stream_end: OnStreamEnd::Hangup,
            agent_assist: false,
            fallback: Default::default(),
        }
    }

    /// Lets the clock move on, so rows get distinct `date_created` (milliseconds) and their
    /// order is that of the test, not of random ids.
    async fn tick() {
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    struct Check {
        store: Store,
        gate: Gate,
        steps: usize,
    }

    impl Check {
        /// Refreshes only `change`, then compares with a build from a full snapshot.
        async fn after(&mut self, change: Change) {
            self.steps += 1;
            refresh(&self.store, &self.gate, vec![change.clone()]).await;
            let full = Trunks::build(&[], Some(&self.store.snapshot().await.unwrap()));
            let scoped = self.gate.trunks();
            assert_eq!(
                dump(&scoped),
                dump(&full),
                "step {} ({change:?})",
                self.steps
            );
        }
    }

    #[tokio::test]
    async fn a_scoped_refresh_after_each_kind_of_write_equals_a_full_reload() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let mut c = Check {
            store,
            gate: Gate::new(Trunks::default(), "test"),
            steps: 0,
        };
        let acc = "AC1";
        let trunk = |c: &Change| match c {
            Change::Trunk(sid) => sid.clone(),
            _ => unreachable!(),
        };
        let mut sids = Vec::new();
        for name in ["a", "b", "c"] {
            tick().await;
            let rec = c
                .store
                .create_trunk(acc, &NewTrunk::new(name, "ANY-ANY", "x.example"))
                .await
                .unwrap();
            sids.push(Change::Trunk(rec.sid));
            c.after(sids.last().unwrap().clone()).await;
        }
        let (a, b, cc) = (trunk(&sids[0]), trunk(&sids[1]), trunk(&sids[2]));

        let f1 = c.store.create_flow(acc, &flow("ws://127.0.0.1:9/")).await;
        let f1 = f1.unwrap().id;
        c.after(Change::Flow(f1.clone())).await;
        let f2 = c.store.create_flow(acc, &flow("ws://127.0.0.1:8/")).await;
        let f2 = f2.unwrap().id;
        c.after(Change::Flow(f2.clone())).await;
        c.store
            .update_flow(acc, &f2, &flow("wss://bot.example/v2"))
            .await
            .unwrap();
        c.after(Change::Flow(f2.clone())).await;
        // An unusable URL is left out either way.
        c.store
            .update_flow(acc, &f2, &flow("http://not-a-ws/"))
            .await
            .unwrap();
        c.after(Change::Flow(f2.clone())).await;

        // The same network on every trunk: the first in order wins, so order must hold.
        for sid in [&cc, &a, &b] {
            let net = IpNet::parse("10.1.0.0/16").unwrap();
            c.store.add_ip(sid, net).await.unwrap();
            c.after(Change::Trunk(sid.clone())).await;
        }
        let ip = c
            .store
            .add_ip(&b, IpNet::parse("192.0.2.7").unwrap())
            .await
            .unwrap();
        c.after(Change::Trunk(b.clone())).await;

        let n1 = c
            .store
            .add_number(
                &a,
                "+15550001",
                &Mode::Flow {
                    flow_id: f1.clone(),
                },
            )
            .await
            .unwrap();
        c.after(Change::Trunk(a.clone())).await;
        c.store
            .add_number(&b, "+15550002", &Mode::Pstn)
            .await
            .unwrap();
        c.after(Change::Trunk(b.clone())).await;
        c.store
            .add_number(&cc, "+15550003", &Mode::Pstn)
            .await
            .unwrap();
        c.after(Change::Trunk(cc.clone())).await;
        c.store
            .update_number(&a, &n1.id, "+15550009", &Mode::Pstn)
            .await
            .unwrap();
        c.after(Change::Trunk(a.clone())).await;

        for (uri, priority) in [("sip:10.1.0.9", Some(5)), ("sip:10.1.0.8", Some(1))] {
            c.store
                .add_destination(&a, uri, priority, None)
                .await
                .unwrap();
            c.after(Change::Trunk(a.clone())).await;
        }
        let d = c
            .store
            .add_destination(&b, "sip:10.1.0.7", None, None)
            .await
            .unwrap();
        c.after(Change::Trunk(b.clone())).await;
        c.store.delete_destination(&b, &d.id).await.unwrap();
        c.after(Change::Trunk(b.clone())).await;

        // One user name on two trunks: the older credential decides, so order must hold.
        let secret = |p: &str| NewCredential {
            user_name: "pbx".into(),
            password: p.into(),
            friendly_name: None,
        };
        let cred_c = c.store.add_credential(&cc, &secret("one")).await.unwrap();
        c.after(Change::Trunk(cc.clone())).await;
        tick().await;
        c.store.add_credential(&a, &secret("two")).await.unwrap();
        c.after(Change::Trunk(a.clone())).await;
        let update = CredentialUpdate {
            password: Some("three".into()),
            ..Default::default()
        };
        c.store
            .update_credential(acc, &cred_c.id, &update)
            .await
            .unwrap();
        c.after(Change::Trunk(cc.clone())).await;

        c.store
            .set_setting(&a, "trunk_external_alias", "+15550100")
            .await
            .unwrap();
        c.after(Change::Trunk(a.clone())).await;
        c.store.set_setting(&a, "other", "x").await.unwrap();
        c.after(Change::Trunk(a.clone())).await;

        let update = TrunkUpdate {
            name: Some("a2".into()),
            status: Some("inactive".into()),
            registration_enabled: Some(true),
            max_concurrent_calls: Some(Some(3)),
            ..Default::default()
        };
        c.store.update_trunk(acc, &a, &update).await.unwrap();
        c.after(Change::Trunk(a.clone())).await;

        c.store.delete_ip(&b, &ip.id).await.unwrap();
        c.after(Change::Trunk(b.clone())).await;
        c.store.delete_credential(acc, &cred_c.id).await.unwrap();
        c.after(Change::Trunk(cc.clone())).await;
        c.store.delete_number(&a, &n1.id).await.unwrap();
        c.after(Change::Trunk(a.clone())).await;

        // A trunk in the middle goes; one created later goes last.
        c.store.delete_trunk(acc, &b).await.unwrap();
        c.after(Change::Trunk(b.clone())).await;
        tick().await;
        let d = c
            .store
            .create_trunk(acc, &NewTrunk::new("d", "ANY-ANY", "x.example"))
            .await
            .unwrap();
        c.store
            .add_ip(&d.sid, IpNet::parse("10.1.0.0/24").unwrap())
            .await
            .unwrap();
        c.after(Change::Trunk(d.sid.clone())).await;
        c.store.delete_flow(acc, &f2).await.unwrap();
        c.after(Change::Flow(f2.clone())).await;
        c.after(Change::Trunk("TRgone".into())).await;

        let trunks = c.gate.trunks();
        let order: Vec<&str> = trunks
            .snapshot
            .trunks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(order, ["a2", "c", "d"]);
        assert!(trunks.destinations(&a).len() == 2 && trunks.registration_enabled(&a));
        assert!(trunks.flows.contains_key(&f1) && !trunks.flows.contains_key(&f2));
    }

    #[tokio::test]
    async fn config_file_trunks_stay_first_and_untouched() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let rec = store
            .create_trunk("AC1", &NewTrunk::new("stored", "ANY-ANY", "x.example"))
            .await
            .unwrap();
        let config = crate::trunk_config::TrunkConfig {
            name: "file".into(),
            whitelisted_ips: vec!["10.1.0.0/16".into()],
            ..Default::default()
        };
        let config = [config];
        let mut trunks = Trunks::build(&config, Some(&store.snapshot().await.unwrap()));
        let names = |t: &Trunks| -> Vec<String> {
            t.snapshot.trunks.iter().map(|t| t.name.clone()).collect()
        };
        let cfg_sid = trunks.snapshot.trunks[0].sid.clone();
        trunks.set_trunk(&cfg_sid, None);
        assert_eq!(names(&trunks), ["file", "stored"]);
        store
            .add_ip(&rec.sid, IpNet::parse("10.1.0.0/16").unwrap())
            .await
            .unwrap();
        trunks.set_trunk(
            &rec.sid,
            store.trunk_slice(&rec.sid).await.unwrap().as_ref(),
        );
        assert_eq!(names(&trunks), ["file", "stored"]);
        let source = "10.1.2.3".parse().unwrap();
        assert_eq!(
            trunks.snapshot.trunk_for_source(source).unwrap().sid,
            cfg_sid
        );
        trunks.set_trunk(&rec.sid, None);
        assert_eq!(names(&trunks), ["file"]);
    }
}
