//! The approved-OU gate.
//!
//! Google cannot scope a domain-wide-delegation grant to an organizational
//! unit, so we do: before a mailbox is impersonated, on every pass, the
//! Directory must have shown, within `sync.org_unit_recheck_interval`, that
//! it exists, is neither suspended nor archived, has a mailbox, and sits in
//! (or under) one of `policy.approved_org_units`; and its domain must be
//! allowed. A refused active subscription becomes `suspended` with the
//! reason in `subscription_events`; a suspended one whose condition cleared
//! comes back to `active` by itself (an event again).
//!
//! The verdict is cached in the database, not asked on every pass: an
//! admission is recorded as `subscriptions.org_unit_allowed_at`, and a pass
//! of an active subscription admitted less than the interval ago (whose
//! recorded org unit the current policy still approves) is admitted without
//! a Directory call ([`admitted_recently`]). Only admissions are cached: a
//! refusal clears it (and suspends the subscription), so does every status
//! change (an approval, a resume or a reinstatement asks the Directory
//! again at its first pass). The scheduler's re-check (`check_all`, every
//! interval) refreshes or clears the verdict for every subscription and
//! suspends a refused one, whose running pass then stops
//! (`sync::engine::standing`): a move out of the OU is caught within one
//! interval either way.

use anyhow::Context;

use crate::domain::{
    AuthMode, MailboxAddress, Operator, OrgUnitPath, SubscriptionAction, SubscriptionStatus,
};
use crate::events;
use crate::google::directory::DirectoryUser;
use crate::store::SubscriptionUpdate;
use crate::sync::context::SyncContext;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    Allowed,
    /// Why the mailbox must not be impersonated.
    Refused(String),
}

/// The pure decision from a Directory answer.
pub fn evaluate(
    policy: &crate::config::Policy,
    mailbox: &MailboxAddress,
    user: Option<&DirectoryUser>,
) -> GateDecision {
    if !policy.domain_allowed(mailbox) {
        return GateDecision::Refused(format!(
            "domain {} is not in policy.allowed_domains",
            mailbox.domain()
        ));
    }
    let Some(user) = user else {
        return GateDecision::Refused("the mailbox does not exist in the directory".to_owned());
    };
    if user.suspended {
        return GateDecision::Refused("the user is suspended".to_owned());
    }
    if user.archived {
        return GateDecision::Refused("the user is archived".to_owned());
    }
    if !user.is_mailbox_setup {
        return GateDecision::Refused("the user has no Gmail mailbox".to_owned());
    }
    if !policy.org_unit_approved(&user.org_unit) {
        let approved: Vec<&str> = policy
            .approved_org_units
            .iter()
            .map(|o| o.as_str())
            .collect();
        return GateDecision::Refused(format!(
            "org unit {} is not approved (approved: {})",
            user.org_unit,
            approved.join(", ")
        ));
    }
    GateDecision::Allowed
}

/// The gate for a mailbox its owner authorized (OAuth consent): no
/// impersonation happens, so no org-unit restriction applies; the domain
/// must still be allowed.
pub fn evaluate_consented(
    policy: &crate::config::Policy,
    mailbox: &MailboxAddress,
) -> GateDecision {
    if policy.domain_allowed(mailbox) {
        GateDecision::Allowed
    } else {
        GateDecision::Refused(format!(
            "domain {} is not in policy.allowed_domains",
            mailbox.domain()
        ))
    }
}

/// Whether `sub` was admitted by a Directory answer less than `interval`
/// before `now` and still would be on what that answer recorded: active,
/// delegated, its domain allowed and its recorded org unit approved by the
/// current policy (a policy change takes effect at once). A pass for which
/// this holds is admitted without asking the Directory.
pub fn admitted_recently(
    policy: &crate::config::Policy,
    sub: &crate::store::Subscription,
    interval: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let Some(at) = sub.org_unit_allowed_at else {
        return false;
    };
    let fresh = chrono::TimeDelta::from_std(interval)
        .ok()
        .is_some_and(|ttl| at <= now && now - at < ttl);
    fresh
        && sub.status == SubscriptionStatus::Active
        && sub.auth_mode == AuthMode::Delegated
        && policy.domain_allowed(&sub.mailbox)
        && sub
            .org_unit_seen
            .as_deref()
            .and_then(|ou| OrgUnitPath::parse(ou).ok())
            .is_some_and(|ou| policy.org_unit_approved(&ou))
}

/// The gate for one pass: with `cached` (the daemon's passes), the cached
/// admission when it is recent ([`admitted_recently`]); otherwise (a one-off
/// `sync`, or no recent admission) [`check_subscription`].
pub async fn check_pass(
    ctx: &SyncContext,
    mailbox: &MailboxAddress,
    sub: Option<&crate::store::Subscription>,
    cached: bool,
) -> anyhow::Result<GateDecision> {
    let interval = ctx.settings.sync.org_unit_recheck_interval;
    if cached
        && let Some(s) = sub
        && admitted_recently(&ctx.policy, s, interval, chrono::Utc::now())
    {
        return Ok(GateDecision::Allowed);
    }
    check_subscription(ctx, mailbox, sub).await
}

/// Checks one mailbox against the Directory and applies the decision to its
/// subscription `sub` as the caller read it (suspend / reinstate; the update
/// is a compare-and-set, so a status changed meanwhile wins). Errors mean
/// "could not check": the caller must not impersonate the mailbox then either.
pub async fn check_subscription(
    ctx: &SyncContext,
    mailbox: &MailboxAddress,
    sub: Option<&crate::store::Subscription>,
) -> anyhow::Result<GateDecision> {
    let user = if ctx.policy.domain_allowed(mailbox) {
        ctx.google
            .directory_user(mailbox)
            .await
            .with_context(|| format!("looking up {mailbox} in the directory"))?
    } else {
        None
    };
    let decision = evaluate(&ctx.policy, mailbox, user.as_ref());
    let org_unit = user.as_ref().map(|u| u.org_unit.to_string());
    let allowed = decision == GateDecision::Allowed;
    let Some(sub) = sub else {
        ctx.store
            .record_org_unit(mailbox, org_unit.as_deref(), allowed)
            .await
            .context("recording the org unit")?;
        return Ok(decision);
    };
    let action = match (&decision, sub.status) {
        (GateDecision::Refused(_), SubscriptionStatus::Active) => Some(SubscriptionAction::Suspend),
        (GateDecision::Allowed, SubscriptionStatus::Suspended) => {
            Some(SubscriptionAction::Reinstate)
        }
        _ => None,
    };
    if let Some(action) = action
        && let Some(new_status) = sub.status.apply(action)
    {
        let reason = match &decision {
            GateDecision::Refused(r) => r.clone(),
            GateDecision::Allowed => "the mailbox is back in an approved org unit".to_owned(),
        };
        let update = SubscriptionUpdate {
            mailbox: mailbox.clone(),
            expected: sub.status,
            new_status,
            actor: Operator::system(),
            action: action.as_str().to_owned(),
            reason: Some(reason.clone()),
            approved_by: None,
            reviewed_by: None,
            org_unit_seen: org_unit.clone(),
            label_scope: None,
        };
        match ctx.store.update_subscription(&update).await {
            Ok(_) => match action {
                SubscriptionAction::Suspend => {
                    events::OrgUnitSuspended {
                        mailbox,
                        reason: &reason,
                    }
                    .emit();
                    ctx.google.forget(mailbox);
                }
                _ => events::OrgUnitReinstated { mailbox }.emit(),
            },
            // An operator changed it meanwhile: their decision stands.
            Err(crate::store::StoreError::Conflict(_)) => {}
            Err(e) => return Err(e).context("updating the subscription"),
        }
    }
    // After the status change, which clears the cached admission: a
    // reinstated mailbox keeps the admission this answer gave it.
    ctx.store
        .record_org_unit(mailbox, org_unit.as_deref(), allowed)
        .await
        .context("recording the org unit")?;
    Ok(decision)
}

/// Re-checks every active or suspended subscription (the scheduler's OU job
/// and the start of `sync`). One mailbox's failure does not stop the others.
pub async fn check_all(
    ctx: &SyncContext,
) -> anyhow::Result<Vec<(MailboxAddress, anyhow::Result<GateDecision>)>> {
    let subs = ctx
        .store
        .list_subscriptions()
        .await
        .context("listing subscriptions")?;
    let mut out = Vec::new();
    for sub in subs {
        // The org-unit gate is for impersonation; OAuth mailboxes are not impersonated.
        if sub.auth_mode == AuthMode::Delegated
            && matches!(
                sub.status,
                SubscriptionStatus::Active | SubscriptionStatus::Suspended
            )
        {
            let r = check_subscription(ctx, &sub.mailbox, Some(&sub)).await;
            out.push((sub.mailbox, r));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Domain;

    fn policy() -> crate::config::Policy {
        crate::config::Policy {
            allowed_domains: vec![Domain::parse("example.com").unwrap()],
            approved_org_units: vec![OrgUnitPath::parse("/Shared Mailboxes").unwrap()],
            review_interval_days: 90,
            four_eyes: true,
        }
    }

    fn user(ou: &str) -> DirectoryUser {
        DirectoryUser {
            primary_email: "support@example.com".into(),
            org_unit: OrgUnitPath::parse(ou).unwrap(),
            suspended: false,
            archived: false,
            is_mailbox_setup: true,
        }
    }

    fn subscription(ou: &str, allowed_ago: Option<i64>) -> crate::store::Subscription {
        let now = chrono::Utc::now();
        let op = Operator::parse("ops").unwrap();
        crate::store::Subscription {
            mailbox: MailboxAddress::parse("support@example.com").unwrap(),
            status: SubscriptionStatus::Active,
            label_filter: vec![],
            requested_by: op.clone(),
            requested_at: now,
            approved_by: Some(op),
            approved_at: Some(now),
            last_reviewed_at: None,
            reviewed_by: None,
            org_unit_seen: Some(ou.to_owned()),
            org_unit_checked_at: Some(now),
            note: None,
            status_reason: None,
            auth_mode: AuthMode::Delegated,
            created_at: now,
            updated_at: now,
            label_scope: Some(vec![]),
            via_group: None,
            org_unit_allowed_at: allowed_ago.map(|s| now - chrono::TimeDelta::seconds(s)),
        }
    }

    #[test]
    fn a_recent_admission_stands_for_the_recheck_interval_only() {
        let p = policy();
        let ttl = std::time::Duration::from_secs(900);
        let now = chrono::Utc::now();
        let ok = subscription("/Shared Mailboxes/EU", Some(60));
        assert!(admitted_recently(&p, &ok, ttl, now));
        // Older than the interval, or never admitted: ask the Directory.
        assert!(!admitted_recently(
            &p,
            &subscription("/Shared Mailboxes", Some(901)),
            ttl,
            now
        ));
        assert!(!admitted_recently(
            &p,
            &subscription("/Shared Mailboxes", None),
            ttl,
            now
        ));
        // From the future (a clock step): not trusted.
        assert!(!admitted_recently(
            &p,
            &subscription("/Shared Mailboxes", Some(-60)),
            ttl,
            now
        ));
        // Only for an active, delegated subscription.
        for status in [SubscriptionStatus::Suspended, SubscriptionStatus::Paused] {
            let s = crate::store::Subscription {
                status,
                ..ok.clone()
            };
            assert!(!admitted_recently(&p, &s, ttl, now), "{status}");
        }
        let oauth = crate::store::Subscription {
            auth_mode: AuthMode::OAuth,
            ..ok.clone()
        };
        assert!(!admitted_recently(&p, &oauth, ttl, now));
        // The policy of now decides: an org unit no longer approved, or a
        // domain no longer allowed, is not admitted from the cache.
        let mut narrower = p.clone();
        narrower.approved_org_units = vec![OrgUnitPath::parse("/Shared Mailboxes/US").unwrap()];
        assert!(!admitted_recently(&narrower, &ok, ttl, now));
        let mut other = p.clone();
        other.allowed_domains = vec![Domain::parse("example.org").unwrap()];
        assert!(!admitted_recently(&other, &ok, ttl, now));
        // A zero interval caches nothing.
        assert!(!admitted_recently(&p, &ok, std::time::Duration::ZERO, now));
    }

    #[test]
    fn only_active_mailboxes_in_approved_units_pass() {
        let p = policy();
        let m = MailboxAddress::parse("support@example.com").unwrap();
        assert_eq!(
            evaluate(&p, &m, Some(&user("/Shared Mailboxes/EU"))),
            GateDecision::Allowed
        );
        assert!(
            matches!(evaluate(&p, &m, Some(&user("/Staff"))), GateDecision::Refused(r) if r.contains("/Staff"))
        );
        assert!(matches!(evaluate(&p, &m, None), GateDecision::Refused(_)));
        let mut u = user("/Shared Mailboxes");
        u.suspended = true;
        assert!(
            matches!(evaluate(&p, &m, Some(&u)), GateDecision::Refused(r) if r.contains("suspended"))
        );
        let mut u = user("/Shared Mailboxes");
        u.is_mailbox_setup = false;
        assert!(matches!(
            evaluate(&p, &m, Some(&u)),
            GateDecision::Refused(_)
        ));
        let foreign = MailboxAddress::parse("x@evil.example").unwrap();
        assert!(
            matches!(evaluate(&p, &foreign, Some(&user("/Shared Mailboxes"))), GateDecision::Refused(r) if r.contains("allowed_domains"))
        );
    }
}
