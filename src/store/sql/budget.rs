//! The project's daily quota (`quota_daily`), and what `status` shows of a
//! backfill: its progress and why it waits (`sync_state.full_sync_*`,
//! `sync_state.quota_wait_*`).
//!
//! Expanded once per backend by `budget_statements!`. The progress and wait
//! writes are fenced by the lease alone (they are display state, not a
//! checkpoint: no row they write vouches for data).

/// The daily-quota and backfill-progress statements for one backend.
macro_rules! budget_statements {
    (
        $store:ident,
        $db:ty
    ) => {
        const _: () = {
            use chrono::{DateTime, Utc};
            use $crate::store::model::{DailyQuotaUsage, FullSyncProgress, Lease};
            use $crate::store::StoreError;
            use $crate::store::sql::{micros, now};
            use $crate::store::text::clean;

            impl $store {
                pub(crate) async fn reserve_daily_quota(
                    &self,
                    day: &str,
                    units: i64,
                    limit: i64,
                    backfill: bool,
                ) -> Result<bool, StoreError> {
                    let (_turn, mut tx) = self.begin_write().await?;
                    // One statement: the insert happens only within the
                    // limit, the increment only while the new total stays
                    // within it, so concurrent replicas never overshoot.
                    let done = sqlx::query::<$db>(
                        "INSERT INTO quota_daily (day, units, backfill_units, updated_at) \
                         SELECT $1, $2, $3, $5 WHERE $2 <= $4 \
                         ON CONFLICT (day) DO UPDATE \
                         SET units = quota_daily.units + excluded.units, \
                         backfill_units = quota_daily.backfill_units + excluded.backfill_units, \
                         updated_at = excluded.updated_at \
                         WHERE quota_daily.units + excluded.units <= $4",
                    )
                    .bind(clean(day))
                    .bind(units)
                    .bind(if backfill { units } else { 0 })
                    .bind(limit)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(done.rows_affected() == 1)
                }

                pub(crate) async fn daily_quota_usage(
                    &self,
                    day: &str,
                ) -> Result<DailyQuotaUsage, StoreError> {
                    let row: Option<(i64, i64)> = sqlx::query_as::<$db, (i64, i64)>(
                        "SELECT units, backfill_units FROM quota_daily WHERE day = $1",
                    )
                    .bind(clean(day))
                    .fetch_optional(&self.pool)
                    .await?;
                    let (units, backfill_units) = row.unwrap_or((0, 0));
                    Ok(DailyQuotaUsage {
                        units,
                        backfill_units,
                    })
                }

                pub(crate) async fn record_full_sync_progress(
                    &self,
                    l: &Lease,
                    p: Option<&FullSyncProgress>,
                ) -> Result<(), StoreError> {
                    let at = now();
                    let (_turn, mut tx) = self.begin_write().await?;
                    // Progress moving means the backfill is not waiting.
                    let done = sqlx::query::<$db>(
                        "UPDATE sync_state SET full_sync_started_at = $5, full_sync_listed = $6, \
                         full_sync_fetched = $7, full_sync_estimated_total = $8, \
                         quota_wait_until = NULL, quota_wait_reason = NULL, updated_at = $4 \
                         WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                         AND lease_expires_at > $4",
                    )
                    .bind(l.mailbox.as_str())
                    .bind(&l.owner)
                    .bind(l.epoch)
                    .bind(at)
                    .bind(p.map(|p| micros(p.started_at)))
                    .bind(p.map_or(0, |p| p.listed))
                    .bind(p.map_or(0, |p| p.fetched))
                    .bind(p.map_or(0, |p| p.estimated_total))
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::LeaseLost {
                            mailbox: l.mailbox.to_string(),
                        });
                    }
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn full_sync_progress(
                    &self,
                    m: &$crate::domain::MailboxAddress,
                ) -> Result<Option<FullSyncProgress>, StoreError> {
                    let row: Option<(Option<DateTime<Utc>>, i64, i64, i64)> =
                        sqlx::query_as::<$db, (Option<DateTime<Utc>>, i64, i64, i64)>(
                            "SELECT full_sync_started_at, full_sync_listed, full_sync_fetched, \
                             full_sync_estimated_total FROM sync_state WHERE mailbox = $1",
                        )
                        .bind(m.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    Ok(row.and_then(|(started, listed, fetched, total)| {
                        started.map(|started_at| FullSyncProgress {
                            started_at,
                            listed,
                            fetched,
                            estimated_total: total,
                        })
                    }))
                }

                /// Schedules a paced backfill at `until` whatever was notified:
                /// the day's budget, not news, decides when it resumes, and the
                /// history a backfill has not replayed yet is read when it
                /// completes (the end-of-pass rule of `release_lease` applies to
                /// phase `incremental` only).
                pub(crate) async fn record_quota_wait(
                    &self,
                    l: &Lease,
                    until: DateTime<Utc>,
                    reason: &str,
                    run: &$crate::store::model::SyncRunRow,
                ) -> Result<(), StoreError> {
                    let at = now();
                    let (_turn, mut tx) = self.begin_write().await?;
                    Self::fence_lease(&mut tx, l, at).await?;
                    sqlx::query::<$db>(
                        "UPDATE sync_state SET quota_wait_until = $2, quota_wait_reason = $3, \
                         next_poll_at = $2 WHERE mailbox = $1",
                    )
                    .bind(l.mailbox.as_str())
                    .bind(micros(until))
                    .bind(clean(reason))
                    .execute(&mut *tx)
                    .await?;
                    Self::insert_run(&mut tx, run).await?;
                    tx.commit().await?;
                    Ok(())
                }
            }
        };
    };
}

pub(crate) use budget_statements;
