//! Newtypes parsed once at the edges (CLI, config, Google responses).
//!
//! Everything inside the crate takes these types, never a raw `&str` that
//! might not have been checked. This module depends on nothing else in the
//! crate and does no I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value could not be parsed; the text names the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn invalid(what: &str, input: &str, why: &str) -> ParseError {
    ParseError(format!("invalid {what} {input:?}: {why}"))
}

/// A mailbox's primary email address, lower-cased.
///
/// Only the plain `local@domain` form is accepted: no display names, no
/// comments, no quoting, no IP-literal domains. That is what Workspace
/// primary addresses look like, and refusing the rest keeps operator typos
/// from reaching the database.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MailboxAddress(String);

impl MailboxAddress {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(invalid("email address", input, "empty"));
        }
        if s.len() > 254 {
            return Err(invalid(
                "email address",
                input,
                "longer than 254 characters",
            ));
        }
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| invalid("email address", input, "missing '@'"))?;
        if local.is_empty() || local.len() > 64 {
            return Err(invalid("email address", input, "bad local part"));
        }
        let local_ok = local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        if !local_ok {
            return Err(invalid("email address", input, "bad local part"));
        }
        Domain::parse(domain).map_err(|_| invalid("email address", input, "bad domain"))?;
        Ok(Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `@`, lower-cased.
    pub fn domain(&self) -> &str {
        // SAFETY of the expect: `parse` guarantees exactly one '@' split point exists.
        self.0
            .rsplit_once('@')
            .map(|(_, d)| d)
            .expect("validated address has '@'")
    }
}

impl fmt::Display for MailboxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MailboxAddress {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for MailboxAddress {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<MailboxAddress> for String {
    fn from(m: MailboxAddress) -> String {
        m.0
    }
}

/// A DNS domain name, lower-cased (e.g. `example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim().trim_end_matches('.');
        let labels: Vec<&str> = s.split('.').collect();
        let ok = s.len() <= 253
            && labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(invalid("domain", input, "expected a name like example.com"));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Domain {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

/// A Gmail message ID (hex string, immutable for the message's life).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GmailMessageId(String);

impl GmailMessageId {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if input.is_empty()
            || input.len() > 64
            || !input
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "gmail message id",
                input,
                "expected a short alphanumeric id",
            ));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GmailMessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for GmailMessageId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<GmailMessageId> for String {
    fn from(m: GmailMessageId) -> String {
        m.0
    }
}

/// A Gmail history ID: an unsigned 64-bit position in a mailbox's change log,
/// sent by Google as a decimal string. Stored as `i64` (values stay far below
/// 2^63 in practice; larger ones are refused rather than wrapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HistoryId(u64);

impl HistoryId {
    pub const ZERO: HistoryId = HistoryId(0);

    pub fn new(v: u64) -> Result<Self, ParseError> {
        if v > i64::MAX as u64 {
            return Err(invalid("history id", &v.to_string(), "out of range"));
        }
        Ok(Self(v))
    }

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let v: u64 = input
            .trim()
            .parse()
            .map_err(|_| invalid("history id", input, "not an unsigned integer"))?;
        Self::new(v)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The value as stored in the database.
    pub fn as_i64(self) -> i64 {
        // Lossless: `new` refuses values above i64::MAX.
        self.0 as i64
    }

    pub fn from_i64(v: i64) -> Result<Self, ParseError> {
        u64::try_from(v)
            .map_err(|_| invalid("history id", &v.to_string(), "negative"))
            .and_then(Self::new)
    }
}

impl fmt::Display for HistoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<String> for HistoryId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<HistoryId> for String {
    fn from(h: HistoryId) -> String {
        h.0.to_string()
    }
}

/// A Workspace organizational unit path such as `/Shared Mailboxes`.
///
/// Normalized: leading `/`, no trailing `/` (except the root `/`), no empty
/// segments. Comparison is case-sensitive, as in the Admin console.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgUnitPath(String);

impl OrgUnitPath {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if !s.starts_with('/') {
            return Err(invalid("org unit path", input, "must start with '/'"));
        }
        let segments: Vec<&str> = s.split('/').skip(1).filter(|p| !p.is_empty()).collect();
        if s.split('/')
            .skip(1)
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .any(|p| p.is_empty())
        {
            return Err(invalid("org unit path", input, "empty path segment"));
        }
        if segments.is_empty() {
            return Ok(Self("/".to_owned()));
        }
        Ok(Self(format!("/{}", segments.join("/"))))
    }

    pub fn root() -> Self {
        Self("/".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `self` equals `parent` or sits below it.
    pub fn is_within(&self, parent: &OrgUnitPath) -> bool {
        if parent.0 == "/" || self.0 == parent.0 {
            return true;
        }
        self.0.len() > parent.0.len()
            && self.0.starts_with(&parent.0)
            && self.0.as_bytes()[parent.0.len()] == b'/'
    }
}

impl fmt::Display for OrgUnitPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for OrgUnitPath {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<OrgUnitPath> for String {
    fn from(o: OrgUnitPath) -> String {
        o.0
    }
}

/// Who performed an operator action (`--by`). Free text, trimmed, 1..=200
/// characters, no control characters; stored verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Operator(String);

impl Operator {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if s.is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
            return Err(invalid(
                "operator",
                input,
                "expected 1 to 200 printable characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The actor recorded for changes the daemon makes by itself.
    pub fn system() -> Self {
        Self("gmail-ingest".to_owned())
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Operator {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Operator> for String {
    fn from(o: Operator) -> String {
        o.0
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(invalid(stringify!($name), other, "unknown value")),
                }
            }
        }
    };
}

string_enum!(
    /// The operator-facing state of a subscription.
    SubscriptionStatus {
        Pending => "pending",
        Active => "active",
        Paused => "paused",
        Suspended => "suspended",
        Removed => "removed",
    }
);

/// An operator or system action on a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionAction {
    Approve,
    Pause,
    Resume,
    Remove,
    /// The daemon found the mailbox outside the approved OUs (or suspended,
    /// archived, without a mailbox).
    Suspend,
    /// The daemon found the condition behind a suspension cleared.
    Reinstate,
    /// A governance change (`relabel`, `set-auth`): back to pending, for
    /// four-eyes approval, from any state but removed.
    RequestChange,
}

impl SubscriptionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Remove => "remove",
            Self::Suspend => "suspend",
            Self::Reinstate => "reinstate",
            Self::RequestChange => "change",
        }
    }
}

impl SubscriptionStatus {
    /// The state machine: the state `action` leads to from `self`, or `None`
    /// when the transition is illegal.
    pub fn apply(self, action: SubscriptionAction) -> Option<SubscriptionStatus> {
        use SubscriptionAction as A;
        use SubscriptionStatus as S;
        match (self, action) {
            (S::Pending, A::Approve) => Some(S::Active),
            (S::Active, A::Pause) | (S::Suspended, A::Pause) => Some(S::Paused),
            (S::Paused, A::Resume) => Some(S::Active),
            (S::Active, A::Suspend) => Some(S::Suspended),
            (S::Suspended, A::Reinstate) => Some(S::Active),
            (S::Removed, _) => None,
            (_, A::Remove) => Some(S::Removed),
            (_, A::RequestChange) => Some(S::Pending),
            _ => None,
        }
    }

    /// Whether the daemon may impersonate a mailbox in this state.
    pub fn is_ingesting(self) -> bool {
        self == SubscriptionStatus::Active
    }
}

string_enum!(
    /// How the daemon gets a mailbox's tokens (`subscriptions.auth_mode`):
    /// `delegated` — the service account impersonates the mailbox (DWD);
    /// `oauth` — its owner consented and their refresh token is stored sealed.
    AuthMode {
        Delegated => "delegated",
        OAuth => "oauth",
    }
);

string_enum!(
    /// Where a mailbox's sync stands (`sync_state.phase`).
    SyncPhase {
        Initial => "initial",
        FullSync => "full_sync",
        Incremental => "incremental",
        Error => "error",
        AuthFailed => "auth_failed",
    }
);

string_enum!(
    /// What kind of pass a `sync_runs` row records (`sync_runs.kind`).
    SyncKind {
        Full => "full",
        Incremental => "incremental",
        Resync => "resync",
    }
);

string_enum!(
    /// How a recorded pass ended (`sync_runs.outcome`). `LeaseLost` is
    /// reserved: a fenced-out replica cannot write its run row. Six name the
    /// decision that stopped a pass ([`StopDecision`]); `QuotaWait` is a
    /// backfill paced by the daily budget (it resumes from its page token).
    RunOutcome {
        Ok => "ok",
        Error => "error",
        AuthFailed => "auth_failed",
        LeaseLost => "lease_lost",
        Pending => "pending",
        Paused => "paused",
        Suspended => "suspended",
        Removed => "removed",
        AuthModeChanged => "auth_mode_changed",
        Disabled => "disabled",
        QuotaWait => "quota_wait",
    }
);

string_enum!(
    /// The decision that stopped a pass before its end: the subscription is
    /// no longer active (returned to pending, paused, suspended by the
    /// org-unit gate, removed), its `auth_mode` is not the one the pass
    /// started with, or `integration.enabled` is false. Never a failure.
    StopDecision {
        Pending => "pending",
        Paused => "paused",
        Suspended => "suspended",
        Removed => "removed",
        AuthModeChanged => "auth_mode_changed",
        Disabled => "disabled",
    }
);

impl StopDecision {
    /// The decision a subscription in `status` stands for; `None` when it is
    /// active (a missing subscription is [`StopDecision::Removed`]).
    pub fn from_status(status: Option<SubscriptionStatus>) -> Option<StopDecision> {
        match status {
            Some(SubscriptionStatus::Active) => None,
            Some(SubscriptionStatus::Pending) => Some(StopDecision::Pending),
            Some(SubscriptionStatus::Paused) => Some(StopDecision::Paused),
            Some(SubscriptionStatus::Suspended) => Some(StopDecision::Suspended),
            Some(SubscriptionStatus::Removed) | None => Some(StopDecision::Removed),
        }
    }

    /// Whether the subscription's standing admits a pass that started in
    /// `pinned` mode (`None`: any mode): the decision that stops it, if any.
    pub fn judge(
        standing: Option<(SubscriptionStatus, AuthMode)>,
        pinned: Option<AuthMode>,
    ) -> Option<StopDecision> {
        if let Some(d) = Self::from_status(standing.map(|(s, _)| s)) {
            return Some(d);
        }
        match (standing, pinned) {
            (Some((_, mode)), Some(p)) if mode != p => Some(StopDecision::AuthModeChanged),
            _ => None,
        }
    }

    /// The `sync_runs.outcome` recording it.
    pub fn run_outcome(self) -> RunOutcome {
        match self {
            StopDecision::Pending => RunOutcome::Pending,
            StopDecision::Paused => RunOutcome::Paused,
            StopDecision::Suspended => RunOutcome::Suspended,
            StopDecision::Removed => RunOutcome::Removed,
            StopDecision::AuthModeChanged => RunOutcome::AuthModeChanged,
            StopDecision::Disabled => RunOutcome::Disabled,
        }
    }
}

/// What a pass (or one committed batch of it) changed and spent: the one
/// set of counters shared by the store's batch result, the engine's report,
/// the `sync_runs` row, the completion event and the printed report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SyncCounts {
    pub added: u64,
    pub updated: u64,
    pub deleted: u64,
    pub label_changes: u64,
    /// Google API requests made (zero for a batch: the store does not call Google).
    pub api_calls: u64,
    /// Quota units those requests cost.
    pub quota_units: u64,
}

impl SyncCounts {
    /// Adds every counter of `other` to this one.
    pub fn add(&mut self, other: &SyncCounts) {
        self.added += other.added;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.label_changes += other.label_changes;
        self.api_calls += other.api_calls;
        self.quota_units += other.quota_units;
    }
}

string_enum!(
    /// What a `message_changes` row records.
    ChangeKind {
        Added => "added",
        Deleted => "deleted",
        LabelAdded => "label_added",
        LabelRemoved => "label_removed",
        LeftScope => "left_scope",
    }
);

string_enum!(
    /// Which Gmail format messages are fetched in (`sync.message_format`).
    MessageFormat {
        Raw => "raw",
        Full => "full",
        Metadata => "metadata",
    }
);

// The normalizer's output types live in its own crate, which depends on
// nothing of ours; the rest of the product names them from here.
pub use gmail_normalize::{AddressRole, AttachmentMeta, MessageAddress, NormalizedMessage};

/// What Gmail says about a message beside its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GmailMessageMeta {
    pub gmail_id: GmailMessageId,
    pub thread_id: String,
    pub history_id: HistoryId,
    /// Gmail `internalDate`, epoch milliseconds.
    pub internal_date_ms: i64,
    pub size_estimate: i64,
    pub snippet: Option<String>,
    pub label_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_addresses_are_lowercased_and_validated() {
        let m = MailboxAddress::parse(" Support@Example.COM ").unwrap();
        assert_eq!(m.as_str(), "support@example.com");
        assert_eq!(m.domain(), "example.com");
        for bad in [
            "",
            "no-at",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            "a@@example.com",
            "a@exa mple.com",
            "'; DROP TABLE subscriptions; --@example.com",
            "a..b@example.com",
            "Name <a@example.com>",
        ] {
            assert!(MailboxAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn org_unit_paths_nest_by_segment() {
        let shared = OrgUnitPath::parse("/Shared Mailboxes").unwrap();
        let child = OrgUnitPath::parse("/Shared Mailboxes/Support/").unwrap();
        let sibling = OrgUnitPath::parse("/Shared Mailboxes Old").unwrap();
        assert_eq!(child.as_str(), "/Shared Mailboxes/Support");
        assert!(child.is_within(&shared));
        assert!(shared.is_within(&shared));
        assert!(!sibling.is_within(&shared));
        assert!(shared.is_within(&OrgUnitPath::root()));
        assert!(!OrgUnitPath::root().is_within(&shared));
        assert!(OrgUnitPath::parse("Shared").is_err());
        assert!(OrgUnitPath::parse("/a//b").is_err());
    }

    #[test]
    fn history_ids_round_trip_and_refuse_garbage() {
        assert_eq!(HistoryId::parse("12345").unwrap().get(), 12345);
        assert!(HistoryId::parse("-1").is_err());
        assert!(HistoryId::parse("abc").is_err());
        assert!(HistoryId::parse("18446744073709551615").is_err());
        assert_eq!(HistoryId::from_i64(7).unwrap().as_i64(), 7);
    }

    #[test]
    fn subscription_state_machine_allows_only_listed_transitions() {
        use SubscriptionAction as A;
        use SubscriptionStatus as S;
        assert_eq!(S::Pending.apply(A::Approve), Some(S::Active));
        assert_eq!(S::Active.apply(A::Approve), None);
        assert_eq!(S::Pending.apply(A::Pause), None);
        assert_eq!(S::Paused.apply(A::Resume), Some(S::Active));
        assert_eq!(S::Active.apply(A::Suspend), Some(S::Suspended));
        assert_eq!(S::Suspended.apply(A::Reinstate), Some(S::Active));
        assert_eq!(S::Paused.apply(A::Reinstate), None);
        assert_eq!(S::Removed.apply(A::Remove), None);
        assert_eq!(S::Pending.apply(A::Remove), Some(S::Removed));
        for from in [S::Active, S::Paused, S::Suspended, S::Pending] {
            assert_eq!(from.apply(A::RequestChange), Some(S::Pending));
        }
        assert_eq!(S::Removed.apply(A::RequestChange), None);
    }

    #[test]
    fn only_an_active_subscription_in_the_pinned_mode_admits_a_pass() {
        use AuthMode as M;
        use StopDecision as D;
        use SubscriptionStatus as S;
        assert_eq!(
            StopDecision::judge(Some((S::Active, M::Delegated)), None),
            None
        );
        assert_eq!(
            StopDecision::judge(Some((S::Active, M::Delegated)), Some(M::Delegated)),
            None
        );
        assert_eq!(
            StopDecision::judge(Some((S::Active, M::OAuth)), Some(M::Delegated)),
            Some(D::AuthModeChanged)
        );
        assert_eq!(
            StopDecision::judge(Some((S::Paused, M::OAuth)), Some(M::Delegated)),
            Some(D::Paused),
            "the status is named before the mode"
        );
        assert_eq!(StopDecision::judge(None, None), Some(D::Removed));
        for (status, decision) in [
            (S::Pending, D::Pending),
            (S::Suspended, D::Suspended),
            (S::Removed, D::Removed),
        ] {
            assert_eq!(
                StopDecision::judge(Some((status, M::Delegated)), None),
                Some(decision)
            );
        }
        for d in StopDecision::ALL {
            assert_eq!(d.run_outcome().as_str(), d.as_str());
        }
    }

    #[test]
    fn operators_refuse_control_characters() {
        assert!(Operator::parse("alice\n").is_ok());
        assert!(Operator::parse("al\u{7}ice").is_err());
        assert!(Operator::parse("  ").is_err());
        assert_eq!(Operator::parse("x'); --").unwrap().as_str(), "x'); --");
    }
}
