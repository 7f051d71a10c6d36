//! Trunks: create, list, read, update and delete, with their limits.

use super::*;

pub(super) fn trunk_json(t: &TrunkRecord) -> Value {
    let base = format!("/v2/accounts/{}/trunks/{}", t.account_sid, t.sid);
    json!({
        "trunk_sid": t.sid,
        "trunk_name": t.name,
        "status": t.status,
        "domain_name": t.domain_name,
        "nso_code": t.nso_code,
        "auth_type": t.auth_type,
        "registration_enabled": t.registration_enabled,
        "edge_preference": t.edge_preference,
        "secure_trunking": t.secure_trunking,
        "max_concurrent_calls": t.max_concurrent_calls,
        "calls_per_minute": t.calls_per_minute,
        "date_created": t.date_created,
        "date_updated": t.date_updated,
        "destination_uris": format!("{base}/destination-uris"),
        "whitelisted_ips": format!("{base}/whitelisted-ips"),
        "credentials": format!("{base}/credentials"),
        "phone_numbers": format!("{base}/phone-numbers"),
    })
}
pub(super) fn trunk_limits(
    obj: &Map<String, Value>,
) -> Result<(Option<Option<u32>>, Option<u32>), ApiError> {
    let max_concurrent = if obj.contains_key("max_concurrent_calls") {
        Some(opt_int(obj, "max_concurrent_calls", i64::from(u32::MAX))?.map(|n| n as u32))
    } else {
        None
    };
    let cpm = opt_int(obj, "calls_per_minute", i64::from(u32::MAX))?.map(|n| n as u32);
    Ok((max_concurrent, cpm))
}

pub(super) async fn create_trunk(State(st): St, ctx: Ctx, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let name = req_str(&obj, "trunk_name")?;
        let nso_code = req_str(&obj, "nso_code")?;
        let domain_name = req_str(&obj, "domain_name")?;
        check_trunk_name(&name)?;
        check_nso_code(&nso_code)?;
        check_domain(&domain_name)?;
        let mut new = NewTrunk::new(name, nso_code, domain_name);
        if let Some(v) = choice(&obj, "secure_trunking", &["enabled", "disabled"])? {
            new.secure_trunking = v;
        }
        if let Some(v) = opt_bool(&obj, "registration_enabled")? {
            new.registration_enabled = v;
        }
        let (max_concurrent, cpm) = trunk_limits(&obj)?;
        new.max_concurrent_calls = max_concurrent.flatten();
        if let Some(cpm) = cpm {
            new.calls_per_minute = cpm;
        }
        let rec = st
            .store
            .create_trunk(&ctx.account_sid, &new)
            .await
            .map_err(|e| ApiError::store(e, "Trunk with this trunk_name"))?;
        st.trunk_changed(&rec.sid).await;
        Ok(Out::One(trunk_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn list_trunks(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
    let result = async {
        let p = page(&q)?;
        if let Some(sid) = q.get("trunk_sid").filter(|s| !s.is_empty()) {
            let rows: Vec<TrunkRecord> = st
                .store
                .trunk(&ctx.account_sid, sid)
                .await
                .map_err(|e| ApiError::store(e, "Trunk"))?
                .into_iter()
                .filter(|_| p.offset == 0)
                .collect();
            return Ok(list_out(
                &ctx,
                p,
                rows,
                &format!("&trunk_sid={sid}"),
                trunk_json,
            ));
        }
        let rows = st
            .store
            .list_trunks(&ctx.account_sid, probe(p))
            .await
            .map_err(|e| ApiError::store(e, "Trunk"))?;
        Ok(list_out(&ctx, p, rows, "", trunk_json))
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn get_trunk(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = own_trunk(&st, &ctx, param(&p, "trunk_sid"))
        .await
        .map(|t| Out::One(trunk_json(&t)));
    ctx.reply(result)
}

pub(super) async fn update_trunk(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    body: Bytes,
) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let name = opt_str(&obj, "trunk_name")?;
        if let Some(n) = &name {
            check_trunk_name(n)?;
        }
        let nso_code = opt_str(&obj, "nso_code")?;
        if let Some(c) = &nso_code {
            check_nso_code(c)?;
        }
        let domain_name = opt_str(&obj, "domain_name")?;
        if let Some(d) = &domain_name {
            check_domain(d)?;
        }
        let (max_concurrent_calls, calls_per_minute) = trunk_limits(&obj)?;
        let update = TrunkUpdate {
            name,
            nso_code,
            domain_name,
            status: choice(&obj, "status", &["active", "inactive"])?,
            secure_trunking: choice(&obj, "secure_trunking", &["enabled", "disabled"])?,
            registration_enabled: opt_bool(&obj, "registration_enabled")?,
            max_concurrent_calls,
            calls_per_minute,
        };
        let rec = st
            .store
            .update_trunk(&ctx.account_sid, param(&p, "trunk_sid"), &update)
            .await
            .map_err(|e| ApiError::store(e, "Trunk with this trunk_name"))?
            .ok_or_else(ApiError::trunk_forbidden)?;
        st.trunk_changed(&rec.sid).await;
        Ok(Out::One(trunk_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn delete_trunk(
    st: &ApiState,
    ctx: &Ctx,
    sid: Option<&str>,
) -> Result<Out, ApiError> {
    let sid = sid
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::missing("trunk_sid"))?;
    let rec = st
        .store
        .delete_trunk(&ctx.account_sid, sid)
        .await
        .map_err(|e| ApiError::store(e, "Trunk"))?
        .ok_or_else(ApiError::trunk_forbidden)?;
    st.trunk_changed(&rec.sid).await;
    Ok(Out::One(trunk_json(&rec)))
}

pub(super) async fn delete_trunk_query(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
    let result = delete_trunk(&st, &ctx, q.get("trunk_sid").map(String::as_str)).await;
    ctx.reply(result)
}

pub(super) async fn delete_trunk_path(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = delete_trunk(&st, &ctx, p.get("trunk_sid").map(String::as_str)).await;
    ctx.reply(result)
}
