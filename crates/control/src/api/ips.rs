//! A trunk's whitelisted source addresses.

use super::*;

pub(super) fn ip_json(i: &IpRecord) -> Value {
    json!({
        "id": i.id,
        "trunk_sid": i.trunk_sid,
        "ip": i.ip,
        "mask": i.mask,
        "date_created": i.date_created,
    })
}
pub(super) async fn create_ip(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let ip = req_str(&obj, "ip")?;
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| ApiError::invalid("ip must be an IPv4 or IPv6 address"))?;
        let default_mask = if addr.is_ipv4() { 32 } else { 128 };
        let mask = opt_int(&obj, "mask", 128)?.unwrap_or(default_mask);
        let net = IpNet::new(addr, mask as u8).map_err(|_| {
            let (min, max) = if addr.is_ipv4() {
                IpNet::V4_PREFIXES
            } else {
                IpNet::V6_PREFIXES
            };
            ApiError::invalid(format!("mask must be between {min} and {max}"))
        })?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let existing = st
            .store
            .list_ips(&trunk.sid, room_probe(MAX_IPS_PER_TRUNK))
            .await
            .map_err(|e| ApiError::store(e, "Whitelisted IP"))?
            .len();
        if existing >= MAX_IPS_PER_TRUNK {
            return Err(ApiError::trunk_full("whitelisted IPs", MAX_IPS_PER_TRUNK));
        }
        let rec = st
            .store
            .add_ip(&trunk.sid, net)
            .await
            .map_err(|e| ApiError::store(e, "Whitelisted IP"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(ip_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn list_ips(
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
        "Whitelisted IP",
        ip_json,
        |sid, page| async move { store.list_ips(&sid, page).await },
    )
    .await;
    ctx.reply(result)
}

pub(super) async fn delete_ip(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rec = st
            .store
            .delete_ip(&trunk.sid, param(&p, "id"))
            .await
            .map_err(|e| ApiError::store(e, "Whitelisted IP"))?
            .ok_or_else(|| ApiError::not_found("Whitelisted IP"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(ip_json(&rec)))
    }
    .await;
    ctx.reply(result)
}
