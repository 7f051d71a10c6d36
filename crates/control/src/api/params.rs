//! Request parameters: reading them from the path, the query and the JSON body, and the
//! checks several resources share.

use super::*;

pub(super) fn param<'a>(p: &'a HashMap<String, String>, name: &str) -> &'a str {
    p.get(name).map(String::as_str).unwrap_or_default()
}

/// A mandatory string: missing, null or empty → 1001; not a string → 1002.
pub(super) fn req_str(obj: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(ApiError::missing(key)),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ApiError::missing(key)),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(ApiError::invalid(format!("{key} must be a string"))),
    }
}

/// An optional string: missing or null → None; not a string → 1002.
pub(super) fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(ApiError::invalid(format!("{key} must be a string"))),
    }
}

/// An optional boolean (a JSON boolean, or "true"/"false" as Exotel's strings).
pub(super) fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::invalid(format!("{key} must be true or false"))),
    }
}

/// An optional non-negative integer (a JSON number or a numeric string), at most `max`.
pub(super) fn opt_int(
    obj: &Map<String, Value>,
    key: &str,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    let bad = || ApiError::invalid(format!("{key} must be an integer between 0 and {max}"));
    let n = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(bad)?,
        Some(Value::String(s)) => s.trim().parse::<i64>().map_err(|_| bad())?,
        Some(_) => return Err(bad()),
    };
    if (0..=max).contains(&n) {
        Ok(Some(n))
    } else {
        Err(bad())
    }
}

pub(super) fn page(q: &HashMap<String, String>) -> Result<Page, ApiError> {
    let limit = match q.get("page_size") {
        None => DEFAULT_PAGE_SIZE,
        Some(s) => s
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!("page_size must be between 1 and {MAX_PAGE_SIZE}"))
            })?,
    };
    let offset = match q.get("offset") {
        None => 0,
        Some(s) => s
            .trim()
            .parse::<u32>()
            .map_err(|_| ApiError::invalid("offset must be a non-negative integer"))?,
    };
    Ok(Page { limit, offset })
}

/// One more than the page, to learn whether a next page exists.
pub(super) fn probe(p: Page) -> Page {
    Page {
        limit: p.limit + 1,
        offset: p.offset,
    }
}

pub(super) fn check_trunk_name(name: &str) -> Result<(), ApiError> {
    if name.len() <= 16
        && !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "trunk_name must be 1 to 16 letters, digits or underscores",
        ))
    }
}

pub(super) fn check_nso_code(code: &str) -> Result<(), ApiError> {
    if code.len() <= 32
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "nso_code must be letters, digits, '-' or '_' (e.g. ANY-ANY)",
        ))
    }
}

pub(super) fn is_hostname(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub(super) fn check_domain(domain: &str) -> Result<(), ApiError> {
    if is_hostname(domain) {
        Ok(())
    } else {
        Err(ApiError::invalid("domain_name must be a DNS name"))
    }
}

pub(super) fn check_number(number: &str) -> Result<(), ApiError> {
    check_e164(number).map_err(|_| {
        ApiError::invalid("phone_number must be E.164 with a leading + (e.g. +919876543210)")
    })
}

pub(super) fn choice(
    obj: &Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match opt_str(obj, key)? {
        None => Ok(None),
        Some(v) if allowed.contains(&v.as_str()) => Ok(Some(v)),
        Some(_) => Err(ApiError::invalid(format!(
            "{key} must be one of {}",
            allowed.join(", ")
        ))),
    }
}

/// The items of a multi-item POST: `obj[key]` must be a non-empty array (`shape` says of
/// what) of at most [`MAX_ITEMS_PER_REQUEST`].
pub(super) fn items(
    obj: &Map<String, Value>,
    key: &str,
    shape: &str,
) -> Result<Vec<Value>, ApiError> {
    let items = match obj.get(key) {
        None | Some(Value::Null) => return Err(ApiError::missing(key)),
        Some(Value::Array(a)) if !a.is_empty() => a.clone(),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "{key} must be a non-empty array of {shape}"
            )))
        }
    };
    if items.len() > MAX_ITEMS_PER_REQUEST {
        return Err(ApiError::too_many_items(key, MAX_ITEMS_PER_REQUEST));
    }
    Ok(items)
}
