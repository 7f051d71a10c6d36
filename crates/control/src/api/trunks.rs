//! Trunks: create, list, read, update and delete, with their limits.

use super::*;

/// A trunk as the API shows it: its record and links to what is under it.
#[derive(Serialize)]
struct TrunkView<'a> {
    #[serde(flatten)]
    trunk: &'a TrunkRecord,
    destination_uris: String,
    whitelisted_ips: String,
    credentials: String,
    phone_numbers: String,
}

impl Resource for TrunkRecord {
    const NAME: &'static str = "Trunk";
    const DUPLICATE: &'static str = "Trunk with this trunk_name";

    fn change(&self) -> Change {
        Change::Trunk(self.sid.clone())
    }

    fn view(&self) -> Result<Value, ApiError> {
        let base = format!("/v2/accounts/{}/trunks/{}", self.account_sid, self.sid);
        to_view(&TrunkView {
            trunk: self,
            destination_uris: format!("{base}/destination-uris"),
            whitelisted_ips: format!("{base}/whitelisted-ips"),
            credentials: format!("{base}/credentials"),
            phone_numbers: format!("{base}/phone-numbers"),
        })
    }

    /// Another account's trunk is not told apart from none.
    fn missing() -> ApiError {
        ApiError::trunk_forbidden()
    }
}

impl OfAccount for TrunkRecord {
    const ID: &'static str = "trunk_sid";

    async fn get(store: &Store, account_sid: &str, sid: &str) -> Found<Self> {
        store.trunk(account_sid, sid).await
    }

    async fn delete(store: &Store, account_sid: &str, sid: &str) -> Found<Self> {
        store.delete_trunk(account_sid, sid).await
    }
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

pub(super) async fn create_trunk(State(st): St, ctx: Ctx, JsonObject(obj): JsonObject) -> Response {
    let result = async {
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
        let created = st.store.create_trunk(&ctx.account_sid, &new).await;
        written(&st, created.map(Some)).await
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn list_trunks(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
    let result = async {
        let p = page(&q)?;
        if let Some(sid) = q.get("trunk_sid").filter(|s| !s.is_empty()) {
            let one = st.store.trunk(&ctx.account_sid, sid).await;
            let rows = one.map(|t| t.into_iter().filter(|_| p.offset == 0).collect());
            return list_out(&ctx, p, rows, &format!("&trunk_sid={sid}"));
        }
        let rows = st.store.list_trunks(&ctx.account_sid, probe(p)).await;
        list_out(&ctx, p, rows, "")
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn update_trunk(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
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
        let sid = param(&p, "trunk_sid");
        written(
            &st,
            st.store.update_trunk(&ctx.account_sid, sid, &update).await,
        )
        .await
    }
    .await;
    ctx.reply(result)
}
