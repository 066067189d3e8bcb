//! What a sync pass records about itself (`sync_runs`), and the fenced
//! failure record that may carry a run row.
//!
//! A run row is written only inside a fenced transaction: a replica that
//! lost its lease writes none. The run row of a pass stopped by a decision
//! (`record_stop`) is fenced by the lease alone: the subscription check is
//! what refused the pass, and the row records that refusal. Expanded once per backend by
//! `run_statements!`.

/// The run statements for one backend: `$store` is the backend's store
/// type, `$db` its sqlx database.
macro_rules! run_statements {
    (
        $store:ident,
        $db:ty
    ) => {
        const _: () = {
            use $crate::domain::MailboxAddress;
            use $crate::store::StoreError;
            use $crate::store::model::{FailureRecord, Lease, SyncRunRow};
            use $crate::store::rows::{RunRow, convert};
            use $crate::store::sql::{micros, now};
            use $crate::store::text::{clean, clean_opt};

            impl $store {
                async fn insert_run(
                    tx: &mut sqlx::Transaction<'static, $db>,
                    r: &SyncRunRow,
                ) -> Result<(), StoreError> {
                    sqlx::query::<$db>(
                        "INSERT INTO sync_runs (mailbox, kind, replica, started_at, finished_at, \
                         added, updated, deleted, label_changes, api_calls, quota_units, outcome, error) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    )
                    .bind(r.mailbox.as_str())
                    .bind(r.kind.as_str())
                    .bind(clean(&r.replica))
                    .bind(micros(r.started_at))
                    .bind(micros(r.finished_at))
                    .bind(r.counts.added as i64)
                    .bind(r.counts.updated as i64)
                    .bind(r.counts.deleted as i64)
                    .bind(r.counts.label_changes as i64)
                    .bind(r.counts.api_calls as i64)
                    .bind(r.counts.quota_units as i64)
                    .bind(r.outcome.as_str())
                    .bind(clean_opt(r.error.as_deref()))
                    .execute(&mut **tx)
                    .await?;
                    Ok(())
                }

                /// Writes the failure's backoff as `next_poll_at` as it is: a
                /// notification never shortens a failure backoff (the end-of-pass
                /// rule of `release_lease` skips a mailbox with a failure streak,
                /// and `mark_notified` makes none due), or a failing mailbox
                /// would be retried at every change instead of backing off.
                pub(crate) async fn record_failure(
                    &self,
                    l: &Lease,
                    f: &FailureRecord,
                ) -> Result<(), StoreError> {
                    let now = now();
                    let (_turn, mut tx) = self.begin_write().await?;
                    Self::fence(&mut tx, l, now).await?;
                    let done = sqlx::query::<$db>(
                        "UPDATE sync_state SET phase = $5, last_error = $6, \
                         consecutive_failures = consecutive_failures + 1, next_poll_at = $7, \
                         updated_at = $4 \
                         WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                         AND lease_expires_at > $4",
                    )
                    .bind(l.mailbox.as_str())
                    .bind(&l.owner)
                    .bind(l.epoch)
                    .bind(now)
                    .bind(f.phase.as_str())
                    .bind(clean(&f.error))
                    .bind(micros(f.next_poll_at))
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::LeaseLost { mailbox: l.mailbox.to_string() });
                    }
                    if let Some(r) = &f.run {
                        Self::insert_run(&mut tx, r).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn record_stop(
                    &self,
                    l: &Lease,
                    r: &SyncRunRow,
                ) -> Result<(), StoreError> {
                    let now = now();
                    let (_turn, mut tx) = self.begin_write().await?;
                    Self::fence_lease(&mut tx, l, now).await?;
                    Self::insert_run(&mut tx, r).await?;
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn sync_runs(
                    &self,
                    m: &MailboxAddress,
                ) -> Result<Vec<SyncRunRow>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, RunRow>(
                            "SELECT mailbox, kind, replica, started_at, finished_at, added, updated, \
                             deleted, label_changes, api_calls, quota_units, outcome, error \
                             FROM sync_runs WHERE mailbox = $1 ORDER BY id",
                        )
                        .bind(m.as_str())
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }
            }
        };
    };
}

pub(crate) use run_statements;
