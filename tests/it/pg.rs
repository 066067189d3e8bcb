//! PostgreSQL for tests: one fresh database per test.
//!
//! The server is, in order: `TEST_POSTGRES_URL`; a server answering on
//! 127.0.0.1:5432 (user `postgres`, trust auth); or one private throwaway
//! cluster per test process started with `initdb`/`pg_ctl` in a temp dir.
//! Without any of them the PostgreSQL tests are skipped, unless
//! `GMAIL_INGEST_REQUIRE_POSTGRES=1`, which turns that into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;

static BASE_URL: OnceCell<Option<String>> = OnceCell::const_new();

/// A URL to a freshly created, empty database, or `None` (skip) when no
/// PostgreSQL is available.
pub(crate) async fn fresh_pg_url() -> Option<String> {
    let base = BASE_URL.get_or_init(find_server).await.clone();
    let Some(base) = base else {
        if std::env::var("GMAIL_INGEST_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!(
                "GMAIL_INGEST_REQUIRE_POSTGRES=1 but no PostgreSQL is available: set \
                 TEST_POSTGRES_URL, run a server on 127.0.0.1:5432, or install initdb/pg_ctl"
            );
        }
        #[allow(clippy::print_stderr)]
        {
            eprintln!("PostgreSQL not available: the PostgreSQL part of this test did not run");
        }
        return None;
    };
    let name = format!("gi_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL server: {e}"));
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    let _ = conn.close().await;
    let mut url = url::Url::parse(&base).expect("test PostgreSQL url parses");
    url.set_path(&name);
    Some(url.to_string())
}

/// Drops a database made by [`fresh_pg_url`] (best effort).
pub(crate) async fn drop_database(url: &str) {
    let Ok(mut u) = url::Url::parse(url) else {
        return;
    };
    let name = u.path().trim_start_matches('/').to_owned();
    if !name.starts_with("gi_test_") {
        return;
    }
    u.set_path("postgres");
    if let Ok(mut conn) = PgConnection::connect(u.as_str()).await {
        let _ = conn
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await;
        let _ = conn.close().await;
    }
}

async fn find_server() -> Option<String> {
    if let Some(url) = std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return Some(url);
    }
    let local = "postgres://postgres@127.0.0.1:5432/postgres";
    let answers = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect("127.0.0.1:5432"),
    )
    .await;
    if matches!(answers, Ok(Ok(_))) {
        return Some(local.to_owned());
    }
    start_private_cluster().await
}

fn pg_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path().join("bin").join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path.into_iter().chain(versioned).find(|p| p.is_file())
}

/// Starts one cluster for this test process on a free port. It is left
/// running when the process exits (its temp dir is kept for `pg_ctl stop`).
async fn start_private_cluster() -> Option<String> {
    let cluster = PrivateCluster::start()?;
    let url = cluster.url("postgres");
    // Leave it running for the rest of the process.
    std::mem::forget(cluster);
    Some(url)
}

/// A PostgreSQL cluster of the test's own, in a temp dir on a free port,
/// that the test may restart or stop (the shared server must never be).
/// As root the server runs as the `postgres` user, as initdb requires.
/// Stopped (`-m immediate`) and deleted on drop.
pub(crate) struct PrivateCluster {
    dir: PathBuf,
    pg_ctl: PathBuf,
    port: u16,
    /// Run as root: the server's commands run as `postgres`.
    as_root: bool,
}

impl PrivateCluster {
    /// `None` when initdb/pg_ctl are not installed, or initdb or the start
    /// failed (the cause is printed).
    pub(crate) fn start() -> Option<PrivateCluster> {
        let initdb = pg_binary("initdb")?;
        let pg_ctl = pg_binary("pg_ctl")?;
        let dir = tempfile::Builder::new()
            .prefix("gi-pg-")
            .tempdir()
            .ok()?
            .keep();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let cluster = PrivateCluster {
            dir,
            pg_ctl,
            port,
            as_root: as_root(),
        };
        if cluster.as_root {
            // The server refuses to run as root; its files must be its own.
            let _ = Command::new("chown")
                .args(["-R", "postgres", path(&cluster.dir)])
                .status();
        }
        let data = cluster.dir.join("data");
        let init = cluster.run(
            &initdb,
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        if !init {
            return None;
        }
        if !cluster.pg_ctl(&["start"]) {
            return None;
        }
        Some(cluster)
    }

    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A fresh empty database on this cluster.
    pub(crate) async fn fresh_database(&self) -> String {
        let name = format!("gi_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap_or_else(|e| panic!("connecting to the private cluster: {e}"));
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        let _ = conn.close().await;
        self.url(&name)
    }

    /// `pg_ctl restart -m fast`: every session is disconnected, the server
    /// is down until it has started again. Returns when it accepts
    /// connections (`-w`).
    pub(crate) fn restart_fast(&self) {
        assert!(
            self.pg_ctl(&["-m", "fast", "restart"]),
            "pg_ctl restart -m fast failed; server log:
{}",
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m fast`: the server is down until [`Self::start_again`].
    pub(crate) fn stop_fast(&self) {
        assert!(
            self.pg_ctl(&["-m", "fast", "stop"]),
            "pg_ctl stop -m fast failed"
        );
    }

    pub(crate) fn start_again(&self) {
        assert!(
            self.pg_ctl(&["start"]),
            "pg_ctl start failed; server log:\n{}",
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Runs `pg_ctl` with this cluster's data dir, options and log.
    fn pg_ctl(&self, args: &[&str]) -> bool {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            path(&self.dir)
        );
        let mut all = vec!["-D", path(&data), "-o", &options, "-l", path(&log), "-w"];
        all.extend_from_slice(args);
        self.run(&self.pg_ctl, &all)
    }

    fn run(&self, program: &Path, args: &[&str]) -> bool {
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let out = cmd.args(args).output();
        match out {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!(
                        "{} {}: {}
{}",
                        program.display(),
                        args.join(" "),
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
                false
            }
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("{}: {e}", program.display());
                }
                false
            }
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
