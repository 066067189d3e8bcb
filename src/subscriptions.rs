//! The operators' workflow over the `subscriptions` table.
//!
//! Every rule an operator can trip lives here, once: allowed domains,
//! four-eyes approval, the state machine (`SubscriptionStatus::apply`), the
//! org-unit check at approval, the periodic review. The store appends the
//! audit event in the same transaction as each change. Refusals are typed so
//! the CLI maps them to exit code 2 with one line naming the cause.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;

use crate::config::Policy;
use crate::domain::{
    AuthMode, MailboxAddress, Operator, SubscriptionAction, SubscriptionStatus, SyncPhase,
};
use crate::store::{
    NewSubscription, PurgeCounts, Store, StoreError, Subscription, SubscriptionUpdate,
};

/// Why an operator request was refused (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("no subscription for {0}")]
    NotFound(MailboxAddress),
    #[error("{0} is already subscribed")]
    AlreadySubscribed(MailboxAddress),
    #[error("cannot {action} {mailbox}: it is {from}")]
    IllegalTransition {
        mailbox: MailboxAddress,
        from: SubscriptionStatus,
        action: &'static str,
    },
    #[error("{mailbox} is not in an allowed domain (policy.allowed_domains: {allowed})")]
    DomainNotAllowed {
        mailbox: MailboxAddress,
        allowed: String,
    },
    #[error("four-eyes policy: {0} requested this subscription and cannot also approve it")]
    FourEyes(Operator),
    #[error("cannot approve {mailbox}: {reason}")]
    OrgUnitRefused {
        mailbox: MailboxAddress,
        reason: String,
    },
    #[error("invalid label {0:?}: expected 1 to 225 printable characters")]
    BadLabel(String),
    #[error("note too long or has control characters (at most 2000 characters)")]
    BadNote,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubscriptionError {
    /// True when the request itself was wrong (exit code 2), false for a
    /// runtime failure (exit code 1).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, SubscriptionError::Store(_))
    }
}

/// The org-unit verdict for an approval, from the Directory when reachable.
#[derive(Debug, Clone)]
pub enum OrgUnitVerdict {
    Approved(String),
    Refused(String),
    /// The Directory could not be asked; the daemon's gate still checks before any sync.
    Unverified(String),
    /// An OAuth mailbox: its owner's consent authorizes it, no org-unit gate applies.
    NotApplicable,
}

pub struct Subscriptions<'a> {
    store: &'a Store,
    policy: &'a Policy,
}

fn parse_labels(labels: &[String]) -> Result<Vec<String>, SubscriptionError> {
    labels
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            if l.chars().count() > 225 || l.chars().any(char::is_control) {
                Err(SubscriptionError::BadLabel(l.to_owned()))
            } else {
                Ok(l.to_owned())
            }
        })
        .collect()
}

/// Checks a request's labels and note (the rules `add` applies), returning
/// the label filter to store.
pub fn validate_request(
    labels: &[String],
    note: Option<&str>,
) -> Result<Vec<String>, SubscriptionError> {
    let label_filter = parse_labels(labels)?;
    if let Some(n) = note
        && (n.chars().count() > 2000 || n.chars().any(|c| c.is_control() && c != '\n' && c != '\t'))
    {
        return Err(SubscriptionError::BadNote);
    }
    Ok(label_filter)
}

impl<'a> Subscriptions<'a> {
    pub fn new(store: &'a Store, policy: &'a Policy) -> Self {
        Subscriptions { store, policy }
    }

    fn check_domain(&self, mailbox: &MailboxAddress) -> Result<(), SubscriptionError> {
        if self.policy.domain_allowed(mailbox) {
            return Ok(());
        }
        let allowed: Vec<&str> = self
            .policy
            .allowed_domains
            .iter()
            .map(|d| d.as_str())
            .collect();
        Err(SubscriptionError::DomainNotAllowed {
            mailbox: mailbox.clone(),
            allowed: allowed.join(", "),
        })
    }

    async fn current(&self, mailbox: &MailboxAddress) -> Result<Subscription, SubscriptionError> {
        match self.store.get_subscription(mailbox).await? {
            Some(s) if s.status != SubscriptionStatus::Removed => Ok(s),
            _ => Err(SubscriptionError::NotFound(mailbox.clone())),
        }
    }

    pub async fn add(
        &self,
        mailbox: MailboxAddress,
        by: Operator,
        labels: &[String],
        note: Option<String>,
        auth_mode: AuthMode,
    ) -> Result<Subscription, SubscriptionError> {
        self.add_request(mailbox, by, labels, note, auth_mode, None)
            .await
    }

    /// [`Subscriptions::add`] for a member of a group subscription: a
    /// pending, delegated subscription with `via_group` recorded and `reason`
    /// in its `add` event. Four-eyes applies to it like to any other.
    pub async fn add_via_group(
        &self,
        mailbox: MailboxAddress,
        by: Operator,
        labels: &[String],
        note: Option<String>,
        group: &str,
        reason: &str,
    ) -> Result<Subscription, SubscriptionError> {
        self.add_request(
            mailbox,
            by,
            labels,
            note,
            AuthMode::Delegated,
            Some((group, reason)),
        )
        .await
    }

    async fn add_request(
        &self,
        mailbox: MailboxAddress,
        by: Operator,
        labels: &[String],
        note: Option<String>,
        auth_mode: AuthMode,
        via: Option<(&str, &str)>,
    ) -> Result<Subscription, SubscriptionError> {
        self.check_domain(&mailbox)?;
        let label_filter = validate_request(labels, note.as_deref())?;
        let new = NewSubscription {
            mailbox: mailbox.clone(),
            requested_by: by,
            label_filter,
            note,
            auth_mode,
        };
        let inserted = match via {
            None => self.store.insert_subscription(&new).await,
            Some((group, reason)) => {
                self.store
                    .insert_subscription_via_group(&new, group, reason)
                    .await
            }
        };
        match inserted {
            Ok(s) => Ok(s),
            Err(StoreError::Conflict(_)) => Err(SubscriptionError::AlreadySubscribed(mailbox)),
            Err(e) => Err(e.into()),
        }
    }

    /// Records an audit event on a subscription without changing its status
    /// (e.g. `group_left`): a compare-and-set on `sub.status`.
    pub async fn note_event(
        &self,
        sub: &Subscription,
        actor: Operator,
        action: &str,
        reason: String,
    ) -> Result<Subscription, SubscriptionError> {
        self.apply_update(SubscriptionUpdate {
            mailbox: sub.mailbox.clone(),
            expected: sub.status,
            new_status: sub.status,
            actor,
            action: action.to_owned(),
            reason: Some(reason),
            approved_by: None,
            reviewed_by: None,
            org_unit_seen: None,
        })
        .await
    }

    /// `pending` → `active`, under the domain, four-eyes and org-unit rules.
    pub async fn approve(
        &self,
        mailbox: &MailboxAddress,
        by: Operator,
        org_unit: OrgUnitVerdict,
    ) -> Result<Subscription, SubscriptionError> {
        self.check_domain(mailbox)?;
        let sub = self.current(mailbox).await?;
        let new_status = sub.status.apply(SubscriptionAction::Approve).ok_or(
            SubscriptionError::IllegalTransition {
                mailbox: mailbox.clone(),
                from: sub.status,
                action: "approve",
            },
        )?;
        if self.policy.four_eyes && sub.requested_by == by {
            return Err(SubscriptionError::FourEyes(by));
        }
        let (reason, seen) = match org_unit {
            OrgUnitVerdict::Refused(reason) => {
                return Err(SubscriptionError::OrgUnitRefused {
                    mailbox: mailbox.clone(),
                    reason,
                });
            }
            OrgUnitVerdict::Approved(ou) => (Some(format!("org unit {ou} verified")), Some(ou)),
            OrgUnitVerdict::Unverified(why) => (
                Some(format!(
                    "org unit not verified at approval ({why}); checked before every sync"
                )),
                None,
            ),
            OrgUnitVerdict::NotApplicable => (
                Some("authorized by the owner's OAuth consent; no org-unit gate".to_owned()),
                None,
            ),
        };
        let update = SubscriptionUpdate {
            mailbox: mailbox.clone(),
            expected: sub.status,
            new_status,
            actor: by.clone(),
            action: "approve".to_owned(),
            reason,
            approved_by: Some(by),
            reviewed_by: None,
            org_unit_seen: seen,
        };
        self.apply_update(update).await
    }

    /// pause / resume / remove: a plain state-machine step.
    pub async fn transition(
        &self,
        mailbox: &MailboxAddress,
        by: Operator,
        action: SubscriptionAction,
        reason: Option<String>,
    ) -> Result<Subscription, SubscriptionError> {
        let sub = self.current(mailbox).await?;
        let new_status = sub
            .status
            .apply(action)
            .ok_or(SubscriptionError::IllegalTransition {
                mailbox: mailbox.clone(),
                from: sub.status,
                action: action.as_str(),
            })?;
        let update = SubscriptionUpdate {
            mailbox: mailbox.clone(),
            expected: sub.status,
            new_status,
            actor: by,
            action: action.as_str().to_owned(),
            reason,
            approved_by: None,
            reviewed_by: None,
            org_unit_seen: None,
        };
        self.apply_update(update).await
    }

    /// Removes a subscription; with `purge`, deletes its ingested rows too.
    pub async fn remove(
        &self,
        mailbox: &MailboxAddress,
        by: Operator,
        purge: bool,
    ) -> Result<(Subscription, Option<PurgeCounts>), SubscriptionError> {
        let reason = purge.then(|| "removed with --purge".to_owned());
        let sub = self
            .transition(mailbox, by, SubscriptionAction::Remove, reason)
            .await?;
        let counts = if purge {
            Some(self.store.purge_mailbox(mailbox).await?)
        } else {
            None
        };
        Ok((sub, counts))
    }

    async fn apply_update(
        &self,
        update: SubscriptionUpdate,
    ) -> Result<Subscription, SubscriptionError> {
        match self.store.update_subscription(&update).await {
            Ok(s) => Ok(s),
            Err(StoreError::Conflict(_)) => {
                // Someone changed it between our read and write: report what it is now.
                let now = self.current(&update.mailbox).await?;
                Err(SubscriptionError::IllegalTransition {
                    mailbox: update.mailbox,
                    from: now.status,
                    action: "change",
                })
            }
            Err(StoreError::NotFound(_)) => Err(SubscriptionError::NotFound(update.mailbox)),
            Err(e) => Err(e.into()),
        }
    }

    /// What needs an operator's eyes, from the database alone (the
    /// Directory not asked).
    pub async fn review(
        &self,
        now: DateTime<Utc>,
        stale_after: std::time::Duration,
    ) -> Result<Vec<ReviewItem>, SubscriptionError> {
        self.review_with(now, stale_after, None).await
    }

    /// What needs an operator's eyes; with `directory` (what the Directory
    /// said of each subscription just now), also org-unit drift, suspended
    /// or archived users and group-membership changes since the last
    /// `--mark-reviewed`, whether or not a sync saw them.
    pub async fn review_with(
        &self,
        now: DateTime<Utc>,
        stale_after: std::time::Duration,
        directory: Option<&DirectoryView>,
    ) -> Result<Vec<ReviewItem>, SubscriptionError> {
        let subs = self.store.list_subscriptions().await?;
        let snapshots = self.store.list_review_snapshots().await?;
        let memberships = self.store.list_group_members().await?;
        let states = self.store.list_sync_states().await?;
        let consented: std::collections::HashSet<MailboxAddress> = self
            .store
            .list_oauth_tokens()
            .await?
            .into_iter()
            .map(|t| t.mailbox)
            .collect();
        let stale_after = ChronoDuration::from_std(stale_after).unwrap_or(ChronoDuration::days(5));
        let mut items = Vec::new();
        for sub in subs
            .iter()
            .filter(|s| s.status != SubscriptionStatus::Removed)
        {
            let mut issues = Vec::new();
            if review_overdue(self.policy, sub, now) {
                issues.push(format!(
                    "review overdue (last {})",
                    last_review(sub).format("%Y-%m-%d")
                ));
            }
            let live = directory.and_then(|d| d.mailboxes.get(&sub.mailbox));
            if sub.status == SubscriptionStatus::Suspended {
                issues.push(format!(
                    "suspended: {}",
                    sub.status_reason
                        .as_deref()
                        .unwrap_or("outside the approved org units")
                ));
            } else if let Some(Ok(facts)) = live {
                if sub.auth_mode == AuthMode::Delegated {
                    match &facts.org_unit {
                        None => issues.push("not found in the Directory".to_owned()),
                        Some(ou) => {
                            if let Ok(path) = crate::domain::OrgUnitPath::parse(ou)
                                && !self.policy.org_unit_approved(&path)
                            {
                                issues.push(format!(
                                    "outside the approved org units: in {ou} (Directory)"
                                ));
                            }
                        }
                    }
                }
            } else if let Some(ou) = &sub.org_unit_seen
                && let Ok(path) = crate::domain::OrgUnitPath::parse(ou)
                && !self.policy.org_unit_approved(&path)
            {
                issues.push(format!("seen outside the approved org units ({ou})"));
            }
            if let Some(Ok(facts)) = live {
                if facts.suspended {
                    issues.push("user suspended in the Directory".to_owned());
                }
                if facts.archived {
                    issues.push("user archived in the Directory".to_owned());
                }
                if let (Some(groups), Some(snap)) = (
                    &facts.groups,
                    snapshots.iter().find(|s| s.mailbox == sub.mailbox),
                ) {
                    for g in groups.iter().filter(|g| !snap.groups.contains(g)) {
                        issues.push(format!("joined group {g} since the last review"));
                    }
                    for g in snap.groups.iter().filter(|g| !groups.contains(g)) {
                        issues.push(format!("left group {g} since the last review"));
                    }
                }
            }
            if let Some(Err(why)) = live {
                issues.push(format!("Directory look-up failed: {why}"));
            }
            if let Some(group) = &sub.via_group
                && let Some(left) = memberships
                    .iter()
                    .find(|m| &m.group_email == group && m.mailbox == sub.mailbox)
                    .and_then(|m| m.left_at)
            {
                issues.push(format!(
                    "left group {group}, through which it was subscribed ({})",
                    left.format("%Y-%m-%d %H:%M")
                ));
            }
            if sub.status == SubscriptionStatus::Pending {
                issues.push("awaiting approval".to_owned());
            }
            if sub.auth_mode == AuthMode::OAuth
                && sub.status != SubscriptionStatus::Paused
                && !consented.contains(&sub.mailbox)
            {
                issues.push("no OAuth consent stored: the owner must authorize".to_owned());
            }
            let state = states.iter().find(|s| s.mailbox == sub.mailbox);
            if sub.status == SubscriptionStatus::Active {
                match state {
                    Some(st) if st.phase == SyncPhase::AuthFailed => issues.push(format!(
                        "auth failed: {}",
                        st.last_error.as_deref().unwrap_or("access refused")
                    )),
                    Some(st) => match st.last_success_at {
                        None => issues.push("never synced".to_owned()),
                        Some(t) if now - t > stale_after => issues.push(format!(
                            "stale: last success {}",
                            t.format("%Y-%m-%d %H:%M")
                        )),
                        Some(_) => {}
                    },
                    None => issues.push("never synced".to_owned()),
                }
            }
            if !issues.is_empty() {
                let facts = live.and_then(|r| r.as_ref().ok());
                items.push(ReviewItem {
                    mailbox: sub.mailbox.clone(),
                    status: sub.status,
                    issues,
                    last_reviewed_at: sub.last_reviewed_at,
                    via_group: sub.via_group.clone(),
                    directory: ReviewDirectory {
                        asked: directory.is_some(),
                        org_unit: facts.and_then(|f| f.org_unit.clone()),
                        suspended: facts.map(|f| f.suspended),
                        archived: facts.map(|f| f.archived),
                        groups: facts.and_then(|f| f.groups.clone()),
                        groups_unknown: directory.and_then(|d| d.groups_unknown.clone()),
                    },
                });
            }
        }
        Ok(items)
    }

    /// Records a review of every current subscription by `by`; with
    /// `directory`, also the snapshot the operator reviewed (each mailbox's
    /// group memberships and org unit, where the Directory gave them; a
    /// mailbox whose memberships are unknown keeps its previous snapshot).
    /// Returns (subscriptions reviewed, snapshots recorded).
    pub async fn mark_reviewed(
        &self,
        by: Operator,
        directory: Option<&DirectoryView>,
    ) -> Result<(usize, usize), SubscriptionError> {
        let subs = self.store.list_subscriptions().await?;
        let mut n = 0;
        let mut snapshots = 0;
        for sub in subs
            .iter()
            .filter(|s| s.status != SubscriptionStatus::Removed)
        {
            if let Some(Ok(facts)) = directory.and_then(|d| d.mailboxes.get(&sub.mailbox))
                && let Some(groups) = &facts.groups
            {
                self.store
                    .record_review_snapshot(&sub.mailbox, groups, facts.org_unit.as_deref(), &by)
                    .await?;
                snapshots += 1;
            }
            let update = SubscriptionUpdate {
                mailbox: sub.mailbox.clone(),
                expected: sub.status,
                new_status: sub.status,
                actor: by.clone(),
                action: "review".to_owned(),
                reason: None,
                approved_by: None,
                reviewed_by: Some(by.clone()),
                org_unit_seen: None,
            };
            self.apply_update(update).await?;
            n += 1;
        }
        Ok((n, snapshots))
    }
}

/// When `sub` was last looked at by an operator: its last review, else its
/// approval, else its request.
pub fn last_review(sub: &Subscription) -> DateTime<Utc> {
    sub.last_reviewed_at
        .or(sub.approved_at)
        .unwrap_or(sub.requested_at)
}

/// The one review-overdue rule (`subscriptions review` and the fleet gauge):
/// a subscription not removed whose [`last_review`] lies more than
/// `policy.review_interval_days` before `now`.
pub fn review_overdue(policy: &Policy, sub: &Subscription, now: DateTime<Utc>) -> bool {
    let interval = ChronoDuration::days(i64::from(policy.review_interval_days));
    sub.status != SubscriptionStatus::Removed && now - last_review(sub) > interval
}

/// One line of `subscriptions review`.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewItem {
    pub mailbox: MailboxAddress,
    pub status: SubscriptionStatus,
    pub issues: Vec<String>,
    pub last_reviewed_at: Option<DateTime<Utc>>,
    /// The group subscription that requested it, if any.
    pub via_group: Option<String>,
    /// What the Directory said of it during this review.
    pub directory: ReviewDirectory,
}

/// The Directory's part of a review line.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewDirectory {
    /// False when no key is configured (or the review did not ask).
    pub asked: bool,
    pub org_unit: Option<String>,
    pub suspended: Option<bool>,
    pub archived: Option<bool>,
    /// The groups it is a direct member of, when known.
    pub groups: Option<Vec<String>>,
    /// Why group memberships are unknown (e.g. "scope not granted").
    pub groups_unknown: Option<String>,
}

/// What the Directory said of each subscription during one review, gathered
/// by the caller (this module does not call Google).
#[derive(Debug, Clone, Default)]
pub struct DirectoryView {
    /// Per mailbox: its facts, or why the look-up failed.
    pub mailboxes: std::collections::HashMap<MailboxAddress, Result<LiveFacts, String>>,
    /// Set when no group membership could be read, e.g. "scope not granted".
    pub groups_unknown: Option<String>,
}

/// One user as the Directory shows it now.
#[derive(Debug, Clone, Default)]
pub struct LiveFacts {
    /// `None`: the Directory does not know the user.
    pub org_unit: Option<String>,
    pub suspended: bool,
    pub archived: bool,
    /// Direct group memberships (lower-case emails, sorted); `None` when unknown.
    pub groups: Option<Vec<String>>,
}
