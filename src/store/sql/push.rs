//! Gmail push notifications (`sync_state.notified_history_id`,
//! `sync_state.notified_at`): `Store::mark_notified`, what one pulled
//! notification changes, in one transaction.
//!
//! The end-of-pass half of the protocol (a pass that ends behind
//! `notified_history_id` leaves its mailbox due at once) lives in the
//! statements that end a pass: the final checkpoint in `batches.rs` and
//! `release_lease` in `leases.rs`. Expanded once per backend by
//! `push_statements!`.

/// The notification statements for one backend: `$store` is the backend's
/// store type, `$db` its sqlx database; `share_lock` and `row_lock` end the
/// reads of the subscription and of its `sync_state` row (`FOR SHARE` and
/// `FOR UPDATE` on PostgreSQL, so that a pause or a claim waits for the mark
/// or is seen by it; empty on SQLite, whose writers take turns).
macro_rules! push_statements {
    (
        $store:ident,
        $db:ty,
        share_lock($sl:literal),
        row_lock($rl:literal)
    ) => {
        const _: () = {
            use chrono::{DateTime, Utc};
            use $crate::domain::{HistoryId, MailboxAddress, SubscriptionStatus, SyncPhase};
            use $crate::store::StoreError;
            use $crate::store::model::NotifyOutcome;
            use $crate::store::sql::micros;

            impl $store {
                pub(crate) async fn mark_notified(
                    &self,
                    m: &MailboxAddress,
                    history_id: HistoryId,
                    now: DateTime<Utc>,
                ) -> Result<NotifyOutcome, StoreError> {
                    let now = micros(now);
                    let h = history_id.as_i64();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let status: Option<(String,)> = sqlx::query_as::<$db, (String,)>(concat!(
                        "SELECT status FROM subscriptions WHERE mailbox = $1",
                        $sl
                    ))
                    .bind(m.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    if status.is_none_or(|(s,)| s != SubscriptionStatus::Active.as_str()) {
                        // Unknown, pending, paused, suspended or removed:
                        // nothing is recorded, and nothing becomes due.
                        return Ok(NotifyOutcome::NotActive);
                    }
                    type Row = (String, Option<i64>, Option<String>, Option<DateTime<Utc>>, i64, Option<DateTime<Utc>>);
                    let row: Option<Row> = sqlx::query_as::<$db, Row>(concat!(
                        "SELECT phase, history_id, lease_owner, lease_expires_at, \
                         consecutive_failures, next_poll_at FROM sync_state WHERE mailbox = $1",
                        $rl
                    ))
                    .bind(m.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((phase, stored, owner, expires, failures, next)) = row else {
                        // An active subscription has its row from its
                        // activation on; should it be missing, it is created
                        // due (its first full sync reads everything anyway).
                        sqlx::query::<$db>(
                            "INSERT INTO sync_state (mailbox, phase, next_poll_at, updated_at, \
                             notified_history_id, notified_at) VALUES ($1, 'initial', $2, $2, $3, $2) \
                             ON CONFLICT (mailbox) DO NOTHING",
                        )
                        .bind(m.as_str())
                        .bind(now)
                        .bind(h)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        return Ok(NotifyOutcome::Recorded);
                    };
                    let leased = owner.is_some() && expires.is_some_and(|e| e > now);
                    let due = phase == SyncPhase::Incremental.as_str()
                        && !leased
                        && failures == 0
                        && stored.is_some_and(|s| s < h);
                    let next = if due {
                        Some(next.map_or(now, |n| n.min(now)))
                    } else {
                        next
                    };
                    sqlx::query::<$db>(
                        "UPDATE sync_state SET \
                         notified_history_id = CASE WHEN notified_history_id IS NULL \
                             OR notified_history_id < $2 THEN $2 ELSE notified_history_id END, \
                         notified_at = $3, next_poll_at = $4 WHERE mailbox = $1",
                    )
                    .bind(m.as_str())
                    .bind(h)
                    .bind(now)
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(if due {
                        NotifyOutcome::Due
                    } else {
                        NotifyOutcome::Recorded
                    })
                }
            }
        };
    };
}

pub(crate) use push_statements;
