//! What both backends share: the statements that read the same on SQLite
//! and PostgreSQL, one file per concern, and the small helpers they call.
//!
//! Each concern file defines one macro (`subscription_statements!`,
//! `lease_statements!`, …) that each backend module expands once with its
//! store type and sqlx database, plus the literal SQL fragments where the
//! dialects differ (how a JSON array parameter becomes a row source or an id
//! list). A macro rather than a generic function: sqlx cannot name "any of
//! our two databases" without a dozen `Encode`/`Decode`/`Executor` bounds on
//! every function, and the SQL stays a literal the backend can `concat!`.
//! Both dialects take positional `$N` parameters (sqlx maps `$N` to the N-th
//! bound value on SQLite too).
//!
//! Neither backend imports the other: anything they share lives here or in
//! the backend-neutral modules beside it (`rows`, `batch`, `text`). Dialect
//! work (connecting, migrations, claiming due mailboxes, full-text search,
//! opening a write transaction) lives in the backend modules, never here.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::StoreError;
use super::model::Lease;
use super::rows::decode_err;
use crate::domain::MailboxAddress;

mod batches;
mod budget;
mod groups;
mod housekeeping;
mod leases;
mod messages;
mod oauth;
mod push;
mod quota;
mod runs;
mod subscriptions;
mod watches;

pub(crate) use batches::batch_statements;
pub(crate) use budget::budget_statements;
pub(crate) use groups::{group_columns, group_statements};
pub(crate) use housekeeping::housekeeping_statements;
pub(crate) use leases::{lease_statements, sync_state_columns};
pub(crate) use messages::message_statements;
pub(crate) use oauth::oauth_statements;
pub(crate) use push::push_statements;
pub(crate) use quota::quota_statements;
pub(crate) use runs::run_statements;
pub(crate) use subscriptions::{subscription_columns, subscription_statements};
pub(crate) use watches::watch_statements;

/// Timestamps are kept at microsecond precision (PostgreSQL's), so a value
/// read back equals the value written on both backends.
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

/// The current time at microsecond precision.
pub(crate) fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

/// `t + d` at microsecond precision, saturating far in the future.
pub(crate) fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let d = TimeDelta::from_std(d).unwrap_or(TimeDelta::days(3650));
    micros(t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC))
}

/// One `subscription_events` row to insert, in the same transaction as the
/// status change, consent or disconnect it records.
pub(crate) struct NewEvent<'a> {
    pub(crate) mailbox: &'a str,
    pub(crate) at: DateTime<Utc>,
    pub(crate) actor: &'a str,
    /// Recorded verbatim, e.g. "approve".
    pub(crate) action: &'a str,
    pub(crate) old_status: Option<&'a str>,
    pub(crate) new_status: &'a str,
    pub(crate) reason: Option<&'a str>,
}

/// Embedded migrations not yet applied.
pub(crate) fn pending(migrator: &sqlx::migrate::Migrator, applied: &HashSet<i64>) -> usize {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .count()
}

/// The leases a claim produced, from its `(mailbox, lease_epoch)` rows,
/// ordered by mailbox.
pub(crate) fn claimed_leases(
    rows: Vec<(String, i64)>,
    owner: &str,
    expires_at: DateTime<Utc>,
) -> Result<Vec<Lease>, StoreError> {
    let mut out = rows
        .into_iter()
        .map(|(mailbox, epoch)| {
            Ok(Lease {
                mailbox: MailboxAddress::parse(&mailbox).map_err(decode_err)?,
                owner: owner.to_owned(),
                epoch,
                expires_at,
                auth_mode: None,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
    Ok(out)
}
