//! A trunk's destination URIs, where its inbound calls go.

use super::*;

pub(super) fn destination_json(d: &DestinationRecord) -> Value {
    json!({
        "id": d.id,
        "trunk_sid": d.trunk_sid,
        "destination": d.uri,
        "priority": d.priority,
        "weight": d.weight,
        "date_created": d.date_created,
    })
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
    body: Bytes,
) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let items = match obj.get("destinations") {
            None | Some(Value::Null) => return Err(ApiError::missing("destinations")),
            Some(Value::Array(a)) if !a.is_empty() => a.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "destinations must be a non-empty array of {\"destination\": …}",
                ))
            }
        };
        if items.len() > MAX_ITEMS_PER_REQUEST {
            return Err(ApiError::too_many_items(
                "destinations",
                MAX_ITEMS_PER_REQUEST,
            ));
        }
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let existing = st
            .store
            .list_destinations(&trunk.sid, room_probe(MAX_DESTINATIONS_PER_TRUNK))
            .await
            .map_err(|e| ApiError::store(e, "Destination"))?
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
            .map_err(|e| ApiError::store(e, "Destination"))?
            .iter()
            .filter_map(IpRecord::to_net)
            .collect();
        let mut results = Vec::with_capacity(items.len());
        for item in &items {
            let one = async {
                let Value::Object(item) = item else {
                    return Err(ApiError::invalid("each destination must be an object"));
                };
                let dest = req_str(item, "destination")?;
                let (uri, ip) = parse_destination(&dest).map_err(ApiError::invalid)?;
                if let Some(ip) = ip {
                    if !whitelist.iter().any(|net| net.contains(ip)) {
                        return Err(ApiError::invalid("Destination not whitelisted"));
                    }
                }
                let priority = opt_int(item, "priority", 65_535)?;
                let weight = opt_int(item, "weight", 65_535)?;
                let rec = st
                    .store
                    .add_destination(&trunk.sid, &uri, priority, weight)
                    .await
                    .map_err(|e| ApiError::store(e, "Destination"))?;
                Ok(destination_json(&rec))
            }
            .await;
            results.push(one);
        }
        if results.iter().any(Result::is_ok) {
            st.trunk_changed(&trunk.sid).await;
        }
        Ok(Out::Multi(results))
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn list_destinations(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    Query(q): QueryMap,
) -> Response {
    let store = &st.store;
    let result = trunk_page(
        &st,
        &ctx,
        (&p, &q),
        "Destination",
        destination_json,
        |sid, page| async move { store.list_destinations(&sid, page).await },
    )
    .await;
    ctx.reply(result)
}

pub(super) async fn delete_destination(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rec = st
            .store
            .delete_destination(&trunk.sid, param(&p, "id"))
            .await
            .map_err(|e| ApiError::store(e, "Destination"))?
            .ok_or_else(|| ApiError::not_found("Destination"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(destination_json(&rec)))
    }
    .await;
    ctx.reply(result)
}
