//! Admission of each INVITE by the customer trunks: the source address, digest credentials
//! and the dialled number decide whether a call is taken, challenged (401) or refused, with
//! the seed's answers (403, 404/484, 486, 503). The decision itself is
//! [`voicegate_control::Admission`]; this module feeds it from the SIP request and holds the
//! digest nonces and the per-trunk counters.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;
use voicegate_bridge::dialect::Protocol;
use voicegate_bridge::ws::BotUrl;
use voicegate_control::{
    Admission, ControlSnapshot, Decision, DestinationRecord, FlowDirection, FlowProtocol,
    FlowRecord, InviteFacts, IpNet, Mode, NumberMapping, Snapshot, Trunk,
};
use voicegate_sip::digest::{DigestServer, Verdict};
use voicegate_sip::message::Request;

use crate::config::TrunkConfig;
use crate::core::FlowRoute;

/// How long a digest nonce is good for.
const NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// The trunks as calls see them: replaced as a whole when they change.
#[derive(Default)]
pub struct Trunks {
    pub snapshot: Snapshot,
    /// (trunk sid, user name, password).
    credentials: Vec<(String, String, String)>,
    /// Flows of the trunk API, by id.
    flows: HashMap<String, Arc<FlowRoute>>,
    /// Trunks whose PBX may REGISTER.
    registering: Vec<String>,
    /// Destination URIs by trunk, lowest priority first.
    destinations: HashMap<String, Vec<DestinationRecord>>,
    /// `trunk_external_alias` by trunk: the caller ID of the calls it places.
    aliases: HashMap<String, String>,
}

impl Trunks {
    /// The trunks declared in the config file, then those of the trunk API's store.
    pub fn build(config: &[TrunkConfig], store: Option<&ControlSnapshot>) -> Self {
        let mut out = Self::from_config(config);
        let Some(store) = store else { return out };
        out.snapshot
            .trunks
            .extend(store.snapshot.trunks.iter().cloned());
        out.snapshot
            .numbers
            .extend(store.snapshot.numbers.iter().cloned());
        out.registering.extend(
            store
                .trunks
                .iter()
                .filter(|t| t.registration_enabled)
                .map(|t| t.sid.clone()),
        );
        for d in &store.destinations {
            out.destinations
                .entry(d.trunk_sid.clone())
                .or_default()
                .push(d.clone());
        }
        for list in out.destinations.values_mut() {
            list.sort_by_key(|d| d.priority);
        }
        for s in &store.settings {
            if s.name == "trunk_external_alias" && !s.value.is_empty() {
                out.aliases.insert(s.trunk_sid.clone(), s.value.clone());
            }
        }
        for c in &store.credentials {
            out.credentials
                .push((c.trunk_sid.clone(), c.user_name.clone(), c.password.clone()));
        }
        for flow in &store.flows {
            match flow_route(flow) {
                Ok(route) => {
                    out.flows.insert(flow.id.clone(), Arc::new(route));
                }
                Err(e) => {
                    warn!(flow = flow.id, error = %e, "flow with an unusable stream_url ignored")
                }
            }
        }
        out
    }

    /// A trunk's destination URIs, lowest priority first.
    pub fn destinations(&self, trunk_sid: &str) -> &[DestinationRecord] {
        self.destinations
            .get(trunk_sid)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The caller ID for calls the trunk places, if set.
    pub fn external_alias(&self, trunk_sid: &str) -> Option<String> {
        self.aliases.get(trunk_sid).cloned()
    }

    /// Whether the trunk's PBX may REGISTER.
    pub fn registration_enabled(&self, trunk_sid: &str) -> bool {
        self.registering.iter().any(|t| t == trunk_sid)
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
                out.registering.push(sid.clone());
            }
            for c in &t.credentials {
                out.credentials
                    .push((sid.clone(), c.user_name.clone(), c.password.clone()));
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
                .find(|(_, u, _)| u == user)
                .map(|(_, _, p)| p.clone())
        };
        let verdict = self
            .digest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verify(header, method, now_secs(), password_for);
        let forbidden = |reason: String| Outcome::Refused {
            status: 403,
            reason,
            retry_after: None,
        };
        match verdict {
            Verdict::Ok { username } => trunks
                .credentials
                .iter()
                .find(|(_, u, _)| *u == username)
                .map(|(t, _, _)| t.clone())
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
            .challenge(now_secs(), stale);
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
