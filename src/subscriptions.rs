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
use crate::google::gmail::LabelInfo;
use crate::store::{
    NewSubscription, PurgeCounts, Store, StoreError, Subscription, SubscriptionChange,
    SubscriptionUpdate,
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
    #[error(
        "cannot approve {mailbox}: it has no label {label:?} (labels are matched by ID, then by name)"
    )]
    UnknownLabel {
        mailbox: MailboxAddress,
        label: String,
    },
    #[error(
        "cannot approve {mailbox}: its labels are read only once its org unit is verified, and it could not be ({why})"
    )]
    LabelsUnverified {
        mailbox: MailboxAddress,
        why: String,
    },
    #[error(
        "cannot approve {0}: it requests labels, which are resolved by `subscriptions approve` (app::approve_one)"
    )]
    LabelsUnresolved(MailboxAddress),
    #[error("invalid label {0:?}: expected 1 to 225 printable characters")]
    BadLabel(String),
    #[error("note too long or has control characters (at most 2000 characters)")]
    BadNote,
    #[error("{mailbox} already {what}: nothing to change")]
    Unchanged {
        mailbox: MailboxAddress,
        what: String,
    },
    #[error(
        "no OAuth consent stored for {0}: its owner must authorize first (send them the link from `subscriptions authorize-link {0}`)"
    )]
    NoConsent(MailboxAddress),
    #[error("{0} was changed by someone else meanwhile; nothing was changed: look at it again")]
    Concurrent(MailboxAddress),
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

/// A governance change an operator requests; it goes back to `pending` and
/// needs a second operator's approval (four-eyes) like a new subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `subscriptions relabel`: the label names or IDs to keep (`None`: the
    /// whole mailbox).
    Labels(Option<Vec<String>>),
    /// `subscriptions set-auth`.
    AuthMode(AuthMode),
}

fn describe_labels(labels: &[String]) -> String {
    if labels.is_empty() {
        "all mail".to_owned()
    } else {
        labels.join(",")
    }
}

pub struct Subscriptions<'a> {
    store: &'a Store,
    policy: &'a Policy,
}

/// The label IDs `requested` (names or IDs, as `subscriptions add --labels`
/// stored them) resolve to among the mailbox's `labels` (Gmail's
/// `labels.list`): each entry matches a label by ID first, then by name
/// (Gmail names are case-insensitive). Duplicates collapse, order is kept.
/// `Err` carries the first entry that matches no label.
pub fn resolve_label_scope(
    labels: &[LabelInfo],
    requested: &[String],
) -> Result<Vec<String>, String> {
    let mut scope: Vec<String> = Vec::new();
    for wanted in requested {
        let wanted_trimmed = wanted.trim();
        let found = labels
            .iter()
            .find(|l| l.id == wanted_trimmed)
            .or_else(|| {
                let lower = wanted_trimmed.to_lowercase();
                labels.iter().find(|l| l.name.to_lowercase() == lower)
            })
            .ok_or_else(|| wanted.clone())?;
        if !scope.contains(&found.id) {
            scope.push(found.id.clone());
        }
    }
    Ok(scope)
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
            label_scope: None,
        })
        .await
    }

    /// The subscription `by` may approve, under the domain, state-machine
    /// and four-eyes rules (the org unit is not asked here). Changes nothing:
    /// the caller asks the Directory and resolves the labels only after this.
    pub async fn admissible(
        &self,
        mailbox: &MailboxAddress,
        by: &Operator,
    ) -> Result<Subscription, SubscriptionError> {
        self.check_domain(mailbox)?;
        let sub = self.current(mailbox).await?;
        sub.status.apply(SubscriptionAction::Approve).ok_or(
            SubscriptionError::IllegalTransition {
                mailbox: mailbox.clone(),
                from: sub.status,
                action: "approve",
            },
        )?;
        if self.policy.four_eyes && &sub.requested_by == by {
            return Err(SubscriptionError::FourEyes(by.clone()));
        }
        Ok(sub)
    }

    /// `pending` → `active` for a subscription that requests no labels (its
    /// scope is the whole mailbox), under the domain, four-eyes and org-unit
    /// rules. One that requests labels is refused: `app::approve_one` reads
    /// them and calls [`Subscriptions::approve_scoped`].
    pub async fn approve(
        &self,
        mailbox: &MailboxAddress,
        by: Operator,
        org_unit: OrgUnitVerdict,
    ) -> Result<Subscription, SubscriptionError> {
        self.approve_scoped(mailbox, by, org_unit, None).await
    }

    /// `pending` → `active` with the label scope resolved from the mailbox's
    /// labels (see [`resolve_label_scope`]); `label_scope` is written in the
    /// same update that makes the subscription active. `None` is accepted
    /// only for a subscription without `label_filter` (scope `[]`).
    pub async fn approve_scoped(
        &self,
        mailbox: &MailboxAddress,
        by: Operator,
        org_unit: OrgUnitVerdict,
        label_scope: Option<Vec<String>>,
    ) -> Result<Subscription, SubscriptionError> {
        let sub = self.admissible(mailbox, &by).await?;
        let new_status = sub.status.apply(SubscriptionAction::Approve).ok_or(
            SubscriptionError::IllegalTransition {
                mailbox: mailbox.clone(),
                from: sub.status,
                action: "approve",
            },
        )?;
        // The org unit first: a refused one is the cause, whatever the labels.
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
        let label_scope = match label_scope {
            Some(scope) => Some(scope),
            None if sub.label_filter.is_empty() => Some(Vec::new()),
            None => return Err(SubscriptionError::LabelsUnresolved(mailbox.clone())),
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
            label_scope,
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
            label_scope: None,
        };
        self.apply_update(update).await
    }

    /// `relabel` / `set-auth`: a governance change, allowed from active,
    /// paused, suspended and pending (never removed). The subscription goes
    /// back to `pending` with `by` as its requester, so the approval that
    /// follows is four-eyes against whoever asked for the change; audited with
    /// old → new. Switching to `oauth` needs a stored consent; a change to
    /// what it already is is refused. Compare-and-set: a change written by
    /// someone else since this one read the row refuses it.
    pub async fn request_change(
        &self,
        mailbox: &MailboxAddress,
        by: Operator,
        change: Change,
    ) -> Result<Subscription, SubscriptionError> {
        let action = match change {
            Change::Labels(_) => "relabel",
            Change::AuthMode(_) => "set-auth",
        };
        let sub = match self.store.get_subscription(mailbox).await? {
            Some(s) => s,
            None => return Err(SubscriptionError::NotFound(mailbox.clone())),
        };
        sub.status.apply(SubscriptionAction::RequestChange).ok_or(
            SubscriptionError::IllegalTransition {
                mailbox: mailbox.clone(),
                from: sub.status,
                action,
            },
        )?;
        let (label_filter, auth_mode, reason) = match change {
            Change::Labels(labels) => {
                let new = match labels {
                    Some(l) => parse_labels(&l)?,
                    None => Vec::new(),
                };
                if new == sub.label_filter {
                    return Err(SubscriptionError::Unchanged {
                        mailbox: mailbox.clone(),
                        what: if new.is_empty() {
                            "reads all mail".to_owned()
                        } else {
                            format!("has the labels {}", describe_labels(&new))
                        },
                    });
                }
                let reason = format!(
                    "labels: {} → {}",
                    describe_labels(&sub.label_filter),
                    describe_labels(&new)
                );
                (new, sub.auth_mode, reason)
            }
            Change::AuthMode(mode) => {
                if mode == sub.auth_mode {
                    return Err(SubscriptionError::Unchanged {
                        mailbox: mailbox.clone(),
                        what: format!("uses auth mode {mode}"),
                    });
                }
                if mode == AuthMode::OAuth && self.store.oauth_token(mailbox).await?.is_none() {
                    return Err(SubscriptionError::NoConsent(mailbox.clone()));
                }
                let reason = format!("auth mode: {} → {mode}", sub.auth_mode);
                (sub.label_filter.clone(), mode, reason)
            }
        };
        let require_consent = auth_mode == AuthMode::OAuth && sub.auth_mode != AuthMode::OAuth;
        let request = SubscriptionChange {
            mailbox: mailbox.clone(),
            expected_status: sub.status,
            expected_label_filter: sub.label_filter.clone(),
            expected_auth_mode: sub.auth_mode,
            label_filter,
            auth_mode,
            require_consent,
            actor: by,
            action: action.to_owned(),
            reason,
        };
        match self.store.request_subscription_change(&request).await {
            Ok(s) => Ok(s),
            Err(StoreError::Conflict(_)) => {
                if require_consent && self.store.oauth_token(mailbox).await?.is_none() {
                    Err(SubscriptionError::NoConsent(mailbox.clone()))
                } else {
                    Err(SubscriptionError::Concurrent(mailbox.clone()))
                }
            }
            Err(StoreError::NotFound(_)) => Err(SubscriptionError::NotFound(mailbox.clone())),
            Err(e) => Err(e.into()),
        }
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
                label_scope: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<LabelInfo> {
        [
            ("INBOX", "INBOX", "system"),
            ("STARRED", "STARRED", "system"),
            ("Label_1", "Invoices", "user"),
            ("Label_2", "Tenants/Unit 4B", "user"),
            // A user label whose name is another label's ID.
            ("Label_3", "Label_1", "user"),
        ]
        .into_iter()
        .map(|(id, name, t)| LabelInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            label_type: t.to_owned(),
        })
        .collect()
    }

    fn req(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn labels_resolve_by_id_then_by_case_insensitive_name() {
        let l = labels();
        assert_eq!(
            resolve_label_scope(&l, &req(&["STARRED", "invoices", "TENANTS/unit 4b"])),
            Ok(req(&["STARRED", "Label_1", "Label_2"]))
        );
        // An ID wins over a name that spells it.
        assert_eq!(
            resolve_label_scope(&l, &req(&["Label_1"])),
            Ok(req(&["Label_1"]))
        );
        // System labels by a lower-case spelling of their name.
        assert_eq!(
            resolve_label_scope(&l, &req(&["starred"])),
            Ok(req(&["STARRED"]))
        );
    }

    #[test]
    fn duplicates_collapse_and_order_is_kept() {
        let l = labels();
        assert_eq!(
            resolve_label_scope(&l, &req(&["Invoices", "STARRED", "Label_1"])),
            Ok(req(&["Label_1", "STARRED"]))
        );
        assert_eq!(resolve_label_scope(&l, &[]), Ok(Vec::new()));
    }

    #[test]
    fn an_unknown_label_is_named() {
        let l = labels();
        assert_eq!(
            resolve_label_scope(&l, &req(&["STARRED", "Receipts", "Nope"])),
            Err("Receipts".to_owned())
        );
        assert_eq!(
            resolve_label_scope(&[], &req(&["INBOX"])),
            Err("INBOX".to_owned())
        );
    }
}
