//! Sync state and leases (`sync_state`): reading where a mailbox stands,
//! claiming one mailbox, renewing and releasing a lease, and the fencing
//! check every sync write begins with.
//!
//! Claiming *due* mailboxes is not here: it is dialect SQL (`FOR UPDATE
//! SKIP LOCKED` versus SQLite's single writer) and lives in each backend.
//! Expanded once per backend by `lease_statements!`.

/// The columns of `sync_state` in `SyncStateRow`'s order (a literal, for
/// `concat!`).
macro_rules! sync_state_columns {
    () => {
        "mailbox, phase, history_id, page_token, full_sync_history_id, full_sync_generation, \
         applied_label_scope, last_success_at, next_poll_at, consecutive_failures, last_error, lease_owner, \
         lease_epoch, lease_expires_at, updated_at, quiet_passes, last_quiet_at, \
         watch_expires_at, watch_renewed_at, watch_label_scope, watch_error, watch_failed_at, \
         notified_history_id, notified_at"
    };
}

pub(crate) use sync_state_columns;

/// The sync-state and lease statements for one backend: `$store` is the
/// backend's store type, `$db` its sqlx database; `share_lock` ends the
/// fence's read of the subscription (`FOR SHARE` on PostgreSQL, so a status
/// change waits for the batch's commit; empty on SQLite, whose writers take
/// turns).
macro_rules! lease_statements {
    (
        $store:ident,
        $db:ty,
        share_lock($lk:literal)
    ) => {
        const _: () = {
            use std::time::Duration;
            use chrono::{DateTime, Utc};
            use $crate::domain::{AuthMode, MailboxAddress, StopDecision, SubscriptionStatus};
            use $crate::store::StoreError;
            use $crate::store::model::{Lease, MailboxStatus, SyncState};
            use $crate::store::rows::{StatusRow, SyncStateRow, convert, decode_err};
            use $crate::store::sql::{micros, now, plus, sync_state_columns};

            impl $store {
                pub(crate) async fn sync_state(
                    &self,
                    m: &MailboxAddress,
                ) -> Result<Option<SyncState>, StoreError> {
                    sqlx::query_as::<$db, SyncStateRow>(concat!(
                        "SELECT ",
                        sync_state_columns!(),
                        " FROM sync_state WHERE mailbox = $1"
                    ))
                    .bind(m.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .map(SyncState::try_from)
                    .transpose()
                }

                pub(crate) async fn list_sync_states(&self) -> Result<Vec<SyncState>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, SyncStateRow>(concat!(
                            "SELECT ",
                            sync_state_columns!(),
                            " FROM sync_state ORDER BY mailbox"
                        ))
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }

                pub(crate) async fn mailbox_statuses(&self) -> Result<Vec<MailboxStatus>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, StatusRow>(
                            "SELECT s.mailbox, s.status, t.phase, t.history_id, t.last_success_at, \
                             t.next_poll_at, COALESCE(t.consecutive_failures, 0) AS consecutive_failures, \
                             t.last_error, t.lease_owner, t.lease_expires_at, \
                             t.full_sync_started_at, t.full_sync_listed, t.full_sync_fetched, \
                             t.full_sync_estimated_total, t.quota_wait_until, t.quota_wait_reason, \
                             COALESCE(t.quiet_passes, 0) AS quiet_passes, t.last_quiet_at, \
                             t.watch_expires_at, t.watch_error, t.watch_failed_at, \
                             (SELECT COUNT(*) FROM messages m \
                              WHERE m.mailbox = s.mailbox AND m.deleted_at IS NULL) AS messages \
                             FROM subscriptions s LEFT JOIN sync_state t ON t.mailbox = s.mailbox \
                             WHERE s.status <> 'removed' ORDER BY s.mailbox",
                        )
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }

                /// Keeps the schedule in step with a status change, inside the
                /// change's transaction: a subscription that becomes active gets
                /// its `sync_state` row (created if missing) and is due at once;
                /// one that stops being active is unscheduled (`next_poll_at`
                /// NULL), so the due query's index range never holds it.
                pub(crate) async fn reschedule(
                    tx: &mut sqlx::Transaction<'static, $db>,
                    mailbox: &str,
                    old: &str,
                    new: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let active = SubscriptionStatus::Active.as_str();
                    if new == active && old != active {
                        sqlx::query::<$db>(
                            "INSERT INTO sync_state (mailbox, phase, next_poll_at, updated_at) \
                             VALUES ($1, 'initial', $2, $2) \
                             ON CONFLICT (mailbox) DO UPDATE SET next_poll_at = $2",
                        )
                        .bind(mailbox)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                    } else if old == active && new != active {
                        sqlx::query::<$db>("UPDATE sync_state SET next_poll_at = NULL WHERE mailbox = $1")
                            .bind(mailbox)
                            .execute(&mut **tx)
                            .await?;
                    }
                    Ok(())
                }

                // -- leases -------------------------------------------------------

                pub(crate) async fn claim_mailbox(
                    &self,
                    m: &MailboxAddress,
                    owner: &str,
                    now: DateTime<Utc>,
                    lease_for: Duration,
                ) -> Result<Option<Lease>, StoreError> {
                    let now = micros(now);
                    let expires = plus(now, lease_for);
                    let (_turn, mut tx) = self.begin_write().await?;
                    sqlx::query::<$db>(
                        "INSERT INTO sync_state (mailbox, phase, next_poll_at, updated_at) \
                         SELECT mailbox, 'initial', $2, $2 FROM subscriptions \
                         WHERE mailbox = $1 AND status = 'active' \
                         ON CONFLICT (mailbox) DO NOTHING",
                    )
                    .bind(m.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    let claimed: Option<(i64,)> = sqlx::query_as::<$db, (i64,)>(
                        "UPDATE sync_state SET lease_owner = $2, lease_epoch = lease_epoch + 1, \
                         lease_expires_at = $3, updated_at = $4 \
                         WHERE mailbox = $1 \
                         AND EXISTS (SELECT 1 FROM subscriptions s \
                                     WHERE s.mailbox = sync_state.mailbox AND s.status = 'active') \
                         AND (lease_owner IS NULL OR lease_owner = $2 \
                              OR lease_expires_at IS NULL OR lease_expires_at <= $4) \
                         RETURNING lease_epoch",
                    )
                    .bind(m.as_str())
                    .bind(owner)
                    .bind(expires)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if claimed.is_none() {
                        let exists: Option<(String,)> = sqlx::query_as::<$db, (String,)>(
                            "SELECT mailbox FROM subscriptions WHERE mailbox = $1",
                        )
                        .bind(m.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                        if exists.is_none() {
                            return Err(StoreError::NotFound(format!("no subscription for {m}")));
                        }
                    }
                    tx.commit().await?;
                    Ok(claimed.map(|(epoch,)| Lease {
                        mailbox: m.clone(),
                        owner: owner.to_owned(),
                        epoch,
                        expires_at: expires,
                        auth_mode: None,
                    }))
                }

                pub(crate) async fn renew_lease(
                    &self,
                    l: &Lease,
                    now: DateTime<Utc>,
                    lease_for: Duration,
                ) -> Result<Lease, StoreError> {
                    let now = micros(now);
                    let expires = plus(now, lease_for);
                    let done = sqlx::query::<$db>(
                        "UPDATE sync_state SET lease_expires_at = $4, updated_at = $5 \
                         WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                         AND lease_expires_at > $5",
                    )
                    .bind(l.mailbox.as_str())
                    .bind(&l.owner)
                    .bind(l.epoch)
                    .bind(expires)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::LeaseLost { mailbox: l.mailbox.to_string() });
                    }
                    Ok(Lease { expires_at: expires, ..l.clone() })
                }

                /// Frees the lease. The end-of-pass rule of Gmail push: a
                /// mailbox left in phase `incremental` with no failure streak
                /// and a `history_id` behind `notified_history_id` is due now
                /// rather than at `next_poll_at` (a notification arrived while
                /// the pass ran). Never after a failure (its backoff stands,
                /// `consecutive_failures` > 0, as `mark_notified` refuses
                /// then too) nor for a paced backfill (phase `full_sync`: the
                /// day's budget, not news, decides when it resumes, and the
                /// history it has not replayed yet is read when it completes).
                pub(crate) async fn release_lease(
                    &self,
                    l: &Lease,
                    next_poll_at: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query::<$db>(
                        "UPDATE sync_state SET lease_owner = NULL, lease_expires_at = NULL, \
                         next_poll_at = CASE WHEN NOT EXISTS (SELECT 1 FROM subscriptions s \
                             WHERE s.mailbox = sync_state.mailbox AND s.status = 'active') THEN NULL \
                             WHEN phase = 'incremental' AND consecutive_failures = 0 \
                             AND notified_history_id > COALESCE(history_id, 0) AND $4 > $5 THEN $5 \
                             ELSE $4 END, \
                         updated_at = $5 \
                         WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3",
                    )
                    .bind(l.mailbox.as_str())
                    .bind(&l.owner)
                    .bind(l.epoch)
                    .bind(micros(next_poll_at))
                    .bind(now())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                /// The fencing check every sync write begins with: the
                /// subscription is still active (and in the lease's mode, if it
                /// names one), then [`Self::fence_lease`]. The subscription is
                /// read first, under a share lock on PostgreSQL: the same order
                /// (subscriptions, then sync_state) as a consent's transaction.
                async fn fence(
                    tx: &mut sqlx::Transaction<'static, $db>,
                    l: &Lease,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let row: Option<(String, String)> = sqlx::query_as::<$db, (String, String)>(
                        concat!(
                            "SELECT status, auth_mode FROM subscriptions WHERE mailbox = $1",
                            $lk
                        ),
                    )
                    .bind(l.mailbox.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
                    let standing = match row {
                        Some((status, mode)) => Some((
                            status.parse::<SubscriptionStatus>().map_err(decode_err)?,
                            mode.parse::<AuthMode>().map_err(decode_err)?,
                        )),
                        None => None,
                    };
                    if let Some(decision) = StopDecision::judge(standing, l.auth_mode) {
                        return Err(StoreError::NotActive {
                            mailbox: l.mailbox.to_string(),
                            decision,
                        });
                    }
                    Self::fence_lease(tx, l, now).await
                }

                /// The lease half of the fence: takes the `sync_state` row (a
                /// row lock on PostgreSQL) only when the lease is still ours
                /// and unexpired.
                async fn fence_lease(
                    tx: &mut sqlx::Transaction<'static, $db>,
                    l: &Lease,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let done = sqlx::query::<$db>(
                        "UPDATE sync_state SET updated_at = $4 \
                         WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                         AND lease_expires_at > $4",
                    )
                    .bind(l.mailbox.as_str())
                    .bind(&l.owner)
                    .bind(l.epoch)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::LeaseLost { mailbox: l.mailbox.to_string() });
                    }
                    Ok(())
                }
            }
        };
    };
}

pub(crate) use lease_statements;
