//! Header lists and reading header values: comma-separated values, name-addrs (From, To,
//! Contact) with their URI and tag, and CSeq; quotes and `<…>` honoured throughout.

use super::is_token;

/// A header as it appeared, with its name expanded from the compact form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Headers in wire order. Lookups are case-insensitive on the (expanded) name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push(Header {
            name: name.into(),
            value: value.into(),
        });
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        match self
            .0
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(name))
        {
            Some(h) => h.value = value.into(),
            None => self.push(name, value),
        }
    }

    /// Every comma-separated token of every header with this name (Require, Supported, Allow…).
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }
}

/// The characters of a header value that lie outside double-quoted strings (quoted-pairs
/// honoured), with their byte offsets.
struct Unquoted<'a> {
    chars: std::str::CharIndices<'a>,
    in_quotes: bool,
    escaped: bool,
}

fn unquoted(value: &str) -> Unquoted<'_> {
    Unquoted {
        chars: value.char_indices(),
        in_quotes: false,
        escaped: false,
    }
}

impl Iterator for Unquoted<'_> {
    type Item = (usize, char);

    fn next(&mut self) -> Option<(usize, char)> {
        loop {
            let (i, c) = self.chars.next()?;
            if self.escaped {
                self.escaped = false;
            } else if self.in_quotes {
                match c {
                    '\\' => self.escaped = true,
                    '"' => self.in_quotes = false,
                    _ => {}
                }
            } else if c == '"' {
                self.in_quotes = true;
            } else {
                return Some((i, c));
            }
        }
    }
}

/// The comma-separated values of one header line (Contact, Route…), commas inside quotes or
/// `<…>` kept.
pub fn split_values(value: &str) -> Vec<&str> {
    split_outside(value, ',')
        .into_iter()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Splits at every `sep` outside double-quoted strings and `<…>`.
pub(super) fn split_outside(value: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_angle, mut start) = (false, 0);
    for (i, c) in unquoted(value) {
        match c {
            '<' => in_angle = true,
            '>' => in_angle = false,
            c if c == sep && !in_angle => {
                out.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

/// Where the `<` of a name-addr is (outside the quoted display name); `Err` when a quoted
/// string is not closed.
pub(super) fn find_laquot(value: &str) -> Result<Option<usize>, ()> {
    let mut chars = unquoted(value);
    let found = chars.by_ref().find(|(_, c)| *c == '<').map(|(i, _)| i);
    chars.by_ref().for_each(drop);
    if chars.in_quotes {
        Err(())
    } else {
        Ok(found)
    }
}

/// `CSeq: 4711 INVITE` → (4711, "INVITE").
pub fn parse_cseq(value: &str) -> Option<(u32, &str)> {
    let mut it = value.split_whitespace();
    let seq = it.next()?.parse::<u32>().ok()?;
    let method = it.next()?;
    if it.next().is_some() || !is_token(method) {
        return None;
    }
    Some((seq, method))
}

/// The URI of a name-addr or addr-spec header value (From, To, Contact).
pub fn name_addr_uri(value: &str) -> Option<rsipstack::sip::Uri> {
    rsipstack::sip::parse_uri(name_addr_uri_text(value)?).ok()
}

/// The URI text of a name-addr or addr-spec, exactly as sent (for echoing it back unchanged).
pub fn name_addr_uri_text(value: &str) -> Option<&str> {
    match (find_laquot(value).ok()?, value.rfind('>')) {
        (Some(open), Some(close)) if open < close => Some(value[open + 1..close].trim()),
        (None, None) => Some(value.split(';').next()?.trim()),
        _ => None,
    }
}

/// The `tag` parameter of a From/To value (outside the `<…>` part).
pub fn tag_param(value: &str) -> Option<&str> {
    let params = match value.rfind('>') {
        Some(close) => &value[close + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("tag").then(|| v.trim())
    })
}
