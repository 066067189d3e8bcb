//! Google Groups and the Directory-backed review (issue 13, points 5 and 6):
//! the emulator's group API, `subscriptions add-group` / `approve --group` /
//! `remove-group` through the real binary, the daemon's re-expansion, and
//! `subscriptions review` asking the Directory, on SQLite and PostgreSQL.

use std::process::Command;
use std::time::Duration;

use gmail_ingest::domain::{MailboxAddress, Operator, SubscriptionStatus};
use reqwest::Method;
use serde_json::{Value, json};

use crate::chaos_helpers::{WorldCli, binary, eventually};
use crate::emulator_helpers::{DIRECTORY_READONLY, start};
use crate::helpers::{Backend, World, both_backends, small, world, world_with};

const GROUP_READONLY: &str = "https://www.googleapis.com/auth/admin.directory.group.readonly";
const GMAIL_READONLY: &str = "https://www.googleapis.com/auth/gmail.readonly";

fn user(email: &str) -> Value {
    json!({"email": email, "type": "USER", "status": "ACTIVE"})
}

fn nested(email: &str) -> Value {
    json!({"email": email, "type": "GROUP", "status": "ACTIVE"})
}

#[tokio::test]
async fn the_emulator_serves_groups_in_googles_shapes_with_its_errors_and_counters() {
    let env = start(1, 3, 5).await;
    // Arrange: a group with a nested group and a suspended member.
    let (status, created) = env
        .control(
            Method::PUT,
            "groups/Finance@example.com",
            Some(
                json!({"members": [user("support@example.com"), nested("ops@example.com"),
                {"email": "alice@example.com", "type": "USER", "status": "SUSPENDED"}]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["email"], "finance@example.com");
    let (status, _) = env
        .control(
            Method::PUT,
            "groups/ops@example.com",
            Some(json!({"members": [user("billing@example.com"), nested("finance@example.com")]})),
        )
        .await;
    assert_eq!(status, 201);
    for bad in [
        json!({"members": [{"email": "x@example.com", "type": "ROBOT"}]}),
        json!({"members": [{"email": "not-an-address"}]}),
        json!({"members": [user("a@example.com"), user("A@example.com")]}),
        json!({"people": []}),
    ] {
        assert_eq!(
            env.control(Method::PUT, "groups/bad@example.com", Some(bad.clone()))
                .await
                .0,
            400,
            "{bad}"
        );
    }
    let admin = env
        .token(
            "admin@example.com",
            &format!("{DIRECTORY_READONLY} {GROUP_READONLY}"),
        )
        .await;

    // Act + Assert: groups.list by member, paginated.
    let (status, _, groups) = env
        .get(
            &admin,
            "admin/directory/v1/groups?userKey=support@example.com&maxResults=1",
        )
        .await;
    assert_eq!(status, 200, "{groups}");
    assert_eq!(groups["kind"], "admin#directory#groups");
    assert_eq!(groups["groups"][0]["kind"], "admin#directory#group");
    assert_eq!(groups["groups"][0]["email"], "finance@example.com");
    let next = groups["nextPageToken"].as_str().expect("a second page");
    let (_, _, rest) = env
        .get(
            &admin,
            &format!("admin/directory/v1/groups?userKey=support@example.com&pageToken={next}"),
        )
        .await;
    assert_eq!(rest["groups"][0]["email"], "shared-mailboxes@example.com");
    assert!(rest.get("nextPageToken").is_none());
    let (_, _, none) = env
        .get(
            &admin,
            "admin/directory/v1/groups?userKey=admin@example.com",
        )
        .await;
    assert!(
        none.get("groups").is_none(),
        "Google leaves out an empty list: {none}"
    );
    let (status, _, missing) = env
        .get(
            &admin,
            "admin/directory/v1/groups?userKey=ghost@example.com",
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["message"], "Resource Not Found: userKey");

    // members.list: type and status as set.
    let (status, _, members) = env
        .get(
            &admin,
            "admin/directory/v1/groups/finance@example.com/members",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(members["kind"], "admin#directory#members");
    let listed: Vec<(String, String, String)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["kind"], "admin#directory#member");
            assert_eq!(m["role"], "MEMBER");
            (
                m["email"].as_str().unwrap().to_owned(),
                m["type"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("support@example.com".into(), "USER".into(), "ACTIVE".into()),
            ("ops@example.com".into(), "GROUP".into(), "ACTIVE".into()),
            (
                "alice@example.com".into(),
                "USER".into(),
                "SUSPENDED".into()
            ),
        ]
    );
    let (status, _, missing) = env
        .get(&admin, "admin/directory/v1/groups/nope@example.com/members")
        .await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["message"], "Resource Not Found: groupKey");

    // A token without a group scope: Google's 403.
    let users_only = env.token("admin@example.com", DIRECTORY_READONLY).await;
    for path in [
        "admin/directory/v1/groups?userKey=support@example.com",
        "admin/directory/v1/groups/finance@example.com/members",
    ] {
        let (status, _, body) = env.get(&users_only, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(
            body["error"]["errors"][0]["reason"],
            "insufficientPermissions"
        );
    }

    // DELETE removes it.
    assert_eq!(
        env.control(Method::DELETE, "groups/finance@example.com", None)
            .await
            .0,
        200
    );
    assert_eq!(
        env.control(Method::DELETE, "groups/finance@example.com", None)
            .await
            .0,
        404
    );
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(stats["requests"]["directory.groups.list"]["200"], 3);
    assert_eq!(stats["requests"]["directory.groups.list"]["404"], 1);
    assert_eq!(stats["requests"]["directory.groups.list"]["403"], 1);
    assert_eq!(stats["requests"]["directory.members.list"]["200"], 1);
    assert_eq!(stats["requests"]["directory.members.list"]["403"], 1);
}

fn mb(s: &str) -> MailboxAddress {
    MailboxAddress::parse(s).unwrap()
}

async fn put_group(w: &World, group: &str, members: Value) {
    w.control(
        Method::PUT,
        &format!("groups/{group}"),
        Some(json!({ "members": members })),
    )
    .await;
}

async fn add_user(w: &World, email: &str, org_unit: &str) {
    w.control(
        Method::POST,
        "users",
        Some(json!({"email": email, "org_unit": org_unit, "messages": 3})),
    )
    .await;
}

fn row<'a>(list: &'a Value, mailbox: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["mailbox"] == mailbox)
        .unwrap_or_else(|| panic!("{mailbox} not in {list}"))
}

both_backends!(
    add_group_expands_nested_groups_through_a_cycle_and_approve_group_gates_each_member,
    |b: Backend| async move {
        let Some(w) = world(b, small(3, 5)).await else {
            return;
        };
        let cli = WorldCli::new(&w, "");
        // Arrange: team@ holds support, carol and the nested ops@; ops@ holds
        // billing, a suspended alice, an outsider, and team@ again (a cycle).
        add_user(&w, "carol@example.com", "/Shared Mailboxes").await;
        put_group(
            &w,
            "team@example.com",
            json!([
                user("support@example.com"),
                user("carol@example.com"),
                nested("ops@example.com")
            ]),
        )
        .await;
        put_group(
            &w,
            "ops@example.com",
            json!([user("billing@example.com"), nested("team@example.com"),
                   {"email": "alice@example.com", "type": "USER", "status": "SUSPENDED"},
                   user("someone@outside.example")]),
        )
        .await;
        cli.ok(&[
            "subscriptions",
            "add",
            "support@example.com",
            "--by",
            "ops-b",
        ]);

        // Bad input: one line, exit 2, nothing changed.
        cli.refused(
            &[
                "subscriptions",
                "add-group",
                "ghost@example.com",
                "--by",
                "ops-a",
            ],
            "unknown group ghost@example.com",
        );
        cli.refused(
            &["subscriptions", "add-group", "not a group", "--by", "ops-a"],
            "invalid group address",
        );
        cli.refused(
            &[
                "subscriptions",
                "approve",
                "--group",
                "team@example.com",
                "--by",
                "ops-b",
            ],
            "no group subscription for team@example.com",
        );
        let before = cli.json(&["subscriptions", "list", "--format", "json"]);
        assert_eq!(before.as_array().unwrap().len(), 1, "{before}");

        // Act: subscribe the group.
        let report = cli.json(&[
            "subscriptions",
            "add-group",
            "Team@Example.com",
            "--by",
            "ops-a",
            "--labels",
            "INBOX",
            "--note",
            "finance team",
            "--format",
            "json",
        ]);

        // Assert: each active member not yet subscribed is pending, via the group.
        assert_eq!(report["group"], "team@example.com");
        assert_eq!(
            report["requested"],
            json!(["billing@example.com", "carol@example.com"]),
            "{report}"
        );
        assert_eq!(
            report["already_subscribed"][0]["mailbox"],
            "support@example.com"
        );
        assert_eq!(report["nested_groups"], json!(["ops@example.com"]));
        let skipped = report["skipped"].to_string();
        assert!(
            skipped.contains("alice@example.com") && skipped.contains("SUSPENDED"),
            "{skipped}"
        );
        assert!(skipped.contains("someone@outside.example"), "{skipped}");
        let list = cli.json(&["subscriptions", "list", "--format", "json"]);
        for m in ["billing@example.com", "carol@example.com"] {
            let r = row(&list, m);
            assert_eq!(r["status"], "pending", "{r}");
            assert_eq!(r["via_group"], "team@example.com", "{r}");
            assert_eq!(r["requested_by"], "ops-a");
            assert_eq!(r["label_filter"], json!(["INBOX"]));
            assert_eq!(r["note"], "finance team");
        }
        let support = row(&list, "support@example.com");
        assert_eq!(
            (support["status"].as_str(), support["via_group"].as_str()),
            (Some("pending"), None)
        );
        let events = w
            .ctx
            .store
            .subscription_events(&mb("carol@example.com"))
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert!(
            events[0]
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("team@example.com")
        );
        cli.refused(
            &[
                "subscriptions",
                "add-group",
                "team@example.com",
                "--by",
                "ops-a",
            ],
            "already subscribed",
        );

        // Four-eyes per mailbox: the group's requester approves none of them.
        let out = cli.run(&[
            "subscriptions",
            "approve",
            "--group",
            "team@example.com",
            "--by",
            "ops-a",
        ]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("2 of 2 refused")
                && stderr.contains("billing@example.com")
                && stderr.contains("carol@example.com"),
            "{stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("four-eyes"), "{stdout}");

        // One refusal does not stop the others: billing left the approved OU.
        w.patch_user(&mb("billing@example.com"), json!({"org_unit": "/Staff"}))
            .await;
        let out = cli.run(&[
            "subscriptions",
            "approve",
            "--group",
            "team@example.com",
            "--by",
            "ops-b",
            "--format",
            "json",
        ]);
        assert_eq!(out.status.code(), Some(2));
        let results: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            row(&results, "carol@example.com")["result"],
            "approved",
            "{results}"
        );
        let billing = row(&results, "billing@example.com");
        assert_eq!(billing["result"], "refused");
        assert_eq!(billing["status"], "pending");
        assert!(
            billing["reason"].as_str().unwrap().contains("/Staff"),
            "{billing}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("1 of 2 refused: billing@example.com")
        );
        let carol = w
            .ctx
            .store
            .get_subscription(&mb("carol@example.com"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (carol.status, carol.approved_by.map(|o| o.to_string())),
            (SubscriptionStatus::Active, Some("ops-b".into()))
        );
        let actions: Vec<String> = w
            .ctx
            .store
            .subscription_events(&carol.mailbox)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["add", "approve"]);
        let support = w
            .ctx
            .store
            .get_subscription(&mb("support@example.com"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            support.status,
            SubscriptionStatus::Pending,
            "not requested through the group: not approved by --group"
        );

        // remove-group ends the group subscription only.
        let out = cli.ok(&[
            "subscriptions",
            "remove-group",
            "team@example.com",
            "--by",
            "ops-b",
        ]);
        assert!(out.contains("stay as they are"), "{out}");
        cli.refused(
            &[
                "subscriptions",
                "remove-group",
                "team@example.com",
                "--by",
                "ops-b",
            ],
            "no group subscription for team@example.com",
        );
        let carol = w
            .ctx
            .store
            .get_subscription(&mb("carol@example.com"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(carol.status, SubscriptionStatus::Active);
        let groups = w.ctx.store.list_group_subscriptions().await.unwrap();
        assert_eq!((groups.len(), groups[0].status.as_str()), (1, "removed"));
    }
);

/// The emulator's DWD grant for our key, without the group scope.
async fn revoke_group_scope(w: &World) {
    let key: Value = serde_json::from_slice(
        &std::fs::read(&w.settings.google.service_account_key_file).unwrap(),
    )
    .unwrap();
    w.control(
        Method::PUT,
        "delegation",
        Some(
            json!({"client_id": key["client_id"], "scopes": [GMAIL_READONLY, DIRECTORY_READONLY]}),
        ),
    )
    .await;
}

both_backends!(
    without_the_group_scope_add_group_is_refused_and_review_says_memberships_are_unknown,
    |b: Backend| async move {
        let Some(w) = world(b, small(3, 5)).await else {
            return;
        };
        let cli = WorldCli::new(&w, "");
        w.subscribe(&mb("support@example.com")).await;
        revoke_group_scope(&w).await;

        cli.refused(
            &[
                "subscriptions",
                "add-group",
                "shared-mailboxes@example.com",
                "--by",
                "ops-a",
            ],
            "scope not granted",
        );
        assert!(
            w.ctx
                .store
                .list_group_subscriptions()
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(w.ctx.store.list_subscriptions().await.unwrap().len(), 1);

        // Review still asks for the user and flags what it can.
        w.patch_user(&mb("support@example.com"), json!({"org_unit": "/Staff"}))
            .await;
        let out = cli.ok(&["subscriptions", "review"]);
        assert!(
            out.contains("group memberships unknown: scope not granted"),
            "{out}"
        );
        assert!(
            out.contains("outside the approved org units: in /Staff"),
            "{out}"
        );
        let items = cli.json(&["subscriptions", "review", "--format", "json"]);
        let item = row(&items, "support@example.com");
        assert_eq!(item["directory"]["groups_unknown"], "scope not granted");
        assert_eq!(item["directory"]["org_unit"], "/Staff");
        let out = cli.ok(&[
            "subscriptions",
            "review",
            "--mark-reviewed",
            "--by",
            "carol",
        ]);
        assert!(out.contains("recorded a review of 1 subscription"), "{out}");
        assert!(
            out.contains("group memberships unknown: scope not granted"),
            "{out}"
        );
        assert!(
            w.ctx
                .store
                .list_review_snapshots()
                .await
                .unwrap()
                .is_empty()
        );
    }
);

both_backends!(
    review_asks_the_directory_for_org_unit_suspension_and_group_changes_since_the_last_review,
    |b: Backend| async move {
        let Some(w) = world(b, small(3, 5)).await else {
            return;
        };
        let cli = WorldCli::new(&w, "");
        let (support, billing) = (mb("support@example.com"), mb("billing@example.com"));
        w.subscribe(&support).await;
        w.subscribe(&billing).await;
        let out = cli.ok(&[
            "subscriptions",
            "review",
            "--mark-reviewed",
            "--by",
            "carol",
        ]);
        assert!(
            out.contains("recorded the group memberships of 2 mailbox(es)"),
            "{out}"
        );

        // Act: no sync runs; the Directory changes.
        w.patch_user(&support, json!({"org_unit": "/Staff"})).await;
        w.patch_user(&billing, json!({"suspended": true})).await;
        put_group(
            &w,
            "shared-mailboxes@example.com",
            json!([user("billing@example.com")]),
        )
        .await;
        put_group(
            &w,
            "finance@example.com",
            json!([user("billing@example.com")]),
        )
        .await;

        // Assert: review says so, in JSON and in the table.
        let items = cli.json(&["subscriptions", "review", "--format", "json"]);
        let s = row(&items, "support@example.com");
        let issues = s["issues"].to_string();
        assert!(
            issues.contains("outside the approved org units: in /Staff (Directory)"),
            "{issues}"
        );
        assert!(
            issues.contains("left group shared-mailboxes@example.com since the last review"),
            "{issues}"
        );
        assert_eq!(s["directory"]["asked"], true);
        assert_eq!(s["directory"]["groups"], json!([]));
        let bl = row(&items, "billing@example.com");
        let issues = bl["issues"].to_string();
        assert!(
            issues.contains("user suspended in the Directory"),
            "{issues}"
        );
        assert!(
            issues.contains("joined group finance@example.com since the last review"),
            "{issues}"
        );
        assert!(!issues.contains("left group"), "{issues}");
        let table = cli.ok(&["subscriptions", "review"]);
        assert!(
            table.contains("joined group finance@example.com"),
            "{table}"
        );
        assert!(!table.contains("not asked"), "{table}");
        // Approval creates each mailbox's schedule row; no pass touched it.
        let synced = w.ctx.store.list_sync_states().await.unwrap();
        assert!(
            synced.iter().all(|s| s.lease_epoch == 0
                && s.last_success_at.is_none()
                && s.history_id.is_none()),
            "no sync ran: {synced:?}"
        );

        // After a review is recorded the membership flags clear.
        cli.ok(&[
            "subscriptions",
            "review",
            "--mark-reviewed",
            "--by",
            "carol",
        ]);
        let items = cli.json(&["subscriptions", "review", "--format", "json"]);
        assert!(
            !items.to_string().contains("since the last review"),
            "{items}"
        );
        let snaps = w.ctx.store.list_review_snapshots().await.unwrap();
        let b_snap = snaps.iter().find(|s| s.mailbox == billing).unwrap();
        assert_eq!(
            b_snap.groups,
            ["finance@example.com", "shared-mailboxes@example.com"]
        );
        assert_eq!(b_snap.reviewed_by.to_string(), "carol");
    }
);

#[test]
fn review_without_a_key_says_the_directory_was_not_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = {:?}\n[google]\nservice_account_key_file = {:?}\n",
            format!("sqlite://{}", dir.path().join("gi.db").display()),
            dir.path().join("missing-sa.json").display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(binary())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([&["--config", config.to_str().unwrap()], args].concat())
            .output()
            .unwrap()
    };
    let out = run(&["subscriptions", "add", "support@example.com", "--by", "a"]);
    assert!(out.status.success());
    let out = run(&["subscriptions", "review"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("the Directory was not asked"), "{stdout}");
    assert!(stdout.contains("awaiting approval"), "{stdout}");
    let out = run(&[
        "subscriptions",
        "add-group",
        "team@example.com",
        "--by",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the Directory cannot be asked"));
}

/// Subscribes `team@` = {support} through the library, support approved by ops-b.
async fn subscribed_team(w: &World) {
    put_group(w, "team@example.com", json!([user("support@example.com")])).await;
    gmail_ingest::groups::add_group(
        &w.ctx.store,
        &w.ctx.google,
        &w.ctx.policy,
        "team@example.com",
        Operator::parse("ops-a").unwrap(),
        &[],
        None,
    )
    .await
    .expect("add-group");
    gmail_ingest::app::approve_one(
        &w.settings,
        &w.ctx.store,
        &w.ctx.policy,
        &mb("support@example.com"),
        Operator::parse("ops-b").unwrap(),
    )
    .await
    .expect("approve support");
}

both_backends!(
    the_daemon_re_expands_groups_a_new_member_stays_pending_and_one_that_left_is_paused,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(3, 5), |s| {
            s.policy.group_recheck_interval = Duration::from_secs(1);
            s.policy.on_group_leave = gmail_ingest::config::OnGroupLeave::Pause;
        })
        .await
        else {
            return;
        };
        subscribed_team(&w).await;
        let cli = WorldCli::new(&w, "");
        let app = gmail_ingest::app::Application::build(w.settings.clone())
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));

        // Act: support leaves team@, billing joins.
        put_group(&w, "team@example.com", json!([user("billing@example.com")])).await;

        // Assert: billing becomes pending through the group, support is paused.
        let store = w.ctx.store.clone();
        eventually(
            "billing requested and support paused",
            Duration::from_secs(30),
            || {
                let store = store.clone();
                async move {
                    let b = store
                        .get_subscription(&mb("billing@example.com"))
                        .await
                        .unwrap();
                    let s = store
                        .get_subscription(&mb("support@example.com"))
                        .await
                        .unwrap();
                    b.is_some_and(|b| b.status == SubscriptionStatus::Pending)
                        && s.is_some_and(|s| s.status == SubscriptionStatus::Paused)
                }
            },
        )
        .await;
        // Several more re-expansions: billing never becomes active by itself.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let billing = w
            .ctx
            .store
            .get_subscription(&mb("billing@example.com"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(billing.status, SubscriptionStatus::Pending);
        assert_eq!(billing.via_group.as_deref(), Some("team@example.com"));
        assert_eq!(
            billing.requested_by.to_string(),
            "ops-a",
            "four-eyes still binds the group's requester"
        );
        let events = w
            .ctx
            .store
            .subscription_events(&billing.mailbox)
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "one add, nothing else: {events:?}");
        assert!(
            events[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("re-expansion"),
            "{events:?}"
        );
        let support_events = w
            .ctx
            .store
            .subscription_events(&mb("support@example.com"))
            .await
            .unwrap();
        let pause = support_events.last().unwrap();
        assert_eq!(
            (pause.action.as_str(), pause.actor.as_str()),
            ("pause", "gmail-ingest")
        );
        assert!(
            pause
                .reason
                .as_deref()
                .unwrap()
                .contains("left group team@example.com"),
            "{pause:?}"
        );
        let review = cli
            .run_async(&["subscriptions", "review", "--format", "json"])
            .await;
        let items: Value = serde_json::from_slice(&review.stdout).unwrap();
        assert!(
            row(&items, "support@example.com")["issues"]
                .to_string()
                .contains("left group team@example.com, through which it was subscribed"),
            "{items}"
        );
        let _ = stop.send(());
        daemon.await.unwrap().unwrap();
    }
);

both_backends!(
    a_member_that_left_is_flagged_and_audited_but_stays_active_by_default,
    |b: Backend| async move {
        let Some(w) = world(b, small(3, 5)).await else {
            return;
        };
        subscribed_team(&w).await;
        put_group(&w, "team@example.com", json!([])).await;

        let results = gmail_ingest::groups::reexpand_all(
            &w.ctx.store,
            &w.ctx.google,
            &w.settings,
            &w.ctx.policy,
        )
        .await
        .unwrap();

        let report = results[0].1.as_ref().expect("re-expansion");
        assert_eq!(report.left, [mb("support@example.com")]);
        assert!(report.paused.is_empty());
        let s = w
            .ctx
            .store
            .get_subscription(&mb("support@example.com"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.status, SubscriptionStatus::Active);
        let last = w
            .ctx
            .store
            .subscription_events(&s.mailbox)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(
            (last.action.as_str(), last.actor.as_str()),
            ("group_left", "gmail-ingest")
        );
        let policy = w.settings.policy().unwrap();
        let items = gmail_ingest::subscriptions::Subscriptions::new(&w.ctx.store, &policy)
            .review(chrono::Utc::now(), Duration::from_secs(3600))
            .await
            .unwrap();
        let item = items
            .iter()
            .find(|i| i.mailbox == s.mailbox)
            .expect("flagged");
        assert!(
            item.issues
                .iter()
                .any(|i| i.contains("left group team@example.com")),
            "{item:?}"
        );
        // A second re-expansion changes nothing more.
        gmail_ingest::groups::reexpand_all(&w.ctx.store, &w.ctx.google, &w.settings, &w.ctx.policy)
            .await
            .unwrap();
        assert_eq!(
            w.ctx
                .store
                .subscription_events(&s.mailbox)
                .await
                .unwrap()
                .len(),
            3
        );
    }
);
