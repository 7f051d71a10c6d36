//! What the resources' handlers share: a record's name and JSON view, the answer to a read or
//! a write of it, and the handlers that are the same for every resource (list, get, delete).

use super::*;

/// A record the API serves.
pub(super) trait Resource: Serialize + Send + Sync + Sized + 'static {
    /// Its name in messages: "Phone number" as in "Phone number not found".
    const NAME: &'static str;
    /// What 1008 calls a duplicate of it.
    const DUPLICATE: &'static str = Self::NAME;

    /// What a write of it changed.
    fn change(&self) -> Change;

    /// Its JSON view: its serde form, unless it adds links.
    fn view(&self) -> Result<Value, ApiError> {
        to_view(self)
    }

    /// The answer when it is not there.
    fn missing() -> ApiError {
        ApiError::not_found(Self::NAME)
    }
}

/// A record an account names by an id of its own, in the path or (for DELETE) the query:
/// `/trunks/{trunk_sid}`, `/credentials/{id}`, `/flows/{flow_id}`.
pub(super) trait OfAccount: Resource {
    /// The id's name in the path and the query.
    const ID: &'static str;

    fn get(store: &Store, account_sid: &str, id: &str) -> impl Future<Output = Found<Self>> + Send;

    fn delete(
        store: &Store,
        account_sid: &str,
        id: &str,
    ) -> impl Future<Output = Found<Self>> + Send;
}

/// What the store answers for one record.
pub(super) type Found<R> = crate::store::StoreResult<Option<R>>;

/// `view` as JSON. Serializing a record does not fail (its keys are strings); if it ever did,
/// the answer would be a 500, not a panic.
pub(super) fn to_view(view: &impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(view).map_err(|e| {
        tracing::error!(error = %e, "API view failed");
        ApiError::internal()
    })
}

/// The record the store found, or why not (its error mapped; nothing: [`Resource::missing`]).
pub(super) fn found<R: Resource>(found: Found<R>) -> Result<R, ApiError> {
    found
        .map_err(|e| ApiError::store(e, R::DUPLICATE))?
        .ok_or_else(R::missing)
}

/// The answer to a read of one record.
pub(super) fn shown<R: Resource>(rec: Found<R>) -> Result<Out, ApiError> {
    Ok(Out::One(found(rec)?.view()?))
}

/// The answer to a write of one record (`None`: nothing to write, see [`found`]). The change
/// is announced before the client hears back.
pub(super) async fn written<R: Resource>(st: &ApiState, rec: Found<R>) -> Result<Out, ApiError> {
    let rec = found(rec)?;
    st.changed(rec.change()).await;
    Ok(Out::One(rec.view()?))
}

/// The list envelope's output from up to `page.limit + 1` rows (the one more tells whether a
/// next page exists).
pub(super) fn list_out<R: Resource>(
    ctx: &Ctx,
    p: Page,
    rows: crate::store::StoreResult<Vec<R>>,
    extra_query: &str,
) -> Result<Out, ApiError> {
    let mut rows = rows.map_err(|e| ApiError::store(e, R::NAME))?;
    let has_more = rows.len() > p.limit as usize;
    rows.truncate(p.limit as usize);
    let uri = |offset: u32| {
        format!(
            "{}?page_size={}&offset={offset}{extra_query}",
            ctx.path, p.limit
        )
    };
    let prev = (p.offset > 0).then(|| uri(p.offset.saturating_sub(p.limit)));
    let next = has_more.then(|| uri(p.offset + p.limit));
    Ok(Out::List {
        items: rows.iter().map(R::view).collect::<Result<_, _>>()?,
        metadata: json!({
            "page_size": p.limit,
            "first_page_uri": uri(0),
            "prev_page_uri": prev,
            "next_page_uri": next,
        }),
    })
}

/// Enough rows to tell whether a per-trunk limit of `max` is reached, and no more.
pub(super) fn room_probe(max: usize) -> Page {
    Page {
        limit: u32::try_from(max).unwrap_or(u32::MAX),
        offset: 0,
    }
}

/// The trunk if it is the account's, else 403 / 1003.
pub(super) async fn own_trunk(
    st: &ApiState,
    ctx: &Ctx,
    sid: &str,
) -> Result<TrunkRecord, ApiError> {
    found(TrunkRecord::get(&st.store, &ctx.account_sid, sid).await)
}

/// GET a page of a trunk's `R`s; the trunk must be the account's.
pub(super) async fn list_in_trunk<R: Resource + Table>(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    Query(q): QueryMap,
) -> Response {
    let result = async {
        let pg = page(&q)?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        list_out(
            &ctx,
            pg,
            st.store.list_of::<R>(&trunk.sid, probe(pg)).await,
            "",
        )
    }
    .await;
    ctx.reply(result)
}

/// GET one of a trunk's `R`s by its id; the trunk must be the account's.
pub(super) async fn get_in_trunk<R: Resource + Keyed>(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
) -> Response {
    let result = one_in_trunk::<R>(&st, &ctx, &p, RowOp::Get).await;
    ctx.reply(result)
}

/// DELETE one of a trunk's `R`s by its id; the trunk must be the account's.
pub(super) async fn delete_in_trunk<R: Resource + Keyed>(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
) -> Response {
    let result = one_in_trunk::<R>(&st, &ctx, &p, RowOp::Delete).await;
    ctx.reply(result)
}

/// What a request does to one row it names by id.
#[derive(Clone, Copy)]
enum RowOp {
    Get,
    Delete,
}

async fn one_in_trunk<R: Resource + Keyed>(
    st: &ApiState,
    ctx: &Ctx,
    path: &HashMap<String, String>,
    op: RowOp,
) -> Result<Out, ApiError> {
    let trunk = own_trunk(st, ctx, param(path, "trunk_sid")).await?;
    let id = param(path, "id");
    match op {
        RowOp::Get => shown(st.store.find::<R>(id, &trunk.sid).await),
        RowOp::Delete => written(st, st.store.delete_of::<R>(id, &trunk.sid).await).await,
    }
}

/// GET one of the account's `R`s by the id in the path.
pub(super) async fn get_of_account<R: OfAccount>(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
) -> Response {
    let result = shown(R::get(&st.store, &ctx.account_sid, param(&p, R::ID)).await);
    ctx.reply(result)
}

/// DELETE one of the account's `R`s by the id in the path.
pub(super) async fn delete_by_path<R: OfAccount>(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
) -> Response {
    let result = delete_of_account::<R>(&st, &ctx, p.get(R::ID)).await;
    ctx.reply(result)
}

/// DELETE one of the account's `R`s by the id in the query.
pub(super) async fn delete_by_query<R: OfAccount>(
    State(st): St,
    ctx: Ctx,
    Query(q): QueryMap,
) -> Response {
    let result = delete_of_account::<R>(&st, &ctx, q.get(R::ID)).await;
    ctx.reply(result)
}

async fn delete_of_account<R: OfAccount>(
    st: &ApiState,
    ctx: &Ctx,
    id: Option<&String>,
) -> Result<Out, ApiError> {
    let id = id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::missing(R::ID))?;
    written(st, R::delete(&st.store, &ctx.account_sid, id).await).await
}

/// The answer to a multi-item POST under a trunk: `add` adds one item (an object; any other
/// item fails alone), in order. The trunk is announced changed if any item was added.
pub(super) async fn add_each<R, F, Fut>(
    st: &ApiState,
    trunk_sid: &str,
    items: Vec<Value>,
    singular: &str,
    mut add: F,
) -> Out
where
    R: Resource,
    F: FnMut(Map<String, Value>) -> Fut,
    Fut: Future<Output = Result<R, ApiError>>,
{
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let result = match item {
            Value::Object(item) => add(item).await.and_then(|rec| rec.view()),
            _ => Err(ApiError::invalid(format!(
                "each {singular} must be an object"
            ))),
        };
        results.push(result);
    }
    if results.iter().any(Result::is_ok) {
        st.trunk_changed(trunk_sid).await;
    }
    Out::Multi(results)
}
