//! The rows as the database returns them, and their decoding into the
//! public model.
//!
//! One `FromRow` type per query shape serves both backends: columns are read
//! by name, as plain strings, integers and timestamps, and parsed into domain
//! types here, once. A value that does not parse is a decode error, never a
//! panic. Nothing here builds SQL or knows which backend produced the row.

use chrono::{DateTime, Utc};

use super::StoreError;
use super::model::{
    FullSyncProgress, GroupMemberRow, GroupSubscription, LiveMessage, MailboxStatus, MessageChange,
    OAuthToken, QuotaWait, ReviewSnapshot, SearchHit, Subscription, SubscriptionEvent, SyncRunRow,
    SyncState,
};
use super::text::parse_json_strings;
use crate::domain::{GmailMessageId, HistoryId, MailboxAddress, Operator, ParseError, SyncCounts};

/// A stored value that does not parse as its domain type.
pub(crate) fn decode_err(e: ParseError) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(Box::new(e)))
}

/// Declares a row struct read by column name (the column is the field's name)
/// on either backend: what sqlx's `FromRow` derive generates. sqlx's derive
/// and `migrate!` are proc macros whose crate builds the SQLite and PostgreSQL
/// drivers (and bundled SQLite's C) a second time, for the compiler: about a
/// minute of CPU on a cold build, which the first `demo` pays.
macro_rules! row_struct {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        $vis struct $name {
            $(pub(crate) $field: $ty,)*
        }

        impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for $name
        where
            &'static str: sqlx::ColumnIndex<R>,
            $($ty: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,)*
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)*
                })
            }
        }
    };
}

row_struct! {
    pub(crate) struct SubscriptionRow {
        mailbox: String,
        status: String,
        label_filter: String,
        requested_by: String,
        requested_at: DateTime<Utc>,
        approved_by: Option<String>,
        approved_at: Option<DateTime<Utc>>,
        last_reviewed_at: Option<DateTime<Utc>>,
        reviewed_by: Option<String>,
        org_unit_seen: Option<String>,
        org_unit_checked_at: Option<DateTime<Utc>>,
        note: Option<String>,
        status_reason: Option<String>,
        auth_mode: String,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        label_scope: Option<String>,
        via_group: Option<String>,
        org_unit_allowed_at: Option<DateTime<Utc>>,
    }
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = StoreError;
    fn try_from(r: SubscriptionRow) -> Result<Self, StoreError> {
        let op = |s: Option<String>| s.map(|s| Operator::parse(&s)).transpose();
        Ok(Subscription {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            status: r.status.parse().map_err(decode_err)?,
            label_filter: parse_json_strings(&r.label_filter),
            requested_by: Operator::parse(&r.requested_by).map_err(decode_err)?,
            requested_at: r.requested_at,
            approved_by: op(r.approved_by).map_err(decode_err)?,
            approved_at: r.approved_at,
            last_reviewed_at: r.last_reviewed_at,
            reviewed_by: op(r.reviewed_by).map_err(decode_err)?,
            org_unit_seen: r.org_unit_seen,
            org_unit_checked_at: r.org_unit_checked_at,
            note: r.note,
            status_reason: r.status_reason,
            auth_mode: r.auth_mode.parse().map_err(decode_err)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
            label_scope: r.label_scope.as_deref().map(parse_json_strings),
            via_group: r.via_group,
            org_unit_allowed_at: r.org_unit_allowed_at,
        })
    }
}

row_struct! {
    pub(crate) struct OAuthTokenRow {
        mailbox: String,
        refresh_token_ciphertext: String,
        key_id: String,
        scopes: String,
        google_subject: Option<String>,
        consent_id: String,
        consented_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    }
}

impl TryFrom<OAuthTokenRow> for OAuthToken {
    type Error = StoreError;
    fn try_from(r: OAuthTokenRow) -> Result<Self, StoreError> {
        Ok(OAuthToken {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            refresh_token_ciphertext: r.refresh_token_ciphertext,
            key_id: r.key_id,
            scopes: r.scopes,
            google_subject: r.google_subject,
            consent_id: r.consent_id,
            consented_at: r.consented_at,
            updated_at: r.updated_at,
        })
    }
}

row_struct! {
    pub(crate) struct EventRow {
        id: i64,
        mailbox: String,
        at: DateTime<Utc>,
        actor: String,
        action: String,
        old_status: Option<String>,
        new_status: String,
        reason: Option<String>,
    }
}

impl TryFrom<EventRow> for SubscriptionEvent {
    type Error = StoreError;
    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        Ok(SubscriptionEvent {
            id: r.id,
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            at: r.at,
            actor: r.actor,
            action: r.action,
            old_status: r
                .old_status
                .map(|s| s.parse())
                .transpose()
                .map_err(decode_err)?,
            new_status: r.new_status.parse().map_err(decode_err)?,
            reason: r.reason,
        })
    }
}

fn history(v: Option<i64>) -> Result<Option<HistoryId>, StoreError> {
    v.map(HistoryId::from_i64).transpose().map_err(decode_err)
}

row_struct! {
    pub(crate) struct SyncStateRow {
        mailbox: String,
        phase: String,
        history_id: Option<i64>,
        page_token: Option<String>,
        full_sync_history_id: Option<i64>,
        full_sync_generation: i64,
        applied_label_scope: Option<String>,
        last_success_at: Option<DateTime<Utc>>,
        next_poll_at: Option<DateTime<Utc>>,
        consecutive_failures: i64,
        last_error: Option<String>,
        lease_owner: Option<String>,
        lease_epoch: i64,
        lease_expires_at: Option<DateTime<Utc>>,
        updated_at: DateTime<Utc>,
        quiet_passes: i64,
        last_quiet_at: Option<DateTime<Utc>>,
        watch_expires_at: Option<DateTime<Utc>>,
        watch_renewed_at: Option<DateTime<Utc>>,
        watch_label_scope: Option<String>,
        watch_error: Option<String>,
        watch_failed_at: Option<DateTime<Utc>>,
        notified_history_id: Option<i64>,
        notified_at: Option<DateTime<Utc>>,
    }
}

impl TryFrom<SyncStateRow> for SyncState {
    type Error = StoreError;
    fn try_from(r: SyncStateRow) -> Result<Self, StoreError> {
        Ok(SyncState {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            phase: r.phase.parse().map_err(decode_err)?,
            history_id: history(r.history_id)?,
            page_token: r.page_token,
            full_sync_history_id: history(r.full_sync_history_id)?,
            full_sync_generation: r.full_sync_generation,
            applied_label_scope: r.applied_label_scope.as_deref().map(parse_json_strings),
            last_success_at: r.last_success_at,
            next_poll_at: r.next_poll_at,
            consecutive_failures: r.consecutive_failures,
            last_error: r.last_error,
            lease_owner: r.lease_owner,
            lease_epoch: r.lease_epoch,
            lease_expires_at: r.lease_expires_at,
            updated_at: r.updated_at,
            quiet_passes: r.quiet_passes,
            last_quiet_at: r.last_quiet_at,
            watch_expires_at: r.watch_expires_at,
            watch_renewed_at: r.watch_renewed_at,
            watch_label_scope: r.watch_label_scope.as_deref().map(parse_json_strings),
            watch_error: r.watch_error,
            watch_failed_at: r.watch_failed_at,
            notified_history_id: history(r.notified_history_id)?,
            notified_at: r.notified_at,
        })
    }
}

row_struct! {
    pub(crate) struct StatusRow {
        mailbox: String,
        status: String,
        phase: Option<String>,
        history_id: Option<i64>,
        last_success_at: Option<DateTime<Utc>>,
        next_poll_at: Option<DateTime<Utc>>,
        consecutive_failures: i64,
        last_error: Option<String>,
        lease_owner: Option<String>,
        lease_expires_at: Option<DateTime<Utc>>,
        messages: i64,
        full_sync_started_at: Option<DateTime<Utc>>,
        full_sync_listed: Option<i64>,
        full_sync_fetched: Option<i64>,
        full_sync_estimated_total: Option<i64>,
        quota_wait_until: Option<DateTime<Utc>>,
        quota_wait_reason: Option<String>,
        quiet_passes: i64,
        last_quiet_at: Option<DateTime<Utc>>,
        watch_expires_at: Option<DateTime<Utc>>,
        watch_error: Option<String>,
        watch_failed_at: Option<DateTime<Utc>>,
    }
}

impl TryFrom<StatusRow> for MailboxStatus {
    type Error = StoreError;
    fn try_from(r: StatusRow) -> Result<Self, StoreError> {
        Ok(MailboxStatus {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            status: r.status.parse().map_err(decode_err)?,
            phase: r.phase.map(|p| p.parse()).transpose().map_err(decode_err)?,
            history_id: history(r.history_id)?,
            last_success_at: r.last_success_at,
            next_poll_at: r.next_poll_at,
            consecutive_failures: r.consecutive_failures,
            last_error: r.last_error,
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at,
            messages: r.messages,
            full_sync: r.full_sync_started_at.map(|started_at| FullSyncProgress {
                started_at,
                listed: r.full_sync_listed.unwrap_or(0),
                fetched: r.full_sync_fetched.unwrap_or(0),
                estimated_total: r.full_sync_estimated_total.unwrap_or(0),
            }),
            quota_wait: r.quota_wait_until.map(|until| QuotaWait {
                until,
                reason: r.quota_wait_reason.unwrap_or_default(),
            }),
            quiet_passes: r.quiet_passes,
            last_quiet_at: r.last_quiet_at,
            watch_expires_at: r.watch_expires_at,
            watch_error: r.watch_error,
            watch_failed_at: r.watch_failed_at,
        })
    }
}

row_struct! {
    pub(crate) struct RunRow {
        mailbox: String,
        kind: String,
        replica: String,
        started_at: DateTime<Utc>,
        finished_at: Option<DateTime<Utc>>,
        added: i64,
        updated: i64,
        deleted: i64,
        label_changes: i64,
        api_calls: i64,
        quota_units: i64,
        outcome: String,
        error: Option<String>,
    }
}

impl TryFrom<RunRow> for SyncRunRow {
    type Error = StoreError;
    fn try_from(r: RunRow) -> Result<Self, StoreError> {
        Ok(SyncRunRow {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            kind: r.kind.parse().map_err(decode_err)?,
            replica: r.replica,
            started_at: r.started_at,
            finished_at: r.finished_at.unwrap_or(r.started_at),
            counts: SyncCounts {
                added: r.added as u64,
                updated: r.updated as u64,
                deleted: r.deleted as u64,
                label_changes: r.label_changes as u64,
                api_calls: r.api_calls as u64,
                quota_units: r.quota_units as u64,
            },
            outcome: r.outcome.parse().map_err(decode_err)?,
            error: r.error,
        })
    }
}

row_struct! {
    pub(crate) struct ChangeRowDb {
        id: i64,
        mailbox: String,
        gmail_id: String,
        change: String,
        label_id: Option<String>,
        history_id: Option<i64>,
        observed_at: DateTime<Utc>,
    }
}

impl TryFrom<ChangeRowDb> for MessageChange {
    type Error = StoreError;
    fn try_from(r: ChangeRowDb) -> Result<Self, StoreError> {
        Ok(MessageChange {
            id: r.id,
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            gmail_id: GmailMessageId::parse(&r.gmail_id).map_err(decode_err)?,
            change: r.change.parse().map_err(decode_err)?,
            label_id: r.label_id,
            history_id: history(r.history_id)?,
            observed_at: r.observed_at,
        })
    }
}

row_struct! {
    pub(crate) struct LiveRow {
        gmail_id: String,
        thread_id: String,
        label_ids: String,
    }
}

impl TryFrom<LiveRow> for LiveMessage {
    type Error = StoreError;
    fn try_from(r: LiveRow) -> Result<Self, StoreError> {
        let mut label_ids = parse_json_strings(&r.label_ids);
        label_ids.sort();
        Ok(LiveMessage {
            gmail_id: GmailMessageId::parse(&r.gmail_id).map_err(decode_err)?,
            thread_id: r.thread_id,
            label_ids,
        })
    }
}

row_struct! {
    pub(crate) struct HitRow {
        mailbox: String,
        gmail_id: String,
        subject: Option<String>,
    }
}

impl TryFrom<HitRow> for SearchHit {
    type Error = StoreError;
    fn try_from(r: HitRow) -> Result<Self, StoreError> {
        Ok(SearchHit {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            gmail_id: GmailMessageId::parse(&r.gmail_id).map_err(decode_err)?,
            subject: r.subject,
        })
    }
}

row_struct! {
    /// The state of a stored message that a batch plan depends on.
    pub(crate) struct ExistingRow {
        gmail_id: String,
        live: bool,
        label_ids: String,
    }
}

/// Decodes every row, failing on the first that does not parse.
pub(crate) fn convert<R, T: TryFrom<R, Error = StoreError>>(
    rows: Vec<R>,
) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(T::try_from).collect()
}

row_struct! {
    pub(crate) struct GroupSubscriptionRow {
        group_email: String,
        status: String,
        label_filter: String,
        note: Option<String>,
        requested_by: String,
        requested_at: DateTime<Utc>,
        removed_by: Option<String>,
        removed_at: Option<DateTime<Utc>>,
        last_expanded_at: Option<DateTime<Utc>>,
    }
}

impl TryFrom<GroupSubscriptionRow> for GroupSubscription {
    type Error = StoreError;
    fn try_from(r: GroupSubscriptionRow) -> Result<Self, StoreError> {
        Ok(GroupSubscription {
            group_email: r.group_email,
            status: r.status,
            label_filter: parse_json_strings(&r.label_filter),
            note: r.note,
            requested_by: Operator::parse(&r.requested_by).map_err(decode_err)?,
            requested_at: r.requested_at,
            removed_by: r
                .removed_by
                .map(|s| Operator::parse(&s))
                .transpose()
                .map_err(decode_err)?,
            removed_at: r.removed_at,
            last_expanded_at: r.last_expanded_at,
        })
    }
}

row_struct! {
    pub(crate) struct GroupMemberDbRow {
        group_email: String,
        mailbox: String,
        first_seen_at: DateTime<Utc>,
        last_seen_at: DateTime<Utc>,
        left_at: Option<DateTime<Utc>>,
    }
}

impl TryFrom<GroupMemberDbRow> for GroupMemberRow {
    type Error = StoreError;
    fn try_from(r: GroupMemberDbRow) -> Result<Self, StoreError> {
        Ok(GroupMemberRow {
            group_email: r.group_email,
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            first_seen_at: r.first_seen_at,
            last_seen_at: r.last_seen_at,
            left_at: r.left_at,
        })
    }
}

row_struct! {
    pub(crate) struct ReviewSnapshotRow {
        mailbox: String,
        groups: String,
        org_unit: Option<String>,
        reviewed_by: String,
        reviewed_at: DateTime<Utc>,
    }
}

impl TryFrom<ReviewSnapshotRow> for ReviewSnapshot {
    type Error = StoreError;
    fn try_from(r: ReviewSnapshotRow) -> Result<Self, StoreError> {
        Ok(ReviewSnapshot {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            groups: parse_json_strings(&r.groups),
            org_unit: r.org_unit,
            reviewed_by: Operator::parse(&r.reviewed_by).map_err(decode_err)?,
            reviewed_at: r.reviewed_at,
        })
    }
}
