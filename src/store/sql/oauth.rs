//! A mailbox owner's OAuth consent (`oauth_tokens`): storing it with its
//! subscription change, reading it, re-sealing it, and disconnecting.
//!
//! Only sealed refresh tokens pass through here, never one in clear.
//! Expanded once per backend by `oauth_statements!`; it must not hold
//! dialect SQL.

/// The OAuth consent statements for one backend: `$store` is the backend's
/// store type, `$db` its sqlx database.
macro_rules! oauth_statements {
    (
        $store:ident,
        $db:ty
    ) => {
        const _: () = {
            use $crate::domain::{MailboxAddress, Operator};
            use $crate::store::StoreError;
            use $crate::store::model::{OAuthConsent, OAuthToken, Subscription};
            use $crate::store::rows::{OAuthTokenRow, SubscriptionRow, convert};
            use $crate::store::sql::{NewEvent, now, subscription_columns};
            use $crate::store::text::{clean, clean_opt};

            impl $store {
                pub(crate) async fn record_oauth_consent(
                    &self,
                    c: &OAuthConsent,
                ) -> Result<Subscription, StoreError> {
                    let now = now();
                    let mailbox = c.mailbox.as_str();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let current: Option<(String,)> =
                        sqlx::query_as::<$db, (String,)>("SELECT status FROM subscriptions WHERE mailbox = $1")
                            .bind(mailbox)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let old = current.map(|(st,)| st);
                    match old.as_deref() {
                        // The consent is the request: an operator must still approve it.
                        None | Some("removed") => {
                            sqlx::query::<$db>(
                                "INSERT INTO subscriptions (mailbox, status, label_filter, requested_by, \
                                 requested_at, auth_mode, created_at, updated_at) \
                                 VALUES ($1, 'pending', '[]', $2, $3, 'oauth', $3, $3) \
                                 ON CONFLICT (mailbox) DO UPDATE SET status = 'pending', label_filter = '[]', \
                                 requested_by = $2, requested_at = $3, approved_by = NULL, approved_at = NULL, \
                                 status_reason = NULL, auth_mode = 'oauth', updated_at = $3",
                            )
                            .bind(mailbox)
                            .bind(c.actor.as_str())
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            Self::insert_event(&mut tx, NewEvent {
                                mailbox,
                                at: now,
                                actor: c.actor.as_str(),
                                action: "add",
                                old_status: old.as_deref(),
                                new_status: "pending",
                                reason: Some("requested by the mailbox owner's OAuth consent"),
                            })
                            .await?;
                        }
                        Some(_) => {
                            sqlx::query::<$db>(
                                "UPDATE subscriptions SET auth_mode = 'oauth', updated_at = $2 WHERE mailbox = $1",
                            )
                            .bind(mailbox)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                    sqlx::query::<$db>(
                        "INSERT INTO oauth_tokens (mailbox, refresh_token_ciphertext, key_id, scopes, \
                         google_subject, consented_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                         ON CONFLICT (mailbox) DO UPDATE SET refresh_token_ciphertext = $2, key_id = $3, \
                         scopes = $4, google_subject = $5, consented_at = $6, updated_at = $6",
                    )
                    .bind(mailbox)
                    .bind(&c.refresh_token_ciphertext)
                    .bind(&c.key_id)
                    .bind(clean(&c.scopes))
                    .bind(clean_opt(c.google_subject.as_deref()))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    // A mailbox waiting after a revoked consent is retried now.
                    sqlx::query::<$db>(
                        "UPDATE sync_state SET next_poll_at = $2, consecutive_failures = 0 \
                         WHERE mailbox = $1 AND phase = 'auth_failed'",
                    )
                    .bind(mailbox)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    let row = sqlx::query_as::<$db, SubscriptionRow>(concat!(
                        "SELECT ",
                        subscription_columns!(),
                        " FROM subscriptions WHERE mailbox = $1"
                    ))
                    .bind(mailbox)
                    .fetch_one(&mut *tx)
                    .await?;
                    Self::insert_event(&mut tx, NewEvent {
                        mailbox,
                        at: now,
                        actor: c.actor.as_str(),
                        action: "consent",
                        old_status: Some(&row.status),
                        new_status: &row.status,
                        reason: Some(&format!("OAuth consent for {}", c.scopes)),
                    })
                    .await?;
                    tx.commit().await?;
                    row.try_into()
                }

                pub(crate) async fn oauth_token(
                    &self,
                    m: &MailboxAddress,
                ) -> Result<Option<OAuthToken>, StoreError> {
                    sqlx::query_as::<$db, OAuthTokenRow>(
                        "SELECT mailbox, refresh_token_ciphertext, key_id, scopes, google_subject, \
                         consented_at, updated_at FROM oauth_tokens WHERE mailbox = $1",
                    )
                    .bind(m.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .map(OAuthToken::try_from)
                    .transpose()
                }

                pub(crate) async fn list_oauth_tokens(&self) -> Result<Vec<OAuthToken>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, OAuthTokenRow>(
                            "SELECT mailbox, refresh_token_ciphertext, key_id, scopes, google_subject, \
                             consented_at, updated_at FROM oauth_tokens ORDER BY mailbox",
                        )
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }

                pub(crate) async fn replace_oauth_ciphertext(
                    &self,
                    m: &MailboxAddress,
                    old_ciphertext: &str,
                    new_ciphertext: &str,
                    key_id: &str,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query::<$db>(
                        "UPDATE oauth_tokens SET refresh_token_ciphertext = $3, key_id = $4, updated_at = $5 \
                         WHERE mailbox = $1 AND refresh_token_ciphertext = $2",
                    )
                    .bind(m.as_str())
                    .bind(old_ciphertext)
                    .bind(new_ciphertext)
                    .bind(key_id)
                    .bind(now())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    Ok(done == 1)
                }

                pub(crate) async fn disconnect_oauth(
                    &self,
                    m: &MailboxAddress,
                    actor: &Operator,
                    reason: &str,
                ) -> Result<Subscription, StoreError> {
                    let now = now();
                    let mailbox = m.as_str();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let current: Option<(String,)> =
                        sqlx::query_as::<$db, (String,)>("SELECT status FROM subscriptions WHERE mailbox = $1")
                            .bind(mailbox)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some((old,)) = current else {
                        return Err(StoreError::NotFound(format!("no subscription for {mailbox}")));
                    };
                    sqlx::query::<$db>("DELETE FROM oauth_tokens WHERE mailbox = $1")
                        .bind(mailbox)
                        .execute(&mut *tx)
                        .await?;
                    // Pending stays pending: pausing it would let `resume` skip approval.
                    let new = match old.as_str() {
                        "active" | "suspended" => "paused",
                        other => other,
                    };
                    let row = sqlx::query_as::<$db, SubscriptionRow>(concat!(
                        "UPDATE subscriptions SET status = $2, status_reason = $3, updated_at = $4 \
                         WHERE mailbox = $1 RETURNING ",
                        subscription_columns!()
                    ))
                    .bind(mailbox)
                    .bind(new)
                    .bind(clean(reason))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    Self::insert_event(&mut tx, NewEvent {
                        mailbox,
                        at: now,
                        actor: actor.as_str(),
                        action: "disconnect",
                        old_status: Some(&old),
                        new_status: new,
                        reason: Some(reason),
                    })
                    .await?;
                    tx.commit().await?;
                    row.try_into()
                }
            }
        };
    };
}

pub(crate) use oauth_statements;
