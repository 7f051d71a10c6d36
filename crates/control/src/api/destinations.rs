//! A trunk's destination URIs, where its inbound calls go.

use super::*;

impl Resource for DestinationRecord {
    const NAME: &'static str = "Destination";

    fn change(&self) -> Change {
        Change::Trunk(self.trunk_sid.clone())
    }
}

/// A destination as stored (`sip:` or `sips:` prefix) and its host if that is an IP address.
///
/// Accepts `host`, `host:port`, `[v6]:port`, `user@host`, each with `;params` (a `transport`
/// must be udp, tcp or tls) and optionally already prefixed with `sip:` / `sips:`.
pub fn parse_destination(input: &str) -> Result<(String, Option<IpAddr>), String> {
    let input = input.trim();
    if input.is_empty() || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("destination must be host[:port][;params] without spaces".into());
    }
    let lower = input.to_ascii_lowercase();
    let (scheme, rest) = if lower.starts_with("sips:") {
        ("sips:", &input[5..])
    } else if lower.starts_with("sip:") {
        ("sip:", &input[4..])
    } else {
        ("sip:", input)
    };
    let (hostport, params) = match rest.split_once(';') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("unterminated IPv6 address in destination")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("bad port in destination")?),
        };
        (h, port)
    } else if hostport.matches(':').count() > 1 {
        (hostport, None) // a bare IPv6 address
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err("destination port must be 1..65535".into());
        }
    }
    let ip: Option<IpAddr> = host.parse().ok();
    if ip.is_none() && !is_hostname(host) {
        return Err("destination host must be an IP address or a DNS name".into());
    }
    for p in params.into_iter().flat_map(|p| p.split(';')) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.is_empty() {
            return Err("empty URI parameter in destination".into());
        }
        if k.eq_ignore_ascii_case("transport")
            && !["udp", "tcp", "tls"].contains(&v.to_ascii_lowercase().as_str())
        {
            return Err("transport must be udp, tcp or tls".into());
        }
    }
    Ok((format!("{scheme}{rest}"), ip))
}

pub(super) async fn create_destinations(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
        let items = items(&obj, "destinations", "{\"destination\": …}")?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let existing = st
            .store
            .list_destinations(&trunk.sid, room_probe(MAX_DESTINATIONS_PER_TRUNK))
            .await
            .map_err(|e| ApiError::store(e, DestinationRecord::NAME))?
            .len();
        if existing + items.len() > MAX_DESTINATIONS_PER_TRUNK {
            return Err(ApiError::trunk_full(
                "destination URIs",
                MAX_DESTINATIONS_PER_TRUNK,
            ));
        }
        let whitelist: Vec<IpNet> = st
            .store
            .list_ips(&trunk.sid, Page::ALL)
            .await
            .map_err(|e| ApiError::store(e, DestinationRecord::NAME))?
            .iter()
            .filter_map(IpRecord::to_net)
            .collect();
        let (store, sid, whitelist) = (&st.store, trunk.sid.as_str(), &whitelist);
        let added = add_each(&st, sid, items, "destination", |item| async move {
            let dest = req_str(&item, "destination")?;
            let (uri, ip) = parse_destination(&dest).map_err(ApiError::invalid)?;
            if let Some(ip) = ip {
                if !whitelist.iter().any(|net| net.contains(ip)) {
                    return Err(ApiError::invalid("Destination not whitelisted"));
                }
            }
            let priority = opt_int(&item, "priority", 65_535)?;
            let weight = opt_int(&item, "weight", 65_535)?;
            store
                .add_destination(sid, &uri, priority, weight)
                .await
                .map_err(|e| ApiError::store(e, DestinationRecord::NAME))
        })
        .await;
        Ok(added)
    }
    .await;
    ctx.reply(result)
}
