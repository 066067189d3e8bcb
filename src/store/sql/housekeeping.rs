//! Deleting what is no longer wanted: a purged mailbox's data, old run rows
//! and quota windows; and the analyst queries the schema-docs test runs.
//!
//! Mail and its change log are never pruned by age. Expanded once per
//! backend by `housekeeping_statements!`.

/// The housekeeping statements for one backend: `$store` is the backend's
/// store type, `$db` its sqlx database.
macro_rules! housekeeping_statements {
    (
        $store:ident,
        $db:ty
    ) => {
        const _: () = {
            use chrono::{DateTime, Utc};
            use $crate::domain::MailboxAddress;
            use $crate::store::StoreError;
            use $crate::store::model::{Pruned, PurgeCounts};
            use $crate::store::sql::micros;

            impl $store {
                pub(crate) async fn purge_mailbox(
                    &self,
                    m: &MailboxAddress,
                ) -> Result<PurgeCounts, StoreError> {
                    let (_turn, mut tx) = self.begin_write().await?;
                    let mut run = async |sql: &'static str| -> Result<u64, StoreError> {
                        Ok(sqlx::query::<$db>(sql)
                            .bind(m.as_str())
                            .execute(&mut *tx)
                            .await?
                            .rows_affected())
                    };
                    let counts = PurgeCounts {
                        message_addresses: run("DELETE FROM message_addresses WHERE mailbox = $1")
                            .await?,
                        message_labels: run("DELETE FROM message_labels WHERE mailbox = $1")
                            .await?,
                        attachments: run("DELETE FROM attachments WHERE mailbox = $1").await?,
                        messages: run("DELETE FROM messages WHERE mailbox = $1").await?,
                        labels: run("DELETE FROM labels WHERE mailbox = $1").await?,
                        message_changes: run("DELETE FROM message_changes WHERE mailbox = $1")
                            .await?,
                        sync_runs: run("DELETE FROM sync_runs WHERE mailbox = $1").await?,
                        sync_state: run("DELETE FROM sync_state WHERE mailbox = $1").await?,
                    };
                    tx.commit().await?;
                    Ok(counts)
                }

                pub(crate) async fn prune_history(
                    &self,
                    runs_before: Option<DateTime<Utc>>,
                    quota_before: DateTime<Utc>,
                    batch: i64,
                ) -> Result<Pruned, StoreError> {
                    let mut pruned = Pruned::default();
                    if let Some(before) = runs_before {
                        // Oldest first by id (ids follow time), a batch per
                        // statement: short transactions beside the sync's, and
                        // the scan stops at the first batch.
                        loop {
                            let done = sqlx::query::<$db>(
                                "DELETE FROM sync_runs WHERE id IN (SELECT id FROM sync_runs \
                                 WHERE started_at < $1 ORDER BY id LIMIT $2)",
                            )
                            .bind(micros(before))
                            .bind(batch)
                            .execute(&self.pool)
                            .await?;
                            pruned.sync_runs += done.rows_affected();
                            if done.rows_affected() < batch as u64 {
                                break;
                            }
                        }
                    }
                    let done =
                        sqlx::query::<$db>("DELETE FROM quota_usage WHERE window_start < $1")
                            .bind(micros(quota_before))
                            .execute(&self.pool)
                            .await?;
                    pruned.quota_windows = done.rows_affected();
                    Ok(pruned)
                }

                pub(crate) async fn count_query_rows(
                    &self,
                    sql: &str,
                ) -> Result<usize, StoreError> {
                    let rows = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql.to_owned()))
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(rows.len())
                }

                pub(crate) async fn query_first_column(
                    &self,
                    sql: &str,
                ) -> Result<Vec<String>, StoreError> {
                    use sqlx::Row as _;
                    let rows = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql.to_owned()))
                        .fetch_all(&self.pool)
                        .await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for r in &rows {
                        let v = if let Ok(v) = r.try_get::<Option<String>, _>(0) {
                            v.unwrap_or_default()
                        } else if let Ok(v) = r.try_get::<Option<i64>, _>(0) {
                            v.map(|v| v.to_string()).unwrap_or_default()
                        } else if let Ok(v) = r.try_get::<Option<f64>, _>(0) {
                            v.map(|v| v.to_string()).unwrap_or_default()
                        } else {
                            r.try_get::<Option<DateTime<Utc>>, _>(0)?
                                .map(|v| v.to_rfc3339())
                                .unwrap_or_default()
                        };
                        out.push(v);
                    }
                    Ok(out)
                }
            }
        };
    };
}

pub(crate) use housekeeping_statements;
