//! Reading stored messages: which ids are known, the live set, the change
//! log, the newest and the not-yet-fetched messages, and counts.
//!
//! Read-only. Full-text search is not here: it is dialect SQL (FTS5 versus
//! `tsvector`) and lives in each backend. Expanded once per backend by
//! `message_statements!`.

/// The message reads for one backend: `$store` is the backend's store type,
/// `$db` its sqlx database, and `ids` the membership fragment described on
/// `batch_statements!`.
macro_rules! message_statements {
    (
        $store:ident,
        $db:ty,
        ids($io:literal, $ic:literal)
    ) => {
        const _: () = {
            use std::collections::HashSet;
            use $crate::domain::{GmailMessageId, MailboxAddress};
            use $crate::store::StoreError;
            use $crate::store::model::{LiveMessage, MessageChange, SearchHit};
            use $crate::store::rows::{ChangeRowDb, HitRow, LiveRow, convert, decode_err};
            use $crate::store::text::json_strings;

            impl $store {
                pub(crate) async fn known_message_ids(
                    &self,
                    m: &MailboxAddress,
                    ids: &[GmailMessageId],
                ) -> Result<HashSet<GmailMessageId>, StoreError> {
                    if ids.is_empty() {
                        return Ok(HashSet::new());
                    }
                    let rows: Vec<(String,)> = sqlx::query_as::<$db, (String,)>(concat!(
                        "SELECT gmail_id FROM messages WHERE mailbox = $1 AND deleted_at IS NULL \
                         AND gmail_id", $io, "$2", $ic
                    ))
                    .bind(m.as_str())
                    .bind(json_strings(ids.iter().map(GmailMessageId::as_str)))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.into_iter()
                        .map(|(id,)| GmailMessageId::parse(&id).map_err(decode_err))
                        .collect()
                }

                pub(crate) async fn unseen_message_ids(
                    &self,
                    m: &MailboxAddress,
                    generation: i64,
                ) -> Result<Vec<GmailMessageId>, StoreError> {
                    let rows: Vec<(String,)> = sqlx::query_as::<$db, (String,)>(
                        "SELECT gmail_id FROM messages WHERE mailbox = $1 AND deleted_at IS NULL \
                         AND sync_generation < $2 ORDER BY gmail_id",
                    )
                    .bind(m.as_str())
                    .bind(generation)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.into_iter()
                        .map(|(id,)| GmailMessageId::parse(&id).map_err(decode_err))
                        .collect()
                }

                pub(crate) async fn live_messages(
                    &self,
                    m: &MailboxAddress,
                ) -> Result<Vec<LiveMessage>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, LiveRow>(
                            "SELECT gmail_id, thread_id, label_ids FROM messages \
                             WHERE mailbox = $1 AND deleted_at IS NULL ORDER BY gmail_id",
                        )
                        .bind(m.as_str())
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }

                pub(crate) async fn message_changes(
                    &self,
                    m: &MailboxAddress,
                ) -> Result<Vec<MessageChange>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, ChangeRowDb>(
                            "SELECT id, mailbox, gmail_id, change, label_id, history_id, observed_at \
                             FROM message_changes WHERE mailbox = $1 ORDER BY id",
                        )
                        .bind(m.as_str())
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }

                pub(crate) async fn recent_messages(
                    &self,
                    mailbox: &MailboxAddress,
                    limit: u32,
                ) -> Result<Vec<SearchHit>, StoreError> {
                    self.hits(
                        "SELECT mailbox, gmail_id, subject FROM messages \
                         WHERE mailbox = $1 AND deleted_at IS NULL \
                         ORDER BY internal_date DESC, gmail_id LIMIT $2",
                        mailbox,
                        limit,
                    )
                    .await
                }

                pub(crate) async fn unfetched_messages(
                    &self,
                    mailbox: &MailboxAddress,
                    limit: u32,
                ) -> Result<Vec<SearchHit>, StoreError> {
                    self.hits(
                        "SELECT mailbox, gmail_id, subject FROM messages \
                         WHERE mailbox = $1 AND deleted_at IS NULL AND parse_error LIKE 'not fetched:%' \
                         ORDER BY gmail_id LIMIT $2",
                        mailbox,
                        limit,
                    )
                    .await
                }

                async fn hits(
                    &self,
                    sql: &'static str,
                    mailbox: &MailboxAddress,
                    limit: u32,
                ) -> Result<Vec<SearchHit>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, HitRow>(sql)
                            .bind(mailbox.as_str())
                            .bind(i64::from(limit))
                            .fetch_all(&self.pool)
                            .await?,
                    )
                }

                pub(crate) async fn count_messages(&self, m: &MailboxAddress) -> Result<i64, StoreError> {
                    let (n,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                        "SELECT COUNT(*) FROM messages WHERE mailbox = $1 AND deleted_at IS NULL",
                    )
                    .bind(m.as_str())
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(n)
                }
            }
        };
    };
}

pub(crate) use message_statements;
