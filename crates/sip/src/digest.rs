//! Server-side HTTP Digest authentication for SIP, free of I/O and of the clock.
//!
//! Implements the server half of RFC 3261 §22 with the algorithms of RFC 7616
//! (`MD5`, `SHA-256`) as RFC 8760 allows them for SIP. The admission step asks
//! [`DigestServer::challenge`] for the `WWW-Authenticate` values of a 401 and
//! hands the `Authorization` value of the retried request to
//! [`DigestServer::verify`], which answers with a [`Verdict`].
//!
//! * **Nonces are self-validating**: `hex(timestamp ‖ salt ‖ mac)` where
//!   `timestamp` is the issue time in seconds (8 bytes, big endian), `salt` 8
//!   random bytes (so two challenges in the same second differ and two callers
//!   never share a nonce-count sequence) and `mac` the first 16 bytes of
//!   HMAC-SHA256(secret, timestamp ‖ salt ‖ realm). No table is needed to know
//!   that a nonce is ours and how old it is; a nonce that is not ours (forged,
//!   mangled, or from before a restart, since the secret is random per
//!   instance) yields [`Verdict::Replay`] so that the caller re-challenges.
//! * **Replay protection**: per nonce the highest nonce-count (`nc`) accepted so
//!   far is remembered; a request whose `nc` is not greater is
//!   [`Verdict::Replay`]. Entries are only created or advanced by a request
//!   whose response is right, so bogus requests cannot burn counts. The table
//!   is bounded: expired nonces are swept (at most once per second of `now`),
//!   and when it is still full the oldest entry is evicted and every nonce
//!   issued no later than it is from then on refused as a replay (the client
//!   simply gets a fresh nonce), so eviction never reopens a replay window.
//! * **`qop=auth` is required.** The RFC 2069 form (no `qop`, hence no `nc`
//!   and `cnonce`) is rejected as [`Verdict::Malformed`]: it has no
//!   nonce-count, so a captured header could be replayed for the whole nonce
//!   lifetime. Our challenges always offer `qop="auth"`, and RFC 7616 requires
//!   the client to use it then. `auth-int`, the `-sess` algorithms and
//!   `userhash=true` are not offered and are rejected as malformed too.
//! * Responses are compared in constant time.
//!
//! The `uri` parameter is used in the hash but not compared with the
//! Request-URI, which this module does not see; the caller may do that with
//! [`parse_params`] if it wants the RFC 3261 §22.4 check.
//!
//! The client half, [`client_authorization`] with [`pick_challenge`], answers
//! a carrier's 401/407 when we are the one calling.

use std::collections::HashMap;
use std::time::Duration;

use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Longest `Authorization` value [`parse_params`] accepts, in bytes.
pub const MAX_HEADER_LEN: usize = 8 * 1024;

/// Default bound on the number of nonces tracked for replay protection.
pub const DEFAULT_MAX_TRACKED_NONCES: usize = 65_536;

/// Bytes of HMAC-SHA256 kept in a nonce (128 bits).
const MAC_LEN: usize = 16;
/// Bytes of random salt in a nonce.
const SALT_LEN: usize = 8;
/// Raw length of a nonce before hex encoding: timestamp, salt, mac.
const NONCE_RAW_LEN: usize = 8 + SALT_LEN + MAC_LEN;

/// A digest algorithm offered and accepted by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5` (RFC 2617/7616; the default when `algorithm` is absent).
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token used in the `algorithm` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm` token (case-insensitive); `-sess` variants and
    /// other algorithms are `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of the hash of `data`.
    pub fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => to_hex(Md5::digest(data).as_slice()),
            Algorithm::Sha256 => to_hex(Sha256::digest(data).as_slice()),
        }
    }

    /// Length of a response in hex digits.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }
}

/// The inputs of a `qop=auth` digest response (RFC 7616 §3.4.1).
///
/// Usable by either side: the server computes the expected response with it,
/// tests and a client compute the one to send.
#[derive(Clone, Copy, Debug)]
pub struct ResponseInput<'a> {
    pub algorithm: Algorithm,
    pub username: &'a str,
    pub realm: &'a str,
    pub password: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub nonce: &'a str,
    /// The nonce-count exactly as sent (normally 8 hex digits).
    pub nc: &'a str,
    pub cnonce: &'a str,
}

impl ResponseInput<'_> {
    /// `H(H(username:realm:password):nonce:nc:cnonce:auth:H(method:uri))`,
    /// lower-case hex.
    pub fn response(&self) -> String {
        let h = |s: String| self.algorithm.hash_hex(s.as_bytes());
        let ha1 = h(format!(
            "{}:{}:{}",
            self.username, self.realm, self.password
        ));
        let ha2 = h(format!("{}:{}", self.method, self.uri));
        h(format!(
            "{ha1}:{}:{}:{}:auth:{ha2}",
            self.nonce, self.nc, self.cnonce
        ))
    }
}

/// The outcome of [`DigestServer::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are right: admit the request as `username`.
    Ok { username: String },
    /// The nonce has expired but the header is well formed and the response
    /// right: re-challenge with `stale=true`.
    Stale,
    /// Unknown user or wrong response: 403.
    BadCredentials,
    /// Unparseable header, wrong realm or opaque, missing or invalid fields,
    /// `qop` other than `auth`, no `qop`, unknown algorithm: 400 or 403.
    Malformed(String),
    /// The nonce is not ours, or its nonce-count is not greater than one
    /// already accepted: re-challenge.
    Replay,
}

/// Per-nonce replay state.
#[derive(Clone, Copy, Debug)]
struct Seen {
    issued: u64,
    highest_nc: u32,
}

/// Issues Digest challenges for one realm and verifies the answers.
pub struct DigestServer {
    realm: String,
    nonce_lifetime: u64,
    secret: [u8; 32],
    opaque: String,
    seen: HashMap<String, Seen>,
    max_tracked: usize,
    /// Nonces issued at or before this time that are not in `seen` were
    /// evicted (or might have been): they are refused as replays.
    evicted_floor: Option<u64>,
    last_sweep: Option<u64>,
}

impl std::fmt::Debug for DigestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestServer")
            .field("realm", &self.realm)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("tracked_nonces", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl DigestServer {
    /// A server for `realm` whose nonces are valid for `nonce_lifetime`
    /// (counted in whole seconds), with a fresh random secret.
    pub fn new(realm: impl Into<String>, nonce_lifetime: Duration) -> Self {
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        Self::with_secret(realm, nonce_lifetime, secret)
    }

    /// Like [`new`](Self::new) with a given secret, e.g. shared by several
    /// instances so that each accepts the others' nonces (each still keeps
    /// its own replay table).
    pub fn with_secret(
        realm: impl Into<String>,
        nonce_lifetime: Duration,
        secret: [u8; 32],
    ) -> Self {
        let realm = realm.into();
        let mut opaque_input = b"opaque:".to_vec();
        opaque_input.extend_from_slice(realm.as_bytes());
        let opaque = to_hex(&hmac_sha256(&secret, &opaque_input)[..MAC_LEN]);
        Self {
            realm,
            nonce_lifetime: nonce_lifetime.as_secs(),
            secret,
            opaque,
            seen: HashMap::new(),
            max_tracked: DEFAULT_MAX_TRACKED_NONCES,
            evicted_floor: None,
            last_sweep: None,
        }
    }

    /// Sets the bound on tracked nonces (at least 1).
    pub fn with_max_tracked_nonces(mut self, max: usize) -> Self {
        self.max_tracked = max.max(1);
        self
    }

    /// The realm challenged for.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// How many nonces the replay table currently holds.
    pub fn tracked_nonces(&self) -> usize {
        self.seen.len()
    }

    /// The `WWW-Authenticate` (or `Proxy-Authenticate`) values for a 401/407:
    /// one per algorithm, SHA-256 first then MD5 (RFC 8760 §2.4), sharing one
    /// fresh nonce, with `qop="auth"`, `opaque`, and `stale=true` when
    /// `stale`.
    pub fn challenge(&mut self, now_secs: u64, stale: bool) -> Vec<String> {
        let nonce = self.make_nonce(now_secs);
        [Algorithm::Sha256, Algorithm::Md5]
            .iter()
            .map(|alg| {
                let mut v = format!(
                    "Digest realm={}, nonce=\"{nonce}\", opaque=\"{}\", algorithm={}, qop=\"auth\"",
                    quote(&self.realm),
                    self.opaque,
                    alg.name()
                );
                if stale {
                    v.push_str(", stale=true");
                }
                v
            })
            .collect()
    }

    /// Checks an `Authorization` (or `Proxy-Authorization`) value sent with
    /// a request of `method`, looking passwords up with `password_for`.
    pub fn verify(
        &mut self,
        authorization: &str,
        method: &str,
        now_secs: u64,
        password_for: impl Fn(&str) -> Option<String>,
    ) -> Verdict {
        self.sweep(now_secs);
        let creds = match Credentials::parse(authorization) {
            Ok(c) => c,
            Err(e) => return Verdict::Malformed(e),
        };
        if creds.realm != self.realm {
            return Verdict::Malformed(format!("wrong realm {:?}", creds.realm));
        }
        let Some(issued) = self.check_nonce(&creds.nonce, now_secs) else {
            return Verdict::Replay;
        };
        if let Some(opaque) = &creds.opaque {
            if *opaque != self.opaque {
                return Verdict::Malformed("opaque does not match".into());
            }
        }
        let Some(password) = password_for(&creds.username) else {
            return Verdict::BadCredentials;
        };
        let expected = ResponseInput {
            algorithm: creds.algorithm,
            username: &creds.username,
            realm: &self.realm,
            password: &password,
            method,
            uri: &creds.uri,
            nonce: &creds.nonce,
            nc: &creds.nc_text,
            cnonce: &creds.cnonce,
        }
        .response();
        if !constant_time_eq(expected.as_bytes(), creds.response.as_bytes()) {
            return Verdict::BadCredentials;
        }
        if now_secs.saturating_sub(issued) > self.nonce_lifetime {
            return Verdict::Stale;
        }
        match self.seen.get_mut(&creds.nonce) {
            Some(seen) => {
                if creds.nc <= seen.highest_nc {
                    return Verdict::Replay;
                }
                seen.highest_nc = creds.nc;
            }
            None => {
                if self.evicted_floor.is_some_and(|floor| issued <= floor) {
                    return Verdict::Replay;
                }
                if creds.nc == 0 {
                    return Verdict::Replay;
                }
                self.make_room(now_secs);
                if self.evicted_floor.is_some_and(|floor| issued <= floor) {
                    // Making room evicted a nonce issued no earlier than this one.
                    return Verdict::Replay;
                }
                self.seen.insert(
                    creds.nonce.clone(),
                    Seen {
                        issued,
                        highest_nc: creds.nc,
                    },
                );
            }
        }
        Verdict::Ok {
            username: creds.username,
        }
    }

    fn nonce_mac(&self, prefix: &[u8]) -> [u8; 32] {
        let mut input = prefix.to_vec();
        input.extend_from_slice(self.realm.as_bytes());
        hmac_sha256(&self.secret, &input)
    }

    fn make_nonce(&self, now_secs: u64) -> String {
        let mut raw = Vec::with_capacity(NONCE_RAW_LEN);
        raw.extend_from_slice(&now_secs.to_be_bytes());
        let mut salt = [0u8; SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        raw.extend_from_slice(&salt);
        let mac = self.nonce_mac(&raw);
        raw.extend_from_slice(&mac[..MAC_LEN]);
        to_hex(&raw)
    }

    /// The issue time of `nonce` if it is ours and not from the future.
    fn check_nonce(&self, nonce: &str, now_secs: u64) -> Option<u64> {
        let raw = from_hex(nonce)?;
        if raw.len() != NONCE_RAW_LEN {
            return None;
        }
        let (prefix, mac) = raw.split_at(8 + SALT_LEN);
        let expected = self.nonce_mac(prefix);
        if !constant_time_eq(&expected[..MAC_LEN], mac) {
            return None;
        }
        let issued = u64::from_be_bytes(prefix[..8].try_into().ok()?);
        // Our clock stepped back a lot, or the secret is shared with a host
        // whose clock is far ahead: do not trust the nonce.
        if issued > now_secs.saturating_add(self.nonce_lifetime) {
            return None;
        }
        Some(issued)
    }

    fn is_expired(&self, issued: u64, now_secs: u64) -> bool {
        now_secs.saturating_sub(issued) > self.nonce_lifetime
    }

    /// Drops expired nonces, at most once per distinct `now_secs`.
    fn sweep(&mut self, now_secs: u64) {
        if self.last_sweep == Some(now_secs) {
            return;
        }
        self.last_sweep = Some(now_secs);
        let lifetime = self.nonce_lifetime;
        self.seen
            .retain(|_, s| now_secs.saturating_sub(s.issued) <= lifetime);
    }

    /// Ensures there is room for one more entry.
    fn make_room(&mut self, now_secs: u64) {
        if self.seen.len() < self.max_tracked {
            return;
        }
        let lifetime = self.nonce_lifetime;
        self.seen
            .retain(|_, s| now_secs.saturating_sub(s.issued) <= lifetime);
        while self.seen.len() >= self.max_tracked {
            let Some((key, issued)) = self
                .seen
                .iter()
                .min_by_key(|(_, s)| s.issued)
                .map(|(k, s)| (k.clone(), s.issued))
            else {
                break;
            };
            self.seen.remove(&key);
            if !self.is_expired(issued, now_secs) {
                self.evicted_floor = Some(self.evicted_floor.map_or(issued, |f| f.max(issued)));
            }
        }
    }
}

/// The fields of an `Authorization` value that verification needs.
#[derive(Debug)]
struct Credentials {
    username: String,
    realm: String,
    nonce: String,
    uri: String,
    response: String,
    algorithm: Algorithm,
    cnonce: String,
    nc_text: String,
    nc: u32,
    opaque: Option<String>,
}

impl Credentials {
    fn parse(header: &str) -> Result<Self, String> {
        let params = parse_params(header)?;
        let mut map: HashMap<&str, &str> = HashMap::new();
        for (k, v) in &params {
            if map.insert(k.as_str(), v.as_str()).is_some() {
                return Err(format!("duplicate parameter {k}"));
            }
        }
        let required = |name: &str| -> Result<String, String> {
            match map.get(name) {
                Some(v) if !v.is_empty() => Ok((*v).to_string()),
                Some(_) => Err(format!("empty {name}")),
                None => Err(format!("missing {name}")),
            }
        };
        let algorithm = match map.get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => {
                Algorithm::from_name(a).ok_or_else(|| format!("unsupported algorithm {a:?}"))?
            }
        };
        match map.get("qop") {
            None => return Err("missing qop (RFC 2069 digest is not accepted)".into()),
            Some(q) if q.eq_ignore_ascii_case("auth") => {}
            Some(q) => return Err(format!("unsupported qop {q:?}")),
        }
        if map
            .get("userhash")
            .is_some_and(|u| u.eq_ignore_ascii_case("true"))
        {
            return Err("userhash is not supported".into());
        }
        let username = required("username")?;
        let realm = map
            .get("realm")
            .map(|r| (*r).to_string())
            .ok_or("missing realm")?;
        let nonce = required("nonce")?;
        let uri = required("uri")?;
        let response = required("response")?.to_ascii_lowercase();
        if response.len() != algorithm.hex_len() || !response.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "response is not {} hex digits",
                algorithm.hex_len()
            ));
        }
        let cnonce = required("cnonce")?;
        let nc_text = required("nc")?;
        if nc_text.len() > 8 || !nc_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("bad nc {nc_text:?}"));
        }
        let nc = u32::from_str_radix(&nc_text, 16).map_err(|_| format!("bad nc {nc_text:?}"))?;
        Ok(Self {
            username,
            realm,
            nonce,
            uri,
            response,
            algorithm,
            cnonce,
            nc_text,
            nc,
            opaque: map.get("opaque").map(|o| (*o).to_string()),
        })
    }
}

/// Parses a `Digest k=v, k="quoted, \"escaped\"", ...` header value into
/// `(lower-cased name, unquoted value)` pairs in order. The scheme must be
/// `Digest` (case-insensitive). Empty list elements are skipped. Never
/// panics; values longer than [`MAX_HEADER_LEN`] are refused.
pub fn parse_params(header_value: &str) -> Result<Vec<(String, String)>, String> {
    if header_value.len() > MAX_HEADER_LEN {
        return Err(format!("header longer than {MAX_HEADER_LEN} bytes"));
    }
    let s = header_value.trim_matches(is_lws);
    let b = s.as_bytes();
    let scheme_end = b.iter().position(|&c| is_lws(c as char)).unwrap_or(b.len());
    if !s[..scheme_end].eq_ignore_ascii_case("Digest") {
        return Err("scheme is not Digest".into());
    }
    let mut i = scheme_end;
    let mut out = Vec::new();
    let skip_lws = |i: &mut usize| {
        while *i < b.len() && is_lws(b[*i] as char) {
            *i += 1;
        }
    };
    loop {
        skip_lws(&mut i);
        if i >= b.len() {
            break;
        }
        if b[i] == b',' {
            i += 1;
            continue;
        }
        let key_start = i;
        while i < b.len() && is_token_char(b[i]) {
            i += 1;
        }
        if i == key_start {
            return Err(format!("expected a parameter name at byte {i}"));
        }
        let key = s[key_start..i].to_ascii_lowercase();
        skip_lws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(format!("expected '=' after {key}"));
        }
        i += 1;
        skip_lws(&mut i);
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err(format!("unterminated quoted value for {key}")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let Some(&c) = b.get(i + 1) else {
                            return Err(format!("unterminated quoted value for {key}"));
                        };
                        v.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(v).map_err(|_| format!("invalid UTF-8 in {key}"))?
        } else {
            let start = i;
            while i < b.len() && b[i] != b',' && !is_lws(b[i] as char) {
                if b[i] == b'"' || b[i] == b'=' {
                    return Err(format!("unexpected {:?} in value of {key}", b[i] as char));
                }
                i += 1;
            }
            if i == start {
                return Err(format!("empty value for {key}"));
            }
            s[start..i].to_string()
        };
        out.push((key, value));
        skip_lws(&mut i);
        match b.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(_) => return Err(format!("expected ',' at byte {i}")),
        }
    }
    Ok(out)
}

fn is_lws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// RFC 3261 `token` characters.
fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// A quoted-string with `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(Sha256::digest(key).as_slice());
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.as_slice());
    let mut out = [0u8; 32];
    out.copy_from_slice(outer.finalize().as_slice());
    out
}

/// Equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "sip.example.net";
    const LIFETIME: u64 = 300;
    const T0: u64 = 1_700_000_000;
    const URI: &str = "sip:+15551234567@sip.example.net";

    fn server() -> DigestServer {
        DigestServer::with_secret(REALM, Duration::from_secs(LIFETIME), [7u8; 32])
    }

    fn passwords(user: &str) -> Option<String> {
        match user {
            "alice" => Some("wonderland".into()),
            "bob" => Some("builder".into()),
            _ => None,
        }
    }

    fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A client's answer, with every parameter overridable.
    struct Answer<'a> {
        challenge: &'a str,
        user: &'a str,
        password: &'a str,
        method: &'a str,
        nc: u32,
        with_algorithm: bool,
    }

    impl<'a> Answer<'a> {
        fn new(challenge: &'a str) -> Self {
            Self {
                challenge,
                user: "alice",
                password: "wonderland",
                method: "INVITE",
                nc: 1,
                with_algorithm: true,
            }
        }

        fn header(&self) -> String {
            let params = parse_params(self.challenge).expect("challenge parses");
            let realm = param(&params, "realm").unwrap();
            let nonce = param(&params, "nonce").unwrap();
            let opaque = param(&params, "opaque").unwrap();
            let alg = Algorithm::from_name(param(&params, "algorithm").unwrap()).unwrap();
            let nc = format!("{:08x}", self.nc);
            let response = ResponseInput {
                algorithm: alg,
                username: self.user,
                realm,
                password: self.password,
                method: self.method,
                uri: URI,
                nonce,
                nc: &nc,
                cnonce: "0a4f113b",
            }
            .response();
            let alg_param = if self.with_algorithm {
                format!(", algorithm={}", alg.name())
            } else {
                String::new()
            };
            format!(
                "Digest username=\"{}\", realm={}, nonce=\"{nonce}\", uri=\"{URI}\", \
                 response=\"{response}\", qop=auth, nc={nc}, cnonce=\"0a4f113b\", \
                 opaque=\"{opaque}\"{alg_param}",
                self.user,
                quote(realm)
            )
        }
    }

    fn ok(user: &str) -> Verdict {
        Verdict::Ok {
            username: user.into(),
        }
    }

    fn is_malformed(v: &Verdict) -> bool {
        matches!(v, Verdict::Malformed(_))
    }

    /// Replaces the value of `name` (quoted) in a header built by `Answer`.
    fn with_param(header: &str, name: &str, value: &str) -> String {
        let params = parse_params(header).unwrap();
        let mut out = String::from("Digest ");
        let parts: Vec<String> = params
            .iter()
            .map(|(k, v)| {
                let v = if k == name { value } else { v.as_str() };
                format!("{k}={}", quote(v))
            })
            .collect();
        out.push_str(&parts.join(", "));
        out
    }

    fn without_param(header: &str, name: &str) -> String {
        let params = parse_params(header).unwrap();
        let parts: Vec<String> = params
            .iter()
            .filter(|(k, _)| k != name)
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        format!("Digest {}", parts.join(", "))
    }

    // RFC 7616 §3.9.1.
    fn rfc7616(algorithm: Algorithm) -> String {
        ResponseInput {
            algorithm,
            username: "Mufasa",
            realm: "http-auth@example.org",
            password: "Circle of Life",
            method: "GET",
            uri: "/dir/index.html",
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            nc: "00000001",
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        }
        .response()
    }

    #[test]
    fn digest_rfc7616_md5_vector() {
        assert_eq!(rfc7616(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn digest_rfc7616_sha256_vector() {
        assert_eq!(
            rfc7616(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn digest_hmac_sha256_rfc4231_vectors() {
        // Test case 2 (short key) and test case 6 (key longer than a block).
        assert_eq!(
            to_hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            to_hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn digest_algorithm_names() {
        assert_eq!(Algorithm::from_name("md5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::from_name("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_name("MD5-sess"), None);
        assert_eq!(Algorithm::from_name("SHA-512-256"), None);
        assert_eq!(Algorithm::Sha256.name(), "SHA-256");
    }

    #[test]
    fn digest_challenge_format() {
        let mut s = server();
        let c = s.challenge(T0, false);
        assert_eq!(c.len(), 2);
        let p0 = parse_params(&c[0]).unwrap();
        let p1 = parse_params(&c[1]).unwrap();
        assert!(c[0].starts_with("Digest "));
        assert_eq!(param(&p0, "algorithm"), Some("SHA-256"));
        assert_eq!(param(&p1, "algorithm"), Some("MD5"));
        for p in [&p0, &p1] {
            assert_eq!(param(p, "realm"), Some(REALM));
            assert_eq!(param(p, "qop"), Some("auth"));
            assert!(param(p, "opaque").is_some_and(|o| !o.is_empty()));
            assert_eq!(param(p, "stale"), None);
        }
        assert_eq!(param(&p0, "nonce"), param(&p1, "nonce"));
        assert!(c[0].contains("qop=\"auth\""));

        let stale = s.challenge(T0, true);
        for v in &stale {
            assert_eq!(param(&parse_params(v).unwrap(), "stale"), Some("true"));
        }
    }

    #[test]
    fn digest_nonces_are_fresh_even_within_one_second() {
        let mut s = server();
        let n = |c: Vec<String>| {
            param(&parse_params(&c[0]).unwrap(), "nonce")
                .unwrap()
                .to_string()
        };
        let a = n(s.challenge(T0, false));
        let b = n(s.challenge(T0, false));
        assert_ne!(a, b);
        assert!(s.check_nonce(&a, T0).is_some_and(|t| t == T0));
    }

    #[test]
    fn digest_realm_is_quoted_in_challenge() {
        let mut s = DigestServer::with_secret("a \"b\\c\"", Duration::from_secs(60), [1; 32]);
        let c = s.challenge(T0, false);
        assert_eq!(
            param(&parse_params(&c[0]).unwrap(), "realm"),
            Some("a \"b\\c\"")
        );
        let h = Answer::new(&c[1]).header();
        assert_eq!(s.verify(&h, "INVITE", T0, passwords), ok("alice"));
    }

    #[test]
    fn digest_round_trip_sha256_and_md5() {
        let mut s = server();
        for i in 0..2 {
            let c = s.challenge(T0, false);
            let h = Answer::new(&c[i]).header();
            assert_eq!(s.verify(&h, "INVITE", T0 + 5, passwords), ok("alice"));
        }
        assert_eq!(s.tracked_nonces(), 2);
    }

    #[test]
    fn digest_missing_algorithm_means_md5() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[1]);
        a.with_algorithm = false;
        a.method = "REGISTER";
        assert_eq!(
            s.verify(&a.header(), "REGISTER", T0, passwords),
            ok("alice")
        );
        // A SHA-256 response without algorithm= is checked as MD5 and fails.
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[0]);
        a.with_algorithm = false;
        a.method = "REGISTER";
        assert!(is_malformed(&s.verify(
            &a.header(),
            "REGISTER",
            T0,
            passwords
        )));
    }

    #[test]
    fn digest_increasing_nc_is_accepted() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[0]);
        for nc in [1, 2, 5, 0xffff_ffff] {
            a.nc = nc;
            assert_eq!(
                s.verify(&a.header(), "INVITE", T0 + 1, passwords),
                ok("alice")
            );
        }
    }

    #[test]
    fn digest_wrong_password_is_bad_credentials() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[0]);
        a.password = "looking-glass";
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0, passwords),
            Verdict::BadCredentials
        );
        // Another user's password does not work either.
        a.password = "builder";
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0, passwords),
            Verdict::BadCredentials
        );
    }

    #[test]
    fn digest_unknown_user_is_bad_credentials() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[0]);
        a.user = "mallory";
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0, passwords),
            Verdict::BadCredentials
        );
    }

    #[test]
    fn digest_wrong_method_is_bad_credentials() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[0]);
        a.method = "REGISTER";
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0, passwords),
            Verdict::BadCredentials
        );
    }

    #[test]
    fn digest_tampered_response_is_bad_credentials() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let h = Answer::new(&c[0]).header();
        let params = parse_params(&h).unwrap();
        let resp = param(&params, "response").unwrap();
        let flipped: String = resp
            .chars()
            .enumerate()
            .map(|(i, ch)| {
                if i == 0 {
                    if ch == '0' {
                        '1'
                    } else {
                        '0'
                    }
                } else {
                    ch
                }
            })
            .collect();
        let bad = with_param(&h, "response", &flipped);
        assert_eq!(
            s.verify(&bad, "INVITE", T0, passwords),
            Verdict::BadCredentials
        );
        // Upper-case hex of the right response is fine.
        let upper = with_param(&h, "response", &resp.to_ascii_uppercase());
        assert_eq!(s.verify(&upper, "INVITE", T0, passwords), ok("alice"));
    }

    #[test]
    fn digest_replayed_nc_is_replay() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[0]);
        a.nc = 3;
        let h = a.header();
        assert_eq!(s.verify(&h, "INVITE", T0, passwords), ok("alice"));
        assert_eq!(s.verify(&h, "INVITE", T0 + 1, passwords), Verdict::Replay);
        a.nc = 2;
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0 + 1, passwords),
            Verdict::Replay
        );
        a.nc = 4;
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0 + 1, passwords),
            ok("alice")
        );
    }

    #[test]
    fn digest_nc_zero_is_replay() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[0]);
        a.nc = 0;
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0, passwords),
            Verdict::Replay
        );
    }

    #[test]
    fn digest_failed_attempt_does_not_advance_nc() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut bad = Answer::new(&c[0]);
        bad.password = "guess";
        bad.nc = 0xffff_ffff;
        assert_eq!(
            s.verify(&bad.header(), "INVITE", T0, passwords),
            Verdict::BadCredentials
        );
        assert_eq!(s.tracked_nonces(), 0);
        let good = Answer::new(&c[0]);
        assert_eq!(
            s.verify(&good.header(), "INVITE", T0, passwords),
            ok("alice")
        );
    }

    #[test]
    fn digest_old_nonce_is_stale() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let h = Answer::new(&c[0]).header();
        assert_eq!(
            s.verify(&h, "INVITE", T0 + LIFETIME + 1, passwords),
            Verdict::Stale
        );
        // The last second of the lifetime still counts.
        let c = s.challenge(T0, false);
        let h = Answer::new(&c[0]).header();
        assert_eq!(
            s.verify(&h, "INVITE", T0 + LIFETIME, passwords),
            ok("alice")
        );
    }

    #[test]
    fn digest_old_nonce_with_wrong_password_is_bad_credentials() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let mut a = Answer::new(&c[0]);
        a.password = "nope";
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0 + 10 * LIFETIME, passwords),
            Verdict::BadCredentials
        );
    }

    #[test]
    fn digest_forged_nonce_is_replay() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let nonce = param(&parse_params(&c[0]).unwrap(), "nonce")
            .unwrap()
            .to_string();
        // Change the timestamp to look younger, keep the mac.
        let mut forged = nonce.clone().into_bytes();
        forged[15] = if forged[15] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        for n in [
            forged.as_str(),
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "00",
            "zz",
            "abc",
            &nonce[..nonce.len() - 2],
        ] {
            let ch = c[0].replace(&nonce, n);
            let h = Answer::new(&ch).header();
            assert_eq!(
                s.verify(&h, "INVITE", T0, passwords),
                Verdict::Replay,
                "nonce {n}"
            );
        }
        // A nonce from another instance (another secret) is not ours either.
        let mut other = DigestServer::new(REALM, Duration::from_secs(LIFETIME));
        let c = other.challenge(T0, false);
        let h = Answer::new(&c[0]).header();
        assert_eq!(s.verify(&h, "INVITE", T0, passwords), Verdict::Replay);
        assert_eq!(other.verify(&h, "INVITE", T0, passwords), ok("alice"));
    }

    #[test]
    fn digest_shared_secret_accepts_peer_nonces() {
        let mut a = server();
        let mut b = server();
        let c = a.challenge(T0, false);
        let h = Answer::new(&c[0]).header();
        assert_eq!(b.verify(&h, "INVITE", T0, passwords), ok("alice"));
    }

    #[test]
    fn digest_nonce_far_in_the_future_is_replay() {
        let mut s = server();
        let c = s.challenge(T0 + 2 * LIFETIME, false);
        let h = Answer::new(&c[0]).header();
        assert_eq!(s.verify(&h, "INVITE", T0, passwords), Verdict::Replay);
    }

    #[test]
    fn digest_wrong_realm_is_malformed() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let h = Answer::new(&c[0].replace(REALM, "evil.example.net")).header();
        assert!(is_malformed(&s.verify(&h, "INVITE", T0, passwords)));
        let h = Answer::new(&c[0].replace(REALM, "SIP.EXAMPLE.NET")).header();
        assert!(is_malformed(&s.verify(&h, "INVITE", T0, passwords)));
    }

    #[test]
    fn digest_wrong_opaque_is_malformed_and_missing_opaque_is_accepted() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let h = Answer::new(&c[0]).header();
        assert!(is_malformed(&s.verify(
            &with_param(&h, "opaque", "x"),
            "INVITE",
            T0,
            passwords
        )));
        assert_eq!(
            s.verify(&without_param(&h, "opaque"), "INVITE", T0, passwords),
            ok("alice")
        );
    }

    #[test]
    fn digest_missing_or_bad_fields_are_malformed() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let h = Answer::new(&c[0]).header();
        for name in [
            "username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce",
        ] {
            let v = s.verify(&without_param(&h, name), "INVITE", T0, passwords);
            assert!(is_malformed(&v), "without {name}: {v:?}");
        }
        for (name, value) in [
            ("qop", "auth-int"),
            ("qop", "auth,auth-int"),
            ("algorithm", "SHA-512-256"),
            ("algorithm", "MD5-sess"),
            ("algorithm", "SHA-256-sess"),
            ("nc", "000000001"),
            ("nc", "0000000g"),
            ("nc", ""),
            ("cnonce", ""),
            ("username", ""),
            ("response", "abc"),
            ("response", &"z".repeat(64)),
            ("response", &"0".repeat(32)),
        ] {
            let v = s.verify(&with_param(&h, name, value), "INVITE", T0, passwords);
            assert!(is_malformed(&v), "{name}={value:?}: {v:?}");
        }
        let v = s.verify(&format!("{h}, userhash=true"), "INVITE", T0, passwords);
        assert!(is_malformed(&v), "userhash: {v:?}");
        // Duplicate parameters.
        let dup = format!("{h}, nc=00000002");
        assert!(is_malformed(&s.verify(&dup, "INVITE", T0, passwords)));
        // Nothing above was accepted, so the nonce is still fresh.
        assert_eq!(s.verify(&h, "INVITE", T0, passwords), ok("alice"));
    }

    #[test]
    fn digest_rfc2069_form_is_malformed() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let nonce = param(&parse_params(&c[1]).unwrap(), "nonce")
            .unwrap()
            .to_string();
        let ha1 = Algorithm::Md5.hash_hex(format!("alice:{REALM}:wonderland").as_bytes());
        let ha2 = Algorithm::Md5.hash_hex(format!("INVITE:{URI}").as_bytes());
        let resp = Algorithm::Md5.hash_hex(format!("{ha1}:{nonce}:{ha2}").as_bytes());
        let h = format!(
            "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", response=\"{resp}\""
        );
        assert!(is_malformed(&s.verify(&h, "INVITE", T0, passwords)));
    }

    #[test]
    fn digest_garbage_headers_are_malformed() {
        let mut s = server();
        let huge = format!("Digest username=\"{}\"", "a".repeat(100_000));
        let inputs = [
            "",
            "   ",
            "Digest",
            "Digest ",
            "Basic YWxpY2U6d29uZGVybGFuZA==",
            "Digestusername=\"alice\"",
            "Digest username=\"alice",
            "Digest username=\"alice\\",
            "Digest username=",
            "Digest username",
            "Digest =alice",
            "Digest username=\"a\" realm=\"b\"",
            "Digest username=al\"ice",
            "Digest username=a=b",
            "Digest username=\"é\", realm=\"ü\"",
            "Digest ,,,",
            huge.as_str(),
        ];
        for input in inputs {
            let v = s.verify(input, "INVITE", T0, passwords);
            assert!(is_malformed(&v), "{input:.40}: {v:?}");
        }
    }

    #[test]
    fn digest_parse_params_accepts_rfc_syntax() {
        let p = parse_params(
            "  digest  Username = \"Mufasa\",realm=\"a, \\\"b\\\" \\\\ c\" ,, nc=00000001,\tqop=auth ,",
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("username".to_string(), "Mufasa".to_string()),
                ("realm".into(), "a, \"b\" \\ c".into()),
                ("nc".into(), "00000001".into()),
                ("qop".into(), "auth".into()),
            ]
        );
        assert_eq!(parse_params("Digest").unwrap(), vec![]);
        assert_eq!(
            parse_params("DIGEST uri=\"\"").unwrap(),
            vec![("uri".to_string(), String::new())]
        );
        assert_eq!(
            parse_params("Digest username=\"Jäsøn Doe\"").unwrap()[0].1,
            "Jäsøn Doe"
        );
    }

    #[test]
    fn digest_parse_params_rejects_bad_syntax() {
        for input in [
            "",
            "Basic realm=\"x\"",
            "Digest a=\"unterminated",
            "Digest a=\"trailing backslash\\",
            "Digest a=b c=d",
            "Digest a",
            "Digest a=",
            "Digest a=, b=c",
            "Digest a=\"x\"y",
            "Digest =b",
            "Digest a(=b",
        ] {
            assert!(parse_params(input).is_err(), "{input:?}");
        }
        assert!(parse_params(&format!("Digest a=\"{}\"", "x".repeat(MAX_HEADER_LEN))).is_err());
    }

    #[test]
    fn digest_parse_params_never_panics_on_prefixes_and_noise() {
        let mut s = server();
        let c = s.challenge(T0, false);
        let h = Answer::new(&c[0]).header() + ", x=\"é\\\"\"";
        for (i, _) in h.char_indices() {
            let _ = parse_params(&h[..i]);
            let _ = s.verify(&h[..i], "INVITE", T0, passwords);
        }
        let mut state = 0x1234_5678u32;
        let alphabet: Vec<char> = "Digest =,\"\\ \tabcé0".chars().collect();
        for _ in 0..2000 {
            let len = (state % 40) as usize;
            let mut t = String::new();
            for _ in 0..len {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                t.push(alphabet[(state >> 16) as usize % alphabet.len()]);
            }
            let _ = parse_params(&t);
            let _ = s.verify(&t, "INVITE", T0, passwords);
        }
    }

    #[test]
    fn digest_expired_nonces_are_swept() {
        let mut s = server();
        for _ in 0..3 {
            let c = s.challenge(T0, false);
            let h = Answer::new(&c[0]).header();
            assert_eq!(s.verify(&h, "INVITE", T0, passwords), ok("alice"));
        }
        assert_eq!(s.tracked_nonces(), 3);
        let c = s.challenge(T0 + LIFETIME + 1, false);
        let h = Answer::new(&c[0]).header();
        assert_eq!(
            s.verify(&h, "INVITE", T0 + LIFETIME + 1, passwords),
            ok("alice")
        );
        assert_eq!(s.tracked_nonces(), 1);
    }

    #[test]
    fn digest_table_is_bounded_and_eviction_does_not_reopen_replays() {
        let mut s = server().with_max_tracked_nonces(2);
        let mut headers = Vec::new();
        for t in 0..3 {
            let c = s.challenge(T0 + t, false);
            let h = Answer::new(&c[0]).header();
            assert_eq!(s.verify(&h, "INVITE", T0 + t, passwords), ok("alice"));
            headers.push((c[0].clone(), h));
        }
        assert_eq!(s.tracked_nonces(), 2);
        // The evicted (oldest) nonce is refused even with a higher nc.
        let mut a = Answer::new(&headers[0].0);
        a.nc = 2;
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0 + 3, passwords),
            Verdict::Replay
        );
        assert_eq!(
            s.verify(&headers[0].1, "INVITE", T0 + 3, passwords),
            Verdict::Replay
        );
        // Still-tracked nonces keep working, and new ones are admitted.
        let mut a = Answer::new(&headers[2].0);
        a.nc = 2;
        assert_eq!(
            s.verify(&a.header(), "INVITE", T0 + 3, passwords),
            ok("alice")
        );
        let c = s.challenge(T0 + 4, false);
        let h = Answer::new(&c[0]).header();
        assert_eq!(s.verify(&h, "INVITE", T0 + 4, passwords), ok("alice"));
        assert_eq!(s.tracked_nonces(), 2);
    }

    #[test]
    fn digest_constant_time_eq_and_hex() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00abFF"), Some(vec![0x00, 0xab, 0xff]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("é0"), None);
    }
}

// ---------------------------------------------------------------------------
// Client side: answering a carrier's 401/407 (RFC 3261 §22.2, RFC 7616 §3.4).
// ---------------------------------------------------------------------------

/// What a client needs from one `WWW-Authenticate` / `Proxy-Authenticate` value.
struct Challenge {
    realm: String,
    nonce: String,
    opaque: Option<String>,
    algorithm: Algorithm,
    /// `-sess`: HA1 also covers the nonce and cnonce (RFC 7616 §3.4.2).
    sess: bool,
    /// The algorithm token exactly as the server wrote it, echoed back.
    algorithm_token: Option<String>,
    /// `qop=auth` offered; false when the challenge has no qop (RFC 2069 form).
    qop_auth: bool,
}

impl Challenge {
    fn parse(value: &str) -> Result<Self, String> {
        let params = parse_params(value)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let realm = get("realm").ok_or("challenge has no realm")?.to_string();
        let nonce = get("nonce").ok_or("challenge has no nonce")?.to_string();
        let algorithm_token = get("algorithm").map(str::to_string);
        let (algorithm, sess) = match &algorithm_token {
            None => (Algorithm::Md5, false),
            Some(token) => {
                let (base, sess) = match token.len().checked_sub(5) {
                    Some(cut)
                        if token.is_char_boundary(cut)
                            && token[cut..].eq_ignore_ascii_case("-sess") =>
                    {
                        (&token[..cut], true)
                    }
                    _ => (token.as_str(), false),
                };
                let algorithm = Algorithm::from_name(base)
                    .ok_or_else(|| format!("unsupported algorithm {token:?}"))?;
                (algorithm, sess)
            }
        };
        let qop_auth = match get("qop") {
            None => false,
            Some(qop) => {
                if !qop
                    .split(',')
                    .any(|q| q.trim().eq_ignore_ascii_case("auth"))
                {
                    return Err(format!("unsupported qop {qop:?}"));
                }
                true
            }
        };
        Ok(Self {
            realm,
            nonce,
            opaque: get("opaque").map(str::to_string),
            algorithm,
            sess,
            algorithm_token,
            qop_auth,
        })
    }

    /// Lower is preferred: SHA-256 before MD5, plain before `-sess`.
    fn rank(&self) -> u8 {
        let base = match self.algorithm {
            Algorithm::Sha256 => 0,
            Algorithm::Md5 => 2,
        };
        base + u8::from(self.sess)
    }
}

/// The `Authorization` (or `Proxy-Authorization`) value answering `challenge` for a request
/// of `method` to `uri`. Handles `MD5`, `SHA-256` and their `-sess` forms, with `qop=auth`
/// when offered and the RFC 2069 form when no qop is. `cnonce` should be fresh per challenge
/// (see [`new_cnonce`]) and `nonce_count` count up from 1 for requests reusing one nonce.
pub fn client_authorization(
    challenge: &str,
    method: &str,
    uri: &str,
    username: &str,
    password: &str,
    cnonce: &str,
    nonce_count: u32,
) -> Result<String, String> {
    let c = Challenge::parse(challenge)?;
    let nc = format!("{nonce_count:08x}");
    let response = if c.qop_auth && !c.sess {
        ResponseInput {
            algorithm: c.algorithm,
            username,
            realm: &c.realm,
            password,
            method,
            uri,
            nonce: &c.nonce,
            nc: &nc,
            cnonce,
        }
        .response()
    } else {
        let h = |s: String| c.algorithm.hash_hex(s.as_bytes());
        let mut ha1 = h(format!("{username}:{}:{password}", c.realm));
        if c.sess {
            ha1 = h(format!("{ha1}:{}:{cnonce}", c.nonce));
        }
        let ha2 = h(format!("{method}:{uri}"));
        if c.qop_auth {
            h(format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce))
        } else {
            h(format!("{ha1}:{}:{ha2}", c.nonce))
        }
    };
    let mut out = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\"",
        quote(username),
        quote(&c.realm),
        quote(&c.nonce),
        quote(uri)
    );
    // Echoed only when the server named one: RFC 2617 servers may not expect it otherwise.
    if let Some(token) = &c.algorithm_token {
        out.push_str(&format!(", algorithm={token}"));
    }
    if c.qop_auth {
        out.push_str(&format!(", qop=auth, nc={nc}, cnonce={}", quote(cnonce)));
    }
    if let Some(opaque) = &c.opaque {
        out.push_str(&format!(", opaque={}", quote(opaque)));
    }
    Ok(out)
}

/// The challenge to answer among several (a 401 may offer one per algorithm, RFC 8760 §2.4):
/// SHA-256 before MD5, the first of equals; challenges we cannot answer are skipped.
pub fn pick_challenge<'a>(values: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    values
        .filter_map(|v| Challenge::parse(v).ok().map(|c| (c.rank(), v)))
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, v)| v)
}

/// A fresh random cnonce: 16 hex digits.
pub fn new_cnonce() -> String {
    let mut raw = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut raw);
    to_hex(&raw)
}

#[cfg(test)]
mod client_tests {
    use super::*;

    fn params(header: &str) -> HashMap<String, String> {
        parse_params(header).unwrap().into_iter().collect()
    }

    /// RFC 2617 §3.5.
    #[test]
    fn rfc2617_example() {
        let challenge = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
                         nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
                         opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let h = client_authorization(
            challenge,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            "0a4f113b",
            1,
        )
        .unwrap();
        assert_eq!(
            h,
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             response=\"6629fae49393a05397450978507c4ef1\", qop=auth, nc=00000001, \
             cnonce=\"0a4f113b\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""
        );
    }

    /// RFC 7616 §3.9.1: the same challenge answered with SHA-256 and with MD5.
    #[test]
    fn rfc7616_example() {
        let challenge = |alg: &str| {
            format!(
                "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
                 algorithm={alg}, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            )
        };
        let sha = challenge("SHA-256");
        let md5 = challenge("MD5");
        for (c, expected) in [
            (
                &sha,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
            (&md5, "8ca523f5e9506fed4657c9700eebdbec"),
        ] {
            let h = client_authorization(
                c,
                "GET",
                "/dir/index.html",
                "Mufasa",
                "Circle of Life",
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
                1,
            )
            .unwrap();
            let p = params(&h);
            assert_eq!(p["response"], expected);
            assert_eq!(p["qop"], "auth");
            assert_eq!(p["nc"], "00000001");
            assert_eq!(p["opaque"], "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS");
        }
        assert_eq!(
            pick_challenge([md5.as_str(), sha.as_str()].into_iter()),
            Some(sha.as_str())
        );
    }

    #[test]
    fn round_trip_with_digest_server() {
        let mut server = DigestServer::new("carrier.example", Duration::from_secs(300));
        let challenges = server.challenge(1_000, false);
        let picked = pick_challenge(challenges.iter().map(String::as_str)).unwrap();
        assert!(picked.contains("SHA-256"));
        let uri = "sip:+15551234567@carrier.example";
        let password = |u: &str| (u == "trunk1").then(|| "s3cret".to_string());
        for (nc, challenge) in [(1, picked), (2, challenges[1].as_str())] {
            let h = client_authorization(
                challenge,
                "INVITE",
                uri,
                "trunk1",
                "s3cret",
                &new_cnonce(),
                nc,
            )
            .unwrap();
            assert_eq!(
                server.verify(&h, "INVITE", 1_001, password),
                Verdict::Ok {
                    username: "trunk1".into()
                },
                "{h}"
            );
        }
        let wrong =
            client_authorization(picked, "INVITE", uri, "trunk1", "guess", "abc", 3).unwrap();
        assert_eq!(
            server.verify(&wrong, "INVITE", 1_001, password),
            Verdict::BadCredentials
        );
    }

    #[test]
    fn no_qop_and_sess_forms() {
        let challenge = "Digest realm=\"r\", nonce=\"n\", algorithm=MD5";
        let h = client_authorization(challenge, "BYE", "sip:a@b", "u", "p", "c", 1).unwrap();
        let ha1 = Algorithm::Md5.hash_hex(b"u:r:p");
        let ha2 = Algorithm::Md5.hash_hex(b"BYE:sip:a@b");
        let expected = Algorithm::Md5.hash_hex(format!("{ha1}:n:{ha2}").as_bytes());
        assert_eq!(
            h,
            format!(
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:a@b\", \
                 response=\"{expected}\", algorithm=MD5"
            )
        );

        let challenge = "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256-sess, qop=\"auth\"";
        let h = client_authorization(challenge, "INVITE", "sip:a@b", "u", "p", "c", 10).unwrap();
        let sha = Algorithm::Sha256;
        let ha1 = sha.hash_hex(format!("{}:n:c", sha.hash_hex(b"u:r:p")).as_bytes());
        let ha2 = sha.hash_hex(b"INVITE:sip:a@b");
        let expected = sha.hash_hex(format!("{ha1}:n:0000000a:c:auth:{ha2}").as_bytes());
        let p = params(&h);
        assert_eq!(p["response"], expected);
        assert_eq!(p["algorithm"], "SHA-256-sess");
        assert_eq!(p["nc"], "0000000a");
        assert!(!p.contains_key("opaque"));
    }

    #[test]
    fn unanswerable_challenges() {
        for (challenge, why) in [
            ("Basic realm=\"r\"", "scheme"),
            ("Digest nonce=\"n\"", "realm"),
            ("Digest realm=\"r\"", "nonce"),
            (
                "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256",
                "algorithm",
            ),
            (
                "Digest realm=\"r\", nonce=\"n\", algorithm=\"-sess\"",
                "algorithm",
            ),
            ("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"", "qop"),
        ] {
            let err =
                client_authorization(challenge, "INVITE", "sip:a@b", "u", "p", "c", 1).unwrap_err();
            assert!(err.contains(why), "{challenge}: {err}");
        }
        let md5 = "Digest realm=\"r\", nonce=\"n\"";
        let md5_sess = "Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess";
        let sha = "Digest realm=\"r\", nonce=\"n\", algorithm=sha-256";
        let other = "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256";
        assert_eq!(
            pick_challenge([other, md5_sess, md5].into_iter()),
            Some(md5)
        );
        assert_eq!(pick_challenge([md5, other, sha].into_iter()), Some(sha));
        assert_eq!(pick_challenge([other, "Basic x=y"].into_iter()), None);
        assert_eq!(pick_challenge(std::iter::empty()), None);
        assert_eq!(new_cnonce().len(), 16);
    }
}
