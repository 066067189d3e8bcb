//! Gmail push end to end: the daemon pulls the emulator's Pub/Sub
//! subscription, a notification makes its mailbox due, and the ordinary
//! incremental pass lands the mail — with `sync.poll_interval` at an hour,
//! so that only push can make a mailbox due. The watch is made by the test
//! itself (google-gmail1 `users.watch` as the mailbox, after the first full
//! sync), as tests/it/emulator_push.rs does.

use std::time::Duration;

use chrono::Utc;
use gmail_ingest::config::Settings;
use gmail_ingest::domain::{MailboxAddress, Operator, SubscriptionAction};
use gmail_ingest::google::pubsub::PubSub;
use google_gmail1::api::WatchRequest;
use reqwest::Method;
use serde_json::{Value, json};

use crate::chaos_helpers::{binary, eventually, write_config};
use crate::emulator_helpers::{GMAIL_READONLY, hub_with_key};
use crate::helpers::{Backend, RunningDaemon, World, both_backends, small, world_with};
use crate::push_helpers::{SUBSCRIPTION, TOPIC, push_on};

/// Long enough that no poll comes due during a test.
const NO_POLL: Duration = Duration::from_secs(3600);
const LANDS_WITHIN: Duration = Duration::from_secs(30);

fn push_only(s: &mut Settings) {
    push_on(s);
    s.sync.poll_interval = NO_POLL;
}

/// `users.watch` on `m`'s whole mailbox, as the mailbox (what helper A's
/// daemon-side watch will do after the first full sync).
async fn watch(w: &World, m: &MailboxAddress) {
    let hub = hub_with_key(
        &w.settings.google.service_account_key_file,
        m.as_str(),
        &w.emulator.base_url(),
    )
    .await;
    let request = WatchRequest {
        topic_name: Some(TOPIC.to_owned()),
        ..WatchRequest::default()
    };
    hub.users()
        .watch(request, "me")
        .add_scope(GMAIL_READONLY)
        .doit()
        .await
        .expect("watch accepted");
    assert!(w.watch_of(m.as_str()).await.is_some());
}

/// A subscribed mailbox, fully synced once, watched, and not due for an hour.
async fn synced_and_watched(w: &World) -> MailboxAddress {
    let m = w.shared_mailboxes().await[0].clone();
    w.subscribe(&m).await;
    w.sync(Some(&m)).await;
    watch(w, &m).await;
    assert_not_due(w, &m).await;
    m
}

async fn assert_not_due(w: &World, m: &MailboxAddress) {
    let state = w.ctx.store.sync_state(m).await.unwrap().unwrap();
    let soon = Utc::now() + chrono::Duration::minutes(30);
    assert!(
        state.next_poll_at.is_some_and(|t| t > soon),
        "a poll is due: {state:?}"
    );
}

async fn lands(w: &World, m: &MailboxAddress, id: &str) -> bool {
    w.db(m).await.iter().any(|(gid, _, _)| gid == id)
}

async fn subscription_state(w: &World) -> Value {
    w.pubsub().await["subscriptions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == SUBSCRIPTION).cloned())
        .expect("the subscription")
}

/// Nothing unacknowledged or outstanding on the subscription.
async fn drained(w: &World) -> bool {
    let s = subscription_state(w).await;
    s["unacked"] == 0 && s["outstanding"] == 0
}

async fn advance_emulator_clock(w: &World, seconds: u64) {
    w.control(
        Method::POST,
        "clock/advance",
        Some(json!({ "seconds": seconds })),
    )
    .await;
}

both_backends!(
    a_message_inserted_while_the_daemon_runs_lands_with_no_poll_due,
    |b: Backend| async move {
        // Arrange
        let Some(w) = world_with(b, small(1, 5), push_only).await else {
            return;
        };
        w.set_up_pubsub(10).await;
        let m = synced_and_watched(&w).await;
        let daemon = RunningDaemon::start(&w.settings).await;

        // Act
        let id = w.insert_message(&m, "pushed", &["INBOX"]).await;

        // Assert: committed through push alone, and the notification acked.
        eventually("the pushed message lands", LANDS_WITHIN, || {
            lands(&w, &m, &id)
        })
        .await;
        w.assert_converged(&m).await;
        eventually("the notification is acknowledged", LANDS_WITHIN, || {
            drained(&w)
        })
        .await;
        assert!(w.pubsub().await["stats"]["acknowledged"].as_u64() >= Some(1));
        assert_not_due(&w, &m).await;
        daemon.stop().await;
    }
);

both_backends!(
    a_notification_pulled_but_never_acknowledged_is_delivered_again_and_lands,
    |b: Backend| async move {
        // Arrange: a replica that pulled the notification and died before
        // its mark committed (a raw pull that is never acknowledged).
        let Some(w) = world_with(b, small(1, 5), push_only).await else {
            return;
        };
        w.set_up_pubsub(10).await;
        let m = synced_and_watched(&w).await;
        let id = w.insert_message(&m, "lost replica", &["INBOX"]).await;
        let dead = PubSub::from_settings(w.ctx.google.clone(), &w.settings.push).unwrap();
        let got = tokio::time::timeout(LANDS_WITHIN, async {
            loop {
                let got = dead.pull(10).await.expect("raw pull");
                if !got.is_empty() {
                    return got;
                }
            }
        })
        .await
        .expect("the notification is published");
        let n = got[0].notification.as_ref().expect("a notification");
        assert_eq!(&n.mailbox, &m);

        // Act: the daemon runs; the ack deadline passes.
        let daemon = RunningDaemon::start(&w.settings).await;
        advance_emulator_clock(&w, 11).await;

        // Assert
        eventually("the message lands after redelivery", LANDS_WITHIN, || {
            lands(&w, &m, &id)
        })
        .await;
        assert!(w.pubsub().await["stats"]["redelivered"].as_u64() >= Some(1));
        eventually("the redelivery is acknowledged", LANDS_WITHIN, || {
            drained(&w)
        })
        .await;
        daemon.stop().await;
    }
);

both_backends!(
    duplicated_and_delayed_notifications_converge,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(1, 5), push_only).await else {
            return;
        };
        w.set_up_pubsub(10).await;
        let m = synced_and_watched(&w).await;
        w.control(
            Method::PUT,
            "pubsub/faults",
            Some(json!({"duplicate_rate": 1.0, "delay_ms": [100, 1500], "seed": 17})),
        )
        .await;
        let daemon = RunningDaemon::start(&w.settings).await;

        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(w.insert_message(&m, &format!("dup {i}"), &["INBOX"]).await);
            // Past Gmail's one notification per second per user.
            advance_emulator_clock(&w, 2).await;
        }
        let last = ids.last().unwrap().clone();
        w.relabel(&m, &ids[0], &["STARRED"], &[]).await;

        eventually("every change lands", LANDS_WITHIN, || async {
            lands(&w, &m, &last).await && w.db(&m).await == w.truth(&m).await
        })
        .await;
        eventually("duplicates are acknowledged too", LANDS_WITHIN, || {
            drained(&w)
        })
        .await;
        let stats = w.pubsub().await["stats"].clone();
        assert!(stats["duplicated"].as_u64() >= Some(1), "{stats}");
        daemon.stop().await;
        w.assert_converged(&m).await;
    }
);

both_backends!(
    dropped_notifications_land_through_the_fallback_poll,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(1, 5), |s| {
            push_on(s);
            // A watched mailbox is polled at the fallback interval.
            s.push.fallback_poll_interval = Duration::from_secs(2);
        })
        .await
        else {
            return;
        };
        w.set_up_pubsub(10).await;
        let m = w.shared_mailboxes().await[0].clone();
        w.subscribe(&m).await;
        w.sync(Some(&m)).await;
        watch(&w, &m).await;
        w.control(
            Method::PUT,
            "pubsub/faults",
            Some(json!({"drop_rate": 1.0})),
        )
        .await;
        let daemon = RunningDaemon::start(&w.settings).await;

        let id = w.insert_message(&m, "dropped", &["INBOX"]).await;

        eventually("the message lands by polling", LANDS_WITHIN, || {
            lands(&w, &m, &id)
        })
        .await;
        let stats = w.pubsub().await["stats"].clone();
        assert!(stats["dropped"].as_u64() >= Some(1), "{stats}");
        daemon.stop().await;
    }
);

/// Every Gmail request made for `m` so far but `users.stop` (the one call
/// the daemon makes for a mailbox no longer active: it ends the watch and
/// reads nothing), and the tokens issued for it.
async fn gmail_footprint(w: &World, m: &MailboxAddress) -> (u64, Value) {
    let stats = w.stats().await;
    let requests: u64 = stats["requests_by_user"][m.as_str()]
        .as_object()
        .map_or(0, |o| {
            o.iter()
                .filter(|(method, _)| method.as_str() != "gmail.users.stop")
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        });
    (requests, stats["tokens_issued"][m.as_str()].clone())
}

both_backends!(
    a_notification_for_an_unsubscribed_or_paused_mailbox_is_acked_and_makes_no_gmail_call,
    |b: Backend| async move {
        // Arrange: `stranger` was never subscribed, `paused` was synced and
        // then paused; both are watched (a watch left behind).
        let Some(w) = world_with(b, small(3, 3), push_only).await else {
            return;
        };
        w.set_up_pubsub(10).await;
        let shared = w.shared_mailboxes().await;
        let (stranger, paused) = (shared[0].clone(), shared[1].clone());
        w.subscribe(&paused).await;
        w.sync(Some(&paused)).await;
        let policy = w.settings.policy().unwrap();
        gmail_ingest::subscriptions::Subscriptions::new(&w.ctx.store, &policy)
            .transition(
                &paused,
                Operator::parse("ops-a").unwrap(),
                SubscriptionAction::Pause,
                Some("test".into()),
            )
            .await
            .unwrap();
        watch(&w, &stranger).await;
        watch(&w, &paused).await;
        let before = (
            gmail_footprint(&w, &stranger).await,
            gmail_footprint(&w, &paused).await,
        );
        // Act: both change while their watches stand (the daemon stops the
        // paused one's watch as soon as it runs).
        w.insert_message(&stranger, "not ours", &["INBOX"]).await;
        w.insert_message(&paused, "not now", &["INBOX"]).await;
        let daemon = RunningDaemon::start(&w.settings).await;

        // Assert: both acknowledged, no Gmail call, no token, no row.
        eventually(
            "both notifications are acknowledged",
            LANDS_WITHIN,
            || async {
                w.pubsub().await["stats"]["acknowledged"].as_u64() >= Some(2) && drained(&w).await
            },
        )
        .await;
        eventually(
            "the paused mailbox's watch is stopped",
            LANDS_WITHIN,
            || async { w.watch_of(paused.as_str()).await.is_none() },
        )
        .await;
        daemon.stop().await;
        let after = (
            gmail_footprint(&w, &stranger).await,
            gmail_footprint(&w, &paused).await,
        );
        assert_eq!(
            after.0, before.0,
            "a Gmail call for a mailbox never subscribed"
        );
        assert_eq!(after.1.0, before.1.0, "a Gmail read for a paused mailbox");
        assert!(
            w.watch_of(stranger.as_str()).await.is_some(),
            "not ours to stop"
        );
        assert!(w.ctx.store.sync_state(&stranger).await.unwrap().is_none());
        assert_eq!(
            w.ctx
                .store
                .sync_state(&paused)
                .await
                .unwrap()
                .unwrap()
                .next_poll_at,
            None
        );
    }
);

fn run_check(w: &World) -> (bool, String) {
    let config = w.dir.path().join("check.toml");
    let push = format!(
        "[push]\nenabled = true\ntopic = {TOPIC:?}\nsubscription = {SUBSCRIPTION:?}\npubsub_base_url = {:?}\n",
        w.settings.push.pubsub_base_url
    );
    write_config(w, &config, &push);
    let out = std::process::Command::new(binary())
        .current_dir(w.dir.path())
        .args(["--config", config.to_str().unwrap(), "check"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(report: &'a str, needle: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{report}"))
}

both_backends!(
    check_names_a_missing_topic_grant_or_subscription,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(1, 1), push_on).await else {
            return;
        };

        // Nothing created yet.
        let (ok, report) = run_check(&w);
        assert!(!ok, "{report}");
        let topic = line(&report, &format!("topic {TOPIC}"));
        assert!(
            topic.starts_with("[FAIL]") && topic.contains("does not exist"),
            "{report}"
        );
        let sub = line(&report, &format!("subscription {SUBSCRIPTION}"));
        assert!(
            sub.starts_with("[FAIL]") && sub.contains("does not exist"),
            "{report}"
        );

        // Topic and subscription, but no grants.
        w.control(Method::PUT, &format!("pubsub/{TOPIC}"), None)
            .await;
        w.control(
            Method::PUT,
            &format!("pubsub/{SUBSCRIPTION}"),
            Some(json!({"topic": TOPIC})),
        )
        .await;
        let (ok, report) = run_check(&w);
        assert!(!ok, "{report}");
        assert!(line(&report, &format!("topic {TOPIC} exists")).starts_with("[ ok ]"));
        let publish = line(&report, "does not let Gmail publish");
        assert!(
            publish.starts_with("[FAIL]")
                && publish.contains("gmail-api-push@system.gserviceaccount.com")
                && publish.contains("roles/pubsub.publisher"),
            "{report}"
        );
        let pull = line(&report, "may not pull");
        assert!(
            pull.starts_with("[FAIL]") && pull.contains("roles/pubsub.subscriber"),
            "{report}"
        );

        // The two grants an admin must add.
        w.grant_gmail_publish(true).await;
        let me = format!("serviceAccount:{}", w.service_account_email());
        w.control(
            Method::PUT,
            &format!("pubsub/{SUBSCRIPTION}/subscribers/{me}"),
            None,
        )
        .await;
        let (ok, report) = run_check(&w);
        assert!(ok, "{report}");
        assert!(
            line(&report, "lets Gmail publish").starts_with("[ ok ]"),
            "{report}"
        );
        assert!(
            line(&report, "pubsub.subscriptions.consume").starts_with("[ ok ]"),
            "{report}"
        );
    }
);

/// The database down between pull and commit: the notification stays
/// unacknowledged (its mark cannot commit), and once the database is back
/// its redelivery is marked and the mail lands. PostgreSQL on a private
/// cluster the test may stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_pulled_while_the_database_is_down_lands_once_it_is_back() {
    let Some(cluster) = crate::pg::PrivateCluster::start() else {
        assert!(
            std::env::var("GMAIL_INGEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "GMAIL_INGEST_REQUIRE_POSTGRES=1 but a private PostgreSQL cluster could not be started"
        );
        return;
    };
    let url = cluster.fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let w = crate::helpers::world_at(Backend::Postgres, url, dir, small(1, 5), push_only).await;
    w.set_up_pubsub(10).await;
    let m = synced_and_watched(&w).await;
    let daemon = RunningDaemon::start(&w.settings).await;

    // Act: the database goes down, then a message arrives.
    cluster.stop_fast();
    let id = w.insert_message(&m, "during the outage", &["INBOX"]).await;
    eventually(
        "the daemon pulls the notification",
        LANDS_WITHIN,
        || async { w.pubsub().await["stats"]["delivered"].as_u64() >= Some(1) },
    )
    .await;
    let stats = w.pubsub().await["stats"].clone();
    assert_eq!(
        stats["acknowledged"], 0,
        "acknowledged without a mark: {stats}"
    );

    // The database is back; the ack deadline passes.
    cluster.start_again();
    advance_emulator_clock(&w, 11).await;

    // Assert
    eventually(
        "the message lands after the outage",
        LANDS_WITHIN * 2,
        || lands(&w, &m, &id),
    )
    .await;
    eventually("the redelivery is acknowledged", LANDS_WITHIN, || {
        drained(&w)
    })
    .await;
    daemon.stop().await;
}

/// Two replicas pulling one subscription (PostgreSQL): notifications go to
/// either, both mark, and a mailbox is still synced by one lease holder at
/// a time — no write under a lease the writer did not hold, no two runs of
/// one mailbox overlapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_pulling_one_subscription_never_sync_a_mailbox_twice_at_once() {
    use crate::replica_helpers::{AUDIT_SQL, Replica, overlapping_runs, pg, stale_writes};
    use sqlx::Executor;

    let Some(w) = world_with(Backend::Postgres, small(5, 5), push_only).await else {
        return;
    };
    w.set_up_pubsub(10).await;
    let mailboxes: Vec<MailboxAddress> = w.shared_mailboxes().await.into_iter().take(3).collect();
    for m in &mailboxes {
        w.subscribe(m).await;
    }
    w.sync(None).await;
    for m in &mailboxes {
        watch(&w, m).await;
    }
    let mut db = pg(&w).await;
    db.execute(AUDIT_SQL)
        .await
        .expect("audit triggers installed");
    let push = format!(
        "[push]\nenabled = true\ntopic = {TOPIC:?}\nsubscription = {SUBSCRIPTION:?}\npubsub_base_url = {:?}\n",
        w.settings.push.pubsub_base_url
    );
    let mut replicas = Vec::new();
    for name in ["replica1", "replica2"] {
        replicas.push(Replica::spawn_with(&w, name, 4, Duration::from_secs(5), &push).await);
    }

    // Act: changes in every mailbox, in rounds past the one-per-second limit.
    for round in 0..3 {
        for m in &mailboxes {
            w.insert_message(m, &format!("round {round}"), &["INBOX"])
                .await;
        }
        advance_emulator_clock(&w, 2).await;
    }

    // Assert
    eventually("every mailbox converges", LANDS_WITHIN * 2, || async {
        for m in &mailboxes {
            if w.db(m).await != w.truth(m).await {
                return false;
            }
        }
        true
    })
    .await;
    eventually("every notification is acknowledged", LANDS_WITHIN, || {
        drained(&w)
    })
    .await;
    for r in &mut replicas {
        r.terminate().await;
    }
    let violations = stale_writes(&mut db).await;
    assert!(violations.is_empty(), "{violations:#?}");
    let overlaps = overlapping_runs(&w, &mailboxes).await;
    assert!(overlaps.is_empty(), "{overlaps:#?}");
}
