//! A trunk's whitelisted source addresses.

use super::*;

impl Resource for IpRecord {
    const NAME: &'static str = "Whitelisted IP";

    fn change(&self) -> Change {
        Change::Trunk(self.trunk_sid.clone())
    }
}

pub(super) async fn create_ip(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
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
            .map_err(|e| ApiError::store(e, IpRecord::NAME))?
            .len();
        if existing >= MAX_IPS_PER_TRUNK {
            return Err(ApiError::trunk_full("whitelisted IPs", MAX_IPS_PER_TRUNK));
        }
        written(&st, st.store.add_ip(&trunk.sid, net).await.map(Some)).await
    }
    .await;
    ctx.reply(result)
}
