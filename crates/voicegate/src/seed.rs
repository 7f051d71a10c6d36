//! Seeding the store from the config file: the flows and trunks declared there are created,
//! or updated to match, at every start (for demos, and for people who keep configuration in
//! git). For a seeded trunk the file is the truth: its whitelist, credentials and numbers are
//! replaced by the file's. Everything else in the store is left alone.

use std::collections::HashMap;

use voicegate_control::{
    FlowDirection, FlowProtocol, IpNet, Mode, NewCredential, NewFlow, NewTrunk, OnStreamEnd, Page,
    Store, TrunkUpdate,
};

use crate::config::Config;

/// The account seeded records belong to: the first `[api]` account, so they can be seen and
/// changed through the API, else "config".
pub fn seed_account(config: &Config) -> String {
    config
        .api
        .accounts
        .first()
        .map(|a| a.account_sid.clone())
        .unwrap_or_else(|| "config".into())
}

pub async fn seed(store: &Store, config: &Config) -> Result<(), String> {
    let account = seed_account(config);
    let err = |what: &str, e: voicegate_control::StoreError| format!("seeding {what}: {e}");

    let mut flow_ids = HashMap::new();
    let existing = store
        .list_flows(&account, Page::ALL)
        .await
        .map_err(|e| err("flows", e))?;
    for flow in &config.flows {
        let new = NewFlow {
            name: flow.name.clone(),
            stream_url: flow.url.clone(),
            protocol: if flow.protocol == "twilio" {
                FlowProtocol::Twilio
            } else {
                FlowProtocol::Exotel
            },
            direction: if flow.direction == "unidirectional" {
                FlowDirection::Unidirectional
            } else {
                FlowDirection::Bidirectional
            },
            custom_parameters: serde_json::Map::new(),
            on_stream_end: if flow.on_stream_end == "connect" {
                OnStreamEnd::Connect {
                    destination: flow.connect_to.clone(),
                }
            } else {
                OnStreamEnd::Hangup
            },
            agent_assist: flow.agent_assist,
            fallback: if flow.fallback == "bot" {
                voicegate_control::FlowFallback::Bot
            } else {
                voicegate_control::FlowFallback::Hangup
            },
        };
        let record = match existing.iter().find(|f| f.name == flow.name) {
            Some(found) => store
                .update_flow(&account, &found.id, &new)
                .await
                .map_err(|e| err("flows", e))?,
            None => Some(
                store
                    .create_flow(&account, &new)
                    .await
                    .map_err(|e| err("flows", e))?,
            ),
        };
        if let Some(record) = record {
            flow_ids.insert(flow.name.clone(), record.id);
        }
    }

    let existing = store
        .list_trunks(&account, Page::ALL)
        .await
        .map_err(|e| err("trunks", e))?;
    for t in &config.trunks {
        let limit = (t.max_concurrent_calls > 0).then_some(t.max_concurrent_calls);
        let found = existing.iter().find(|r| r.name == t.name);
        let trunk = match found {
            Some(found) => {
                let update = TrunkUpdate {
                    status: Some(if t.active { "active" } else { "inactive" }.into()),
                    registration_enabled: Some(t.registration_enabled),
                    max_concurrent_calls: Some(limit),
                    calls_per_minute: Some(t.calls_per_minute),
                    ..TrunkUpdate::default()
                };
                store
                    .update_trunk(&account, &found.sid, &update)
                    .await
                    .map_err(|e| err("trunks", e))?
                    .ok_or("seeded trunk vanished")?
            }
            None => {
                let mut new = NewTrunk::new(t.name.clone(), "ANY-ANY", "voicegate.local");
                new.status = if t.active { "active" } else { "inactive" }.into();
                new.registration_enabled = t.registration_enabled;
                new.max_concurrent_calls = limit;
                new.calls_per_minute = t.calls_per_minute;
                store
                    .create_trunk(&account, &new)
                    .await
                    .map_err(|e| err("trunks", e))?
            }
        };
        let sid = trunk.sid;
        for ip in store
            .list_ips(&sid, Page::ALL)
            .await
            .map_err(|e| err("whitelisted IPs", e))?
        {
            store
                .delete_ip(&sid, &ip.id)
                .await
                .map_err(|e| err("whitelisted IPs", e))?;
        }
        for net in &t.whitelisted_ips {
            let net =
                IpNet::parse(net).map_err(|e| format!("seeding whitelisted IPs: {net}: {e}"))?;
            store
                .add_ip(&sid, net)
                .await
                .map_err(|e| err("whitelisted IPs", e))?;
        }
        for c in store
            .list_credentials(&sid, Page::ALL)
            .await
            .map_err(|e| err("credentials", e))?
        {
            store
                .delete_credential(&account, &c.id)
                .await
                .map_err(|e| err("credentials", e))?;
        }
        for c in &t.credentials {
            let new = NewCredential {
                user_name: c.user_name.clone(),
                password: c.password.clone(),
                friendly_name: None,
            };
            store
                .add_credential(&sid, &new)
                .await
                .map_err(|e| err("credentials", e))?;
        }
        for n in store
            .list_numbers(&sid, Page::ALL)
            .await
            .map_err(|e| err("numbers", e))?
        {
            store
                .delete_number(&sid, &n.id)
                .await
                .map_err(|e| err("numbers", e))?;
        }
        for n in &t.numbers {
            let mode = match (n.mode.as_str(), flow_ids.get(&n.flow)) {
                ("flow", Some(id)) => Mode::Flow {
                    flow_id: id.clone(),
                },
                ("flow", None) => {
                    return Err(format!(
                        "seeding numbers: {}: no flow named {:?}",
                        n.number, n.flow
                    ))
                }
                _ => Mode::Pstn,
            };
            store
                .add_number(&sid, &n.number, &mode)
                .await
                .map_err(|e| err("numbers", e))?;
        }
        for d in store
            .list_destinations(&sid, Page::ALL)
            .await
            .map_err(|e| err("destination URIs", e))?
        {
            store
                .delete_destination(&sid, &d.id)
                .await
                .map_err(|e| err("destination URIs", e))?;
        }
        for (priority, destination) in t.destinations.iter().enumerate() {
            let (uri, _) = voicegate_control::parse_destination(destination)
                .map_err(|e| format!("seeding destination URIs: {destination}: {e}"))?;
            store
                .add_destination(&sid, &uri, Some(priority as i64), None)
                .await
                .map_err(|e| err("destination URIs", e))?;
        }
        if !t.external_alias.is_empty() {
            store
                .set_setting(&sid, "trunk_external_alias", &t.external_alias)
                .await
                .map_err(|e| err("settings", e))?;
        }
    }
    Ok(())
}
