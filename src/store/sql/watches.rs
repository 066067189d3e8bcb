//! Gmail push watches (`sync_state.watch_*`): recording a watch the pass
//! made or failed to make, and the stops that follow a subscription out of
//! `active`.
//!
//! None of these is a checkpoint. The pass's two records are fenced by the
//! lease alone, like `record_stop`: a watch moves no `history_id` and
//! writes no mail, and a pass stopped by a decision still holds what Google
//! answered. The stops are not fenced by a lease at all (the mailbox is not
//! active, so nobody holds one for a pass): a compare-and-set on the stored
//! expiry, which also requires the subscription still not active, hands
//! each stop to exactly one replica. Expanded once per backend by
//! `watch_statements!`.

/// The watch statements for one backend: `$store` is the backend's store
/// type, `$db` its sqlx database.
macro_rules! watch_statements {
    (
        $store:ident,
        $db:ty
    ) => {
        const _: () = {
            use chrono::{DateTime, Utc};
            use $crate::domain::{AuthMode, MailboxAddress, SubscriptionStatus};
            use $crate::store::StoreError;
            use $crate::store::model::{Lease, WatchToStop};
            use $crate::store::rows::decode_err;
            use $crate::store::sql::micros;
            use $crate::store::text::{clean, json_strings};

            impl $store {
                pub(crate) async fn record_watch(
                    &self,
                    l: &Lease,
                    expires_at: DateTime<Utc>,
                    label_scope: &[String],
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let now = micros(now);
                    let done = sqlx::query::<$db>(
                        "UPDATE sync_state SET watch_expires_at = $4, watch_renewed_at = $5, \
                         watch_label_scope = $6, watch_error = NULL, watch_failed_at = NULL, \
                         updated_at = $5 \
                         WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                         AND lease_expires_at > $5",
                    )
                    .bind(l.mailbox.as_str())
                    .bind(&l.owner)
                    .bind(l.epoch)
                    .bind(micros(expires_at))
                    .bind(now)
                    .bind(json_strings(label_scope))
                    .execute(&self.pool)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::LeaseLost { mailbox: l.mailbox.to_string() });
                    }
                    Ok(())
                }

                pub(crate) async fn record_watch_failure(
                    &self,
                    l: &Lease,
                    error: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let now = micros(now);
                    let done = sqlx::query::<$db>(
                        "UPDATE sync_state SET watch_error = $4, watch_failed_at = $5, updated_at = $5 \
                         WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                         AND lease_expires_at > $5",
                    )
                    .bind(l.mailbox.as_str())
                    .bind(&l.owner)
                    .bind(l.epoch)
                    .bind(clean(error))
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::LeaseLost { mailbox: l.mailbox.to_string() });
                    }
                    Ok(())
                }

                pub(crate) async fn watches_to_stop(
                    &self,
                    now: DateTime<Utc>,
                    limit: i64,
                ) -> Result<Vec<WatchToStop>, StoreError> {
                    // Driven from the subscriptions not active (their status
                    // index), each joined to its one sync_state row: the
                    // active fleet is never read.
                    let rows: Vec<(String, String, String, DateTime<Utc>)> =
                        sqlx::query_as::<$db, (String, String, String, DateTime<Utc>)>(
                            "SELECT s.mailbox, s.auth_mode, s.status, t.watch_expires_at \
                             FROM subscriptions s JOIN sync_state t ON t.mailbox = s.mailbox \
                             WHERE s.status IN ('pending', 'paused', 'suspended', 'removed') \
                             AND t.watch_expires_at > $1 \
                             ORDER BY s.mailbox LIMIT $2",
                        )
                        .bind(micros(now))
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.into_iter()
                        .map(|(m, mode, status, expires_at)| {
                            Ok(WatchToStop {
                                mailbox: MailboxAddress::parse(&m).map_err(decode_err)?,
                                auth_mode: mode.parse::<AuthMode>().map_err(decode_err)?,
                                status: status.parse::<SubscriptionStatus>().map_err(decode_err)?,
                                expires_at,
                            })
                        })
                        .collect()
                }

                pub(crate) async fn take_watch_to_stop(
                    &self,
                    w: &WatchToStop,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query::<$db>(
                        "UPDATE sync_state SET watch_expires_at = NULL, watch_renewed_at = NULL, \
                         watch_label_scope = NULL, watch_error = NULL, watch_failed_at = NULL, \
                         updated_at = $3 \
                         WHERE mailbox = $1 AND watch_expires_at = $2 \
                         AND NOT EXISTS (SELECT 1 FROM subscriptions s \
                             WHERE s.mailbox = sync_state.mailbox AND s.status = 'active')",
                    )
                    .bind(w.mailbox.as_str())
                    .bind(micros(w.expires_at))
                    .bind(micros(now))
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                pub(crate) async fn record_watch_stop_failure(
                    &self,
                    m: &MailboxAddress,
                    error: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let now = micros(now);
                    sqlx::query::<$db>(
                        "UPDATE sync_state SET watch_error = $2, watch_failed_at = $3, updated_at = $3 \
                         WHERE mailbox = $1 AND watch_expires_at IS NULL",
                    )
                    .bind(m.as_str())
                    .bind(clean(error))
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        };
    };
}

pub(crate) use watch_statements;
