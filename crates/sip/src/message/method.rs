//! The request method: the methods we know by name, and any other token kept as sent.

/// A request method. Methods are case-sensitive tokens (RFC 3261 §7.1): `invite` is not
/// INVITE but an extension method, kept as sent in [`Method::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Refer,
    Notify,
    Update,
    Prack,
    Subscribe,
    Message,
    Publish,
    /// Any other token, as sent.
    Other(String),
}

impl Method {
    const KNOWN: [(&'static str, Method); 14] = [
        ("INVITE", Method::Invite),
        ("ACK", Method::Ack),
        ("BYE", Method::Bye),
        ("CANCEL", Method::Cancel),
        ("OPTIONS", Method::Options),
        ("REGISTER", Method::Register),
        ("INFO", Method::Info),
        ("REFER", Method::Refer),
        ("NOTIFY", Method::Notify),
        ("UPDATE", Method::Update),
        ("PRACK", Method::Prack),
        ("SUBSCRIBE", Method::Subscribe),
        ("MESSAGE", Method::Message),
        ("PUBLISH", Method::Publish),
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(token) => token,
            known => Self::KNOWN
                .iter()
                .find(|(_, m)| m == known)
                .map_or("", |(name, _)| name),
        }
    }
}

impl From<&str> for Method {
    fn from(token: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(name, _)| *name == token)
            .map_or_else(|| Method::Other(token.to_string()), |(_, m)| m.clone())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Method {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Method {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
