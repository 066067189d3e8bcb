//! Gmail push watches follow the subscriptions (issue 17, point 2): a watch
//! after the first full sync (with the label scope as `labelIds`), renewed
//! after `push.renew_interval` and after a scope change, never retried every
//! pass when it fails, stopped when a mailbox is paused, removed or moved out
//! of the approved OU, made through the owner's consent for an OAuth mailbox,
//! and never asked for with push off — through the engine (`sync_with`), the
//! real daemon and the `status` binary, on SQLite and PostgreSQL.

use std::time::Duration;

use chrono::Utc;
use gmail_ingest::app::Application;
use gmail_ingest::domain::{MailboxAddress, Operator, SubscriptionAction};
use gmail_ingest::subscriptions::Subscriptions;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::chaos_helpers::WorldCli as Cli;
use crate::helpers::{Backend, World, both_backends, small, world, world_with};
use crate::push_helpers::{TOPIC, push_on};

const WATCH: &str = "gmail.users.watch";

async fn push_world(b: Backend, users: usize, messages: usize) -> Option<World> {
    let w = world_with(b, small(users, messages), |s| {
        push_on(s);
        s.sync.org_unit_recheck_interval = Duration::from_secs(1);
    })
    .await?;
    w.set_up_pubsub(10).await;
    Some(w)
}

fn status_row(cli: &Cli, m: &MailboxAddress) -> Value {
    let status = cli.json(&["status", "--format", "json"]);
    status["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mailbox"] == m.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{m} in status: {status}"))
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(40) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Ages the stored renewal of `m`'s watch by `age` (as if made then),
/// keeping its expiry and scope, through a lease of its own.
async fn age_watch(w: &World, m: &MailboxAddress, age: chrono::Duration) {
    let st = w.ctx.store.sync_state(m).await.unwrap().unwrap();
    let l = w
        .ctx
        .store
        .claim_mailbox(m, "test-ager", Utc::now(), Duration::from_secs(60))
        .await
        .unwrap()
        .expect("claimable");
    w.ctx
        .store
        .record_watch(
            &l,
            st.watch_expires_at.unwrap(),
            st.watch_label_scope.as_deref().unwrap(),
            Utc::now() - age,
        )
        .await
        .unwrap();
    w.ctx
        .store
        .release_lease(&l, st.next_poll_at.unwrap_or_else(Utc::now))
        .await
        .unwrap();
}

both_backends!(
    a_watch_follows_the_first_full_sync_with_its_scope_and_status_shows_it,
    |b: Backend| async move {
        let Some(w) = push_world(b, 3, 10).await else {
            return;
        };
        let boxes = w.shared_mailboxes().await;
        let (whole, scoped) = (boxes[0].clone(), boxes[1].clone());
        let cli = Cli::new(&w, "");
        cli.ok(&["subscriptions", "add", whole.as_str(), "--by", "ops-a"]);
        cli.ok(&["subscriptions", "approve", whole.as_str(), "--by", "ops-b"]);
        cli.ok(&[
            "subscriptions",
            "add",
            scoped.as_str(),
            "--labels",
            "STARRED",
            "--by",
            "ops-a",
        ]);
        cli.ok(&["subscriptions", "approve", scoped.as_str(), "--by", "ops-b"]);

        let reports = w.sync(None).await;
        assert!(reports.iter().all(|r| r.outcome.is_ok()), "{reports:?}");
        for (m, labels) in [(&whole, json!([])), (&scoped, json!(["STARRED"]))] {
            let watch = w.watch_of(m.as_str()).await.expect("a live watch");
            assert_eq!(watch["topic"], TOPIC);
            assert_eq!(watch["label_ids"], labels, "{m}");
            let st = w.ctx.store.sync_state(m).await.unwrap().unwrap();
            let stored = st.watch_expires_at.expect("expiry stored");
            assert_eq!(
                stored.timestamp_millis(),
                watch["expiration_ms"].as_i64().unwrap(),
                "{m}: the stored expiry is Google's"
            );
            let row = status_row(&cli, m);
            assert_eq!(row["watch"]["state"], "live", "{row}");
            assert_eq!(
                row["watch"]["expires_at"],
                json!(stored),
                "status shows the expiry"
            );
        }
        let table = cli.ok(&["status"]);
        assert!(table.contains("WATCH"), "{table}");
        assert!(table.contains("until "), "{table}");
        // A live watch: the next poll is the fallback interval away.
        let next = reports[0].next_poll_at.unwrap();
        assert!(
            next > Utc::now() + chrono::Duration::minutes(30),
            "polled at push.fallback_poll_interval with a live watch: {next}"
        );
    }
);

both_backends!(
    a_watch_is_renewed_when_old_or_rescoped_and_not_when_fresh,
    |b: Backend| async move {
        let Some(w) = push_world(b, 2, 10).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        let cli = Cli::new(&w, "");
        cli.ok(&["subscriptions", "add", m.as_str(), "--by", "ops-a"]);
        cli.ok(&["subscriptions", "approve", m.as_str(), "--by", "ops-b"]);
        w.sync(Some(&m)).await;
        assert_eq!(w.requests_by_user(&m, WATCH).await, 1);

        // Fresh: two more passes make no watch call.
        w.sync(Some(&m)).await;
        w.sync(Some(&m)).await;
        assert_eq!(w.requests_by_user(&m, WATCH).await, 1, "not when fresh");

        // Older than push.renew_interval: renewed.
        age_watch(&w, &m, chrono::Duration::hours(25)).await;
        w.sync(Some(&m)).await;
        assert_eq!(w.requests_by_user(&m, WATCH).await, 2, "renewed when old");
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert!(st.watch_renewed_at.unwrap() > Utc::now() - chrono::Duration::minutes(5));

        // A new scope, approved: renewed with the scope's labels.
        cli.ok(&[
            "subscriptions",
            "relabel",
            m.as_str(),
            "--labels",
            "STARRED",
            "--by",
            "ops-c",
        ]);
        cli.ok(&["subscriptions", "approve", m.as_str(), "--by", "ops-a"]);
        let reports = w.sync(Some(&m)).await;
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        assert_eq!(w.requests_by_user(&m, WATCH).await, 3, "renewed on rescope");
        let watch = w.watch_of(m.as_str()).await.expect("live");
        assert_eq!(watch["label_ids"], json!(["STARRED"]));
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert_eq!(st.watch_label_scope, Some(vec!["STARRED".to_owned()]));
    }
);

both_backends!(
    a_failing_watch_is_shown_polled_as_before_and_not_retried_every_pass,
    |b: Backend| async move {
        let Some(w) = push_world(b, 2, 10).await else {
            return;
        };
        w.grant_gmail_publish(false).await;
        let m = w.shared_mailboxes().await[0].clone();
        w.subscribe(&m).await;
        let reports = w.sync(Some(&m)).await;
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        w.assert_converged(&m).await;
        assert!(w.watch_of(m.as_str()).await.is_none());
        let tried = w.requests_by_user(&m, WATCH).await;
        assert!(tried >= 1);
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        let error = st.watch_error.clone().expect("the failure is recorded");
        assert!(
            error.starts_with("users.watch failed:") && error.contains("not authorized"),
            "{error}"
        );
        let row = status_row(&Cli::new(&w, ""), &m);
        assert_eq!(row["watch"]["state"], "failed", "{row}");
        assert!(
            row["watch"]["error"]
                .as_str()
                .unwrap()
                .contains("not authorized"),
            "{row}"
        );
        assert!(
            Cli::new(&w, "")
                .ok(&["status"])
                .contains("failed: users.watch failed:")
        );

        // Still polled at sync.poll_interval, and still syncing.
        let next = reports[0].next_poll_at.unwrap();
        assert!(
            next < Utc::now() + chrono::Duration::seconds(30),
            "polled at sync.poll_interval without a live watch: {next}"
        );
        let id = w.insert_message(&m, "while push fails", &["INBOX"]).await;
        w.sync(Some(&m)).await;
        w.sync(Some(&m)).await;
        assert!(w.db(&m).await.iter().any(|(g, _, _)| *g == id));
        assert_eq!(
            w.requests_by_user(&m, WATCH).await,
            tried,
            "not retried every pass"
        );

        // An hour after the failure, with the grant back: made.
        w.grant_gmail_publish(true).await;
        let l = w
            .ctx
            .store
            .claim_mailbox(&m, "test-ager", Utc::now(), Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        w.ctx
            .store
            .record_watch_failure(&l, &error, Utc::now() - chrono::Duration::minutes(61))
            .await
            .unwrap();
        w.ctx.store.release_lease(&l, Utc::now()).await.unwrap();
        w.sync(Some(&m)).await;
        assert!(w.watch_of(m.as_str()).await.is_some(), "retried after 1 h");
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert_eq!(st.watch_error, None);
    }
);

both_backends!(
    pause_removal_and_a_move_out_of_the_ou_stop_the_watch_while_the_daemon_runs,
    |b: Backend| async move {
        let Some(w) = push_world(b, 4, 5).await else {
            return;
        };
        let boxes: Vec<MailboxAddress> = w.shared_mailboxes().await.into_iter().take(3).collect();
        assert_eq!(boxes.len(), 3);
        for m in &boxes {
            w.subscribe(m).await;
        }
        let app = Application::build(w.settings.clone()).await.unwrap();
        let port = app.http_port();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        for m in &boxes {
            eventually("a watch on every mailbox", || async {
                w.watch_of(m.as_str()).await.is_some()
            })
            .await;
        }

        let policy = w.settings.policy().unwrap();
        let subs = Subscriptions::new(&w.ctx.store, &policy);
        let by = Operator::parse("ops-c").unwrap();
        subs.transition(&boxes[0], by.clone(), SubscriptionAction::Pause, None)
            .await
            .unwrap();
        subs.remove(&boxes[1], by, false).await.unwrap();
        w.patch_user(&boxes[2], json!({"org_unit": "/Staff"})).await;
        for m in &boxes {
            eventually("the watch stopped", || async {
                w.watch_of(m.as_str()).await.is_none()
            })
            .await;
            let st = w.ctx.store.sync_state(m).await.unwrap().unwrap();
            assert_eq!(st.watch_expires_at, None, "{m}");
            assert_eq!(st.watch_error, None, "{m}");
        }
        assert_eq!(
            w.requests_by_user(&boxes[0], "gmail.users.stop").await,
            1,
            "one stop per watch"
        );
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("gmail_ingest_watch_calls_total{call=\"stop\",outcome=\"ok\"}"),
            "{metrics}"
        );
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }
);

both_backends!(
    an_oauth_mailbox_gets_its_watch_through_its_consent,
    |b: Backend| async move {
        use crate::oauth::{Daemon, approve, consent, oauth_world};
        let Some((w, _)) = oauth_world(b, Duration::from_secs(600)).await else {
            return;
        };
        let mut settings = w.settings.clone();
        push_on(&mut settings);
        let ctx = gmail_ingest::app::context(settings.clone()).await.unwrap();
        let w = World { settings, ctx, ..w };
        w.set_up_pubsub(10).await;
        let m = w.shared_mailboxes().await[0].clone();
        // No domain-wide delegation: only the owner's consent can work.
        let client_id = w.ctx.google.account().unwrap().client_id().to_owned();
        w.control(
            reqwest::Method::PUT,
            "delegation",
            Some(json!({"client_id": client_id, "scopes": []})),
        )
        .await;
        let d = Daemon::start(&w).await;
        let c = consent(&d.consent, &m).await;
        assert_eq!(c.status, reqwest::StatusCode::OK, "{}", c.body);
        approve(&w, &m).await;
        eventually("a watch through the consent", || async {
            w.watch_of(m.as_str()).await.is_some()
        })
        .await;
        let policy = w.settings.policy().unwrap();
        Subscriptions::new(&w.ctx.store, &policy)
            .transition(
                &m,
                Operator::parse("ops-c").unwrap(),
                SubscriptionAction::Pause,
                None,
            )
            .await
            .unwrap();
        eventually("the watch stopped through the consent", || async {
            w.watch_of(m.as_str()).await.is_none()
        })
        .await;
        d.stop().await;
    }
);

both_backends!(
    with_push_off_no_watch_is_asked_for,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 10)).await else {
            return;
        };
        w.set_up_pubsub(10).await;
        let m = w.shared_mailboxes().await[0].clone();
        w.subscribe(&m).await;
        w.sync(Some(&m)).await;
        let reports = w.sync(Some(&m)).await;
        assert!(reports[0].outcome.is_ok());
        assert_eq!(w.requests_by_user(&m, WATCH).await, 0);
        assert!(w.watch_of(m.as_str()).await.is_none());
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert_eq!((st.watch_expires_at, st.watch_error), (None, None));
        let next = reports[0].next_poll_at.unwrap();
        assert!(next < Utc::now() + chrono::Duration::seconds(30), "{next}");
    }
);
