//! What the normalizer produces: one message's RFC 822 content as plain data.
//!
//! These types are the crate's whole output; they carry no behaviour beyond
//! naming their values, and they know nothing of Gmail or of any database.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The role an address plays in a message (`message_addresses.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressRole {
    From,
    Sender,
    ReplyTo,
    To,
    Cc,
    Bcc,
}

impl AddressRole {
    pub const ALL: &'static [AddressRole] = &[
        AddressRole::From,
        AddressRole::Sender,
        AddressRole::ReplyTo,
        AddressRole::To,
        AddressRole::Cc,
        AddressRole::Bcc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AddressRole::From => "from",
            AddressRole::Sender => "sender",
            AddressRole::ReplyTo => "reply_to",
            AddressRole::To => "to",
            AddressRole::Cc => "cc",
            AddressRole::Bcc => "bcc",
        }
    }
}

impl fmt::Display for AddressRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`AddressRole`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid AddressRole {0:?}: unknown value")]
pub struct UnknownAddressRole(pub String);

impl FromStr for AddressRole {
    type Err = UnknownAddressRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AddressRole::ALL
            .iter()
            .copied()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownAddressRole(s.to_owned()))
    }
}

/// One address from a header, after decoding encoded words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAddress {
    pub role: AddressRole,
    /// Display name, if any.
    pub name: Option<String>,
    /// The address as written, lower-cased; may be malformed in hostile mail.
    pub address: String,
    /// The part after the last `@`, lower-cased; empty when there is none.
    pub domain: String,
}

/// Metadata of one attachment (the content itself is not stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// MIME part path such as `1.2` (Gmail's `partId` convention: 0-based
    /// child indexes joined by dots).
    pub part_id: String,
    pub filename: Option<String>,
    pub mime_type: String,
    /// Decoded size in bytes.
    pub size_bytes: i64,
    /// Lower-case hex SHA-256 of the decoded content.
    pub sha256: String,
    /// `Content-Disposition: inline` or referenced by Content-ID.
    pub inline: bool,
    pub content_id: Option<String>,
}

/// The output of [`normalize`](crate::normalize): what the database stores
/// of one message's RFC 822 content. Gmail metadata (labels, thread,
/// internalDate) is kept separately by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NormalizedMessage {
    pub subject: Option<String>,
    pub addresses: Vec<MessageAddress>,
    /// RFC 822 Message-ID without angle brackets.
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    /// Message-IDs from `References`, without angle brackets, in order.
    pub references: Vec<String>,
    /// The `Date` header as RFC 3339 UTC, when it parsed.
    pub date: Option<String>,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
    pub attachments: Vec<AttachmentMeta>,
    /// True when the message exceeded `sync.max_message_bytes` and bodies were cut.
    pub truncated: bool,
    /// Set when the input could not be (fully) parsed; the row is still stored.
    pub parse_error: Option<String>,
}

impl NormalizedMessage {
    pub fn has_attachments(&self) -> bool {
        !self.attachments.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_roles_round_trip_through_their_column_text() {
        for role in AddressRole::ALL {
            assert_eq!(role.as_str().parse::<AddressRole>(), Ok(*role));
        }
        assert_eq!(
            "boss".parse::<AddressRole>().unwrap_err().to_string(),
            "invalid AddressRole \"boss\": unknown value"
        );
    }
}
