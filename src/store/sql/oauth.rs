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
            use $crate::domain::MailboxAddress;
            use $crate::store::StoreError;
            use $crate::store::model::{ConsentRemoval, ConsentWrite, OAuthConsent, OAuthToken, Subscription};
            use $crate::store::rows::{OAuthTokenRow, SubscriptionRow, convert};
            use $crate::store::sql::{NewEvent, now, subscription_columns};
            use $crate::store::text::{clean, clean_opt};

            impl $store {
                pub(crate) async fn record_oauth_consent(
                    &self,
                    c: &OAuthConsent,
                ) -> Result<ConsentWrite, StoreError> {
                    let now = now();
                    let mailbox = c.mailbox.as_str();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let current: Option<(String, String)> = sqlx::query_as::<$db, (String, String)>(
                        "SELECT status, auth_mode FROM subscriptions WHERE mailbox = $1",
                    )
                    .bind(mailbox)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let stored: Option<(Option<String>,)> = sqlx::query_as::<$db, (Option<String>,)>(
                        "SELECT google_subject FROM oauth_tokens WHERE mailbox = $1",
                    )
                    .bind(mailbox)
                    .fetch_optional(&mut *tx)
                    .await?;
                    // Another Google account with the same address replaces no
                    // stored consent: only an operator's `forget-consent` allows it.
                    if let (Some((Some(stored_subject),)), Some(new)) = (&stored, &c.google_subject)
                        && stored_subject != new
                    {
                        return Ok(ConsentWrite::OtherAccount {
                            stored_subject: stored_subject.clone(),
                        });
                    }
                    let old = current.as_ref().map(|(st, _)| st.clone());
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
                        // An approved (or pending) subscription keeps its status and
                        // its mode: switching the mode is an operator's `set-auth`.
                        Some(_) => {}
                    }
                    sqlx::query::<$db>(
                        "INSERT INTO oauth_tokens (mailbox, refresh_token_ciphertext, key_id, scopes, \
                         google_subject, consent_id, consented_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                         ON CONFLICT (mailbox) DO UPDATE SET refresh_token_ciphertext = $2, key_id = $3, \
                         scopes = $4, google_subject = $5, consent_id = $6, consented_at = $7, updated_at = $7",
                    )
                    .bind(mailbox)
                    .bind(&c.refresh_token_ciphertext)
                    .bind(&c.key_id)
                    .bind(clean(&c.scopes))
                    .bind(clean_opt(c.google_subject.as_deref()))
                    .bind(&c.consent_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    // An OAuth mailbox waiting after a revoked consent is retried now.
                    sqlx::query::<$db>(
                        "UPDATE sync_state SET next_poll_at = $2, consecutive_failures = 0 \
                         WHERE mailbox = $1 AND phase = 'auth_failed' AND EXISTS \
                         (SELECT 1 FROM subscriptions s WHERE s.mailbox = $1 AND s.auth_mode = 'oauth' \
                         AND s.status = 'active')",
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
                    let mut reason = format!("OAuth consent for {}", c.scopes);
                    if stored.is_some() {
                        reason.push_str("; replaces the earlier consent");
                    }
                    if row.auth_mode != "oauth" {
                        reason.push_str(
                            "; kept, not used: the mailbox is read under domain-wide delegation \
                             until an operator runs `subscriptions set-auth`",
                        );
                    }
                    Self::insert_event(&mut tx, NewEvent {
                        mailbox,
                        at: now,
                        actor: c.actor.as_str(),
                        action: "consent",
                        old_status: Some(&row.status),
                        new_status: &row.status,
                        reason: Some(&reason),
                    })
                    .await?;
                    tx.commit().await?;
                    Ok(ConsentWrite::Stored(Box::new(row.try_into()?)))
                }

                pub(crate) async fn oauth_token(
                    &self,
                    m: &MailboxAddress,
                ) -> Result<Option<OAuthToken>, StoreError> {
                    sqlx::query_as::<$db, OAuthTokenRow>(
                        "SELECT mailbox, refresh_token_ciphertext, key_id, scopes, google_subject, \
                         consent_id, consented_at, updated_at FROM oauth_tokens WHERE mailbox = $1",
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
                             consent_id, consented_at, updated_at FROM oauth_tokens ORDER BY mailbox",
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

                pub(crate) async fn remove_oauth_consent(
                    &self,
                    r: &ConsentRemoval,
                ) -> Result<Subscription, StoreError> {
                    let now = now();
                    let mailbox = r.mailbox.as_str();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let current: Option<(String,)> =
                        sqlx::query_as::<$db, (String,)>("SELECT status FROM subscriptions WHERE mailbox = $1")
                            .bind(mailbox)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some((old,)) = current else {
                        return Err(StoreError::NotFound(format!("no subscription for {mailbox}")));
                    };
                    let stored: Option<(String,)> = sqlx::query_as::<$db, (String,)>(
                        "SELECT consent_id FROM oauth_tokens WHERE mailbox = $1",
                    )
                    .bind(mailbox)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match (&stored, &r.consent_id) {
                        (Some((id,)), Some(expected)) if id != expected => {
                            return Err(StoreError::Conflict(format!(
                                "another consent was stored for {mailbox} since"
                            )));
                        }
                        _ => {}
                    }
                    if let Some((id,)) = &stored {
                        sqlx::query::<$db>("DELETE FROM oauth_tokens WHERE mailbox = $1 AND consent_id = $2")
                            .bind(mailbox)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    } else if r.consent_id.is_some() {
                        return Err(StoreError::NotFound(format!(
                            "no OAuth consent stored for {mailbox}"
                        )));
                    }
                    // Pending stays pending: pausing it would let `resume` skip approval.
                    let new = match old.as_str() {
                        "active" | "suspended" if r.pause => "paused",
                        other => other,
                    };
                    let row = sqlx::query_as::<$db, SubscriptionRow>(concat!(
                        "UPDATE subscriptions SET status = $2, \
                         status_reason = CASE WHEN $2 = status THEN status_reason ELSE $3 END, \
                         updated_at = $4 WHERE mailbox = $1 RETURNING ",
                        subscription_columns!()
                    ))
                    .bind(mailbox)
                    .bind(new)
                    .bind(clean(&r.reason))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    Self::reschedule(&mut tx, mailbox, &old, new, now).await?;
                    Self::insert_event(&mut tx, NewEvent {
                        mailbox,
                        at: now,
                        actor: r.actor.as_str(),
                        action: &r.action,
                        old_status: Some(&old),
                        new_status: new,
                        reason: Some(&r.reason),
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
