//! The shared API quota (`quota_usage`): one atomic reservation per call.
//!
//! Expanded once per backend by `quota_statements!`.

/// The quota statement for one backend: `$store` is the backend's store
/// type, `$db` its sqlx database.
macro_rules! quota_statements {
    (
        $store:ident,
        $db:ty
    ) => {
        const _: () = {
            use chrono::{DateTime, Utc};
            use $crate::store::StoreError;
            use $crate::store::sql::micros;
            use $crate::store::text::clean;

            impl $store {
                pub(crate) async fn reserve_quota(
                    &self,
                    bucket: &str,
                    window_start: DateTime<Utc>,
                    units: i64,
                    limit: i64,
                ) -> Result<bool, StoreError> {
                    // One statement, so it is atomic on both backends: the insert
                    // happens only within the limit, the increment only while
                    // the new total stays within it.
                    let done = sqlx::query::<$db>(
                        "INSERT INTO quota_usage (bucket, window_start, units) \
                         SELECT $1, $2, $3 WHERE $3 <= $4 \
                         ON CONFLICT (bucket, window_start) DO UPDATE \
                         SET units = quota_usage.units + excluded.units \
                         WHERE quota_usage.units + excluded.units <= $4",
                    )
                    .bind(clean(bucket))
                    .bind(micros(window_start))
                    .bind(units)
                    .bind(limit)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }
            }
        };
    };
}

pub(crate) use quota_statements;
