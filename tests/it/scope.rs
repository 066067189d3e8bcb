//! Label scopes, enforced (issue 13 point 1): `--labels` resolved at
//! approval, and a mailbox's live rows are exactly its scope after every
//! pass — full sync, incremental, resync after expiry, and a scope change —
//! through the CLI, the daemon and the engine, on SQLite and PostgreSQL.

use std::time::Duration;

use gmail_ingest::domain::{AuthMode, ChangeKind, MailboxAddress, Operator, SubscriptionStatus};
use gmail_ingest::subscriptions::{OrgUnitVerdict, Subscriptions};

use crate::chaos_helpers::WorldCli as Cli;
use crate::helpers::{Backend, World, both_backends, small, world};

const GET: &str = "gmail.users.messages.get";
const LABELS: &str = "gmail.users.labels.list";

/// The ground truth restricted to `scope` (messages carrying one of its labels).
async fn scoped_truth(
    w: &World,
    m: &MailboxAddress,
    scope: &[&str],
) -> Vec<(String, String, Vec<String>)> {
    w.truth(m)
        .await
        .into_iter()
        .filter(|(_, _, labels)| labels.iter().any(|l| scope.contains(&l.as_str())))
        .collect()
}

async fn in_scope(w: &World, m: &MailboxAddress, scope: &[&str]) -> bool {
    w.db(m).await == scoped_truth(w, m, scope).await
}

/// Live rows == the scope's ground truth; returns the scope's size.
async fn assert_scope(w: &World, m: &MailboxAddress, scope: &[&str], when: &str) -> u64 {
    let want = scoped_truth(w, m, scope).await;
    let got = w.db(m).await;
    assert_eq!(
        got, want,
        "{m} {when}: live rows differ from the scope {scope:?}"
    );
    want.len() as u64
}

async fn changes_of(w: &World, m: &MailboxAddress, id: &str) -> Vec<ChangeKind> {
    w.ctx
        .store
        .message_changes(m)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.gmail_id.as_str() == id)
        .map(|c| c.change)
        .collect()
}

/// A message of the truth outside `scope`, and one inside.
async fn outside_and_inside(w: &World, m: &MailboxAddress, scope: &str) -> (String, String) {
    let truth = w.truth(m).await;
    let outside = truth
        .iter()
        .find(|(_, _, l)| !l.iter().any(|x| x == scope))
        .expect("a message outside the scope")
        .0
        .clone();
    let inside = truth
        .iter()
        .find(|(_, _, l)| l.iter().any(|x| x == scope))
        .expect("a message inside the scope")
        .0
        .clone();
    (outside, inside)
}

both_backends!(
    a_starred_scope_ingests_and_pays_for_exactly_the_starred_messages,
    |b: Backend| async move {
        let Some(w) = world(b, small(4, 200)).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        let cli = Cli::new(&w, "");
        cli.ok(&[
            "subscriptions",
            "add",
            m.as_str(),
            "--labels",
            "STARRED",
            "--by",
            "ops-a",
        ]);
        let approved = cli.ok(&["subscriptions", "approve", m.as_str(), "--by", "ops-b"]);
        assert!(approved.contains("label scope: STARRED"), "{approved}");
        let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
        assert_eq!(sub.label_scope, Some(vec!["STARRED".to_owned()]));

        cli.ok(&["sync"]);
        let n = assert_scope(&w, &m, &["STARRED"], "after the full sync").await;
        assert!(n > 0 && n < w.truth(&m).await.len() as u64, "{n} starred");
        assert_eq!(
            w.requests_by_user(&m, GET).await,
            n,
            "one get per starred message"
        );
        let units = w.units(&m).await;
        assert!(
            units >= 20 * n && units <= 20 * n + 60,
            "units {units} follow the {n} in-scope messages, not the mailbox"
        );

        // Incremental: an insert outside the scope costs no get.
        let plain = w.insert_message(&m, "Not starred", &["INBOX"]).await;
        cli.ok(&["sync"]);
        assert_eq!(
            w.requests_by_user(&m, GET).await,
            n,
            "out-of-scope insert fetched"
        );
        assert_scope(&w, &m, &["STARRED"], "after an out-of-scope insert").await;
        assert!(changes_of(&w, &m, &plain).await.is_empty());

        // A starred arrival enters; starring a message never stored fetches it.
        w.insert_message(&m, "Starred on arrival", &["INBOX", "STARRED"])
            .await;
        let (outside, inside) = outside_and_inside(&w, &m, "STARRED").await;
        w.relabel(&m, &outside, &["STARRED"], &[]).await;
        cli.ok(&["sync"]);
        assert_eq!(w.requests_by_user(&m, GET).await, n + 2);
        assert_scope(&w, &m, &["STARRED"], "after two messages entered").await;
        assert_eq!(changes_of(&w, &m, &outside).await, vec![ChangeKind::Added]);

        // Unstarring an in-scope message: it leaves the live rows, no get.
        w.relabel(&m, &inside, &[], &["STARRED"]).await;
        cli.ok(&["sync"]);
        assert_eq!(w.requests_by_user(&m, GET).await, n + 2);
        assert_scope(&w, &m, &["STARRED"], "after an unstar").await;
        let inside_changes = changes_of(&w, &m, &inside).await;
        assert_eq!(
            inside_changes.last(),
            Some(&ChangeKind::LeftScope),
            "{inside_changes:?}"
        );
        // Starred again: it enters again (its row was soft-deleted).
        w.relabel(&m, &inside, &["STARRED"], &[]).await;
        cli.ok(&["sync"]);
        assert_scope(&w, &m, &["STARRED"], "after a re-star").await;
        assert_eq!(
            changes_of(&w, &m, &inside).await.last(),
            Some(&ChangeKind::Added)
        );
    }
);

both_backends!(
    labels_resolve_by_name_at_approval_and_bad_labels_refuse_it,
    |b: Backend| async move {
        let Some(w) = world(b, small(8, 200)).await else {
            return;
        };
        let shared = w.shared_mailboxes().await;
        let (named, unknown, unverified, whole) = (
            shared[0].clone(),
            shared[1].clone(),
            shared[2].clone(),
            shared[3].clone(),
        );
        let cli = Cli::new(&w, "");

        // A user label by its name, in another case: resolved to its ID.
        cli.ok(&[
            "subscriptions",
            "add",
            named.as_str(),
            "--labels",
            "invoices",
            "--by",
            "ops-a",
        ]);
        let out = cli.ok(&["subscriptions", "approve", named.as_str(), "--by", "ops-b"]);
        assert!(out.contains("label scope: Label_1"), "{out}");
        let sub = w.ctx.store.get_subscription(&named).await.unwrap().unwrap();
        assert_eq!(sub.label_filter, vec!["invoices".to_owned()]);
        assert_eq!(sub.label_scope, Some(vec!["Label_1".to_owned()]));
        cli.ok(&["sync", "--mailbox", named.as_str()]);
        let n = assert_scope(&w, &named, &["Label_1"], "scope by name").await;
        assert!(n > 0);
        // Renamed in Gmail afterwards: the scope is kept by ID, nothing changes.
        w.control(
            reqwest::Method::PATCH,
            &format!("users/{named}/labels/Label_1"),
            Some(serde_json::json!({"name": "Receipts 2026"})),
        )
        .await;
        let before = w.ctx.store.message_changes(&named).await.unwrap().len();
        cli.ok(&["sync", "--mailbox", named.as_str()]);
        assert_scope(&w, &named, &["Label_1"], "after the rename").await;
        assert_eq!(
            w.ctx.store.message_changes(&named).await.unwrap().len(),
            before
        );

        // An unknown label refuses the approval and changes nothing.
        cli.ok(&[
            "subscriptions",
            "add",
            unknown.as_str(),
            "--labels",
            "STARRED,Nope",
            "--by",
            "ops-a",
        ]);
        let events = w
            .ctx
            .store
            .subscription_events(&unknown)
            .await
            .unwrap()
            .len();
        let line = cli.refused_line(&[
            "subscriptions",
            "approve",
            unknown.as_str(),
            "--by",
            "ops-b",
        ]);
        assert!(line.contains("\"Nope\""), "{line}");
        let sub = w
            .ctx
            .store
            .get_subscription(&unknown)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sub.status, SubscriptionStatus::Pending);
        assert_eq!(sub.label_scope, None);
        assert!(sub.approved_by.is_none());
        assert_eq!(
            w.ctx
                .store
                .subscription_events(&unknown)
                .await
                .unwrap()
                .len(),
            events
        );

        // The Directory cannot be asked: labels are not read, approval refused.
        let blind = Cli::new(&w, "");
        let text = std::fs::read_to_string(&blind.config).unwrap().replace(
            &format!(
                "directory_base_url = \"{}\"",
                w.settings.google.directory_base_url
            ),
            "directory_base_url = \"http://127.0.0.1:9/\"\nmax_attempts = 1",
        );
        let text = text.replace("max_attempts = 8\n", "");
        std::fs::write(&blind.config, text).unwrap();
        cli.ok(&[
            "subscriptions",
            "add",
            unverified.as_str(),
            "--labels",
            "STARRED",
            "--by",
            "ops-a",
        ]);
        let line = blind.refused_line(&[
            "subscriptions",
            "approve",
            unverified.as_str(),
            "--by",
            "ops-b",
        ]);
        assert!(line.contains("org unit"), "{line}");
        assert_eq!(
            w.requests_by_user(&unverified, LABELS).await,
            0,
            "labels read before the gate"
        );
        let sub = w
            .ctx
            .store
            .get_subscription(&unverified)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sub.status, SubscriptionStatus::Pending);

        // No labels: no label read at approval, scope = the whole mailbox;
        // the one Gmail call is the backfill estimate's getProfile, made
        // after the gate admitted the mailbox (issue 14).
        cli.ok(&["subscriptions", "add", whole.as_str(), "--by", "ops-a"]);
        cli.ok(&["subscriptions", "approve", whole.as_str(), "--by", "ops-b"]);
        assert_eq!(
            w.stats().await["requests_by_user"][whole.as_str()],
            serde_json::json!({"gmail.users.getProfile": 1})
        );
        let sub = w.ctx.store.get_subscription(&whole).await.unwrap().unwrap();
        assert_eq!(sub.label_scope, Some(Vec::new()));
    }
);

/// add (ops-a) with `labels`, then approve (ops-b) with `scope` resolved.
async fn subscribe_scoped(w: &World, m: &MailboxAddress, labels: &[&str]) {
    let policy = w.settings.policy().unwrap();
    let subs = Subscriptions::new(&w.ctx.store, &policy);
    let labels: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
    subs.add(
        m.clone(),
        Operator::parse("ops-a").unwrap(),
        &labels,
        None,
        AuthMode::Delegated,
    )
    .await
    .unwrap();
    subs.approve_scoped(
        m,
        Operator::parse("ops-b").unwrap(),
        OrgUnitVerdict::Approved("/Shared Mailboxes".into()),
        Some(labels),
    )
    .await
    .unwrap();
}

/// The scope changes the only way it can before `relabel`: remove, add with
/// the new labels, approve.
async fn rescope(w: &World, m: &MailboxAddress, labels: &[&str]) {
    let policy = w.settings.policy().unwrap();
    let subs = Subscriptions::new(&w.ctx.store, &policy);
    subs.remove(m, Operator::parse("ops-a").unwrap(), false)
        .await
        .unwrap();
    subscribe_scoped(w, m, labels).await;
}

both_backends!(
    resync_after_expiry_and_a_scope_change_bring_the_live_rows_to_the_scope,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 200)).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        subscribe_scoped(&w, &m, &["STARRED", "Label_2"]).await;
        let reports = w.sync(Some(&m)).await;
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        let n = assert_scope(&w, &m, &["STARRED", "Label_2"], "full sync of two labels").await;
        assert_eq!(
            w.requests_by_user(&m, GET).await,
            n,
            "a message under both labels is fetched once"
        );
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert_eq!(
            st.applied_label_scope,
            Some(vec!["STARRED".to_owned(), "Label_2".to_owned()])
        );

        // History expires while messages move in and out of the scope.
        let (outside, inside) = outside_and_inside(&w, &m, "STARRED").await;
        w.relabel(&m, &outside, &["STARRED"], &[]).await;
        w.relabel(&m, &inside, &[], &["STARRED", "Label_2"]).await;
        w.control(
            reqwest::Method::POST,
            &format!("users/{m}/history/expire"),
            None,
        )
        .await;
        let reports = w.sync(Some(&m)).await;
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        assert!(
            reports[0]
                .kinds
                .contains(&gmail_ingest::sync::engine::SyncKind::Resync)
        );
        assert_scope(&w, &m, &["STARRED", "Label_2"], "after the resync").await;
        assert_eq!(
            changes_of(&w, &m, &inside).await.last(),
            Some(&ChangeKind::LeftScope)
        );
        assert_eq!(
            changes_of(&w, &m, &outside).await.last(),
            Some(&ChangeKind::Added)
        );
        // A message deleted from Gmail is `deleted`, not `left_scope`.
        let gone = scoped_truth(&w, &m, &["STARRED"]).await[0].0.clone();
        w.delete_message(&m, &gone).await;
        w.sync_full(Some(&m)).await;
        assert_eq!(
            changes_of(&w, &m, &gone).await.last(),
            Some(&ChangeKind::Deleted)
        );
        assert_scope(
            &w,
            &m,
            &["STARRED", "Label_2"],
            "after the weekly reconciliation",
        )
        .await;

        // The scope narrows: rows outside the new scope leave, nothing is fetched.
        let gets = w.requests_by_user(&m, GET).await;
        let label_2_only: Vec<String> = scoped_truth(&w, &m, &["Label_2"])
            .await
            .into_iter()
            .filter(|(_, _, l)| !l.iter().any(|x| x == "STARRED"))
            .map(|(id, _, _)| id)
            .collect();
        rescope(&w, &m, &["STARRED"]).await;
        let reports = w.sync(Some(&m)).await;
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        assert_scope(&w, &m, &["STARRED"], "after narrowing the scope").await;
        assert_eq!(
            w.requests_by_user(&m, GET).await,
            gets,
            "narrowing fetches nothing"
        );
        for id in &label_2_only {
            assert_eq!(
                changes_of(&w, &m, id).await.last(),
                Some(&ChangeKind::LeftScope),
                "{id}"
            );
        }
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert_eq!(st.applied_label_scope, Some(vec!["STARRED".to_owned()]));

        // Back to the whole mailbox: everything is live again.
        rescope(&w, &m, &[]).await;
        w.sync(Some(&m)).await;
        w.assert_converged(&m).await;
        // And an incremental pass after it keeps the whole mailbox.
        w.insert_message(&m, "Anything", &["INBOX"]).await;
        w.sync(Some(&m)).await;
        w.assert_converged(&m).await;
    }
);

both_backends!(
    the_daemon_keeps_the_live_rows_exactly_the_scope,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 150)).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        subscribe_scoped(&w, &m, &["STARRED"]).await;
        let app = gmail_ingest::app::Application::build(w.settings.clone())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        crate::chaos_helpers::eventually("the scoped full sync", Duration::from_secs(30), || {
            in_scope(&w, &m, &["STARRED"])
        })
        .await;
        let n = scoped_truth(&w, &m, &["STARRED"]).await.len() as u64;
        let (outside, inside) = outside_and_inside(&w, &m, "STARRED").await;
        w.insert_message(&m, "Plain", &["INBOX"]).await;
        w.relabel(&m, &outside, &["STARRED"], &[]).await;
        w.relabel(&m, &inside, &[], &["STARRED"]).await;
        crate::chaos_helpers::eventually(
            "the scope after changes",
            Duration::from_secs(30),
            || async {
                in_scope(&w, &m, &["STARRED"]).await
                    && changes_of(&w, &m, &inside).await.last() == Some(&ChangeKind::LeftScope)
            },
        )
        .await;
        assert_eq!(
            w.requests_by_user(&m, GET).await,
            n + 1,
            "only the starred message was fetched"
        );
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }
);

both_backends!(
    relabel_through_the_cli_waits_for_a_second_operator_then_narrows_the_live_rows,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 40)).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        // Two starred messages at least, whatever the seed starred.
        for (id, _, _) in w.truth(&m).await.into_iter().take(2) {
            w.relabel(&m, &id, &["STARRED"], &[]).await;
        }
        let cli = Cli::new(&w, "");
        cli.ok(&["subscriptions", "add", m.as_str(), "--by", "ops-a"]);
        cli.ok(&["subscriptions", "approve", m.as_str(), "--by", "ops-b"]);
        cli.ok(&["sync"]);
        let whole = w.db(&m).await.len();
        assert_eq!(whole, w.truth(&m).await.len(), "the whole mailbox first");
        let gets = w.requests_by_user(&m, GET).await;

        // The change goes back to four-eyes: nothing is read while it waits.
        cli.ok(&[
            "subscriptions",
            "relabel",
            m.as_str(),
            "--labels",
            "STARRED",
            "--by",
            "ops-c",
        ]);
        let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
        assert_eq!(sub.status, SubscriptionStatus::Pending);
        cli.ok(&["sync"]);
        assert_eq!(
            w.db(&m).await.len(),
            whole,
            "a pending change moves nothing"
        );
        let line = cli.refused_line(&["subscriptions", "approve", m.as_str(), "--by", "ops-c"]);
        assert!(line.contains("four-eyes"), "{line}");

        // Approved by someone else: the live rows become the new scope, and
        // what left is recorded as `left_scope`, without a single get.
        let approved = cli.ok(&["subscriptions", "approve", m.as_str(), "--by", "ops-a"]);
        assert!(approved.contains("label scope: STARRED"), "{approved}");
        cli.ok(&["sync"]);
        let n = assert_scope(&w, &m, &["STARRED"], "after the relabel was approved").await;
        assert!(n < whole as u64, "{n} of {whole}");
        assert_eq!(
            w.requests_by_user(&m, GET).await,
            gets,
            "narrowing fetches nothing"
        );
        let (outside, _) = outside_and_inside(&w, &m, "STARRED").await;
        assert_eq!(
            changes_of(&w, &m, &outside).await.last(),
            Some(&ChangeKind::LeftScope)
        );

        // Back to the whole mailbox: the rows that left come back (fetched
        // again: a row that left the scope is not revived in place).
        cli.ok(&[
            "subscriptions",
            "relabel",
            m.as_str(),
            "--all-mail",
            "--by",
            "ops-c",
        ]);
        cli.ok(&["subscriptions", "approve", m.as_str(), "--by", "ops-b"]);
        cli.ok(&["sync"]);
        assert_eq!(w.db(&m).await, w.truth(&m).await, "the whole mailbox again");
    }
);
