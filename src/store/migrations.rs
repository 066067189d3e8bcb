//! The schema migrations, embedded at build time (see `build.rs`).
//!
//! Equivalent to `sqlx::migrate!("migrations/<dialect>")`: the same versions,
//! descriptions and checksums, so a database migrated by an earlier build is
//! recognised as up to date. A test compares both dialects with sqlx's own
//! resolution of the directories.

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

type Embedded = &'static [(i64, &'static str, MigrationType, &'static str)];

const SQLITE: Embedded = include!(concat!(env!("OUT_DIR"), "/migrations_sqlite.rs"));
const POSTGRES: Embedded = include!(concat!(env!("OUT_DIR"), "/migrations_postgres.rs"));

pub(crate) static SQLITE_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(SQLITE));
pub(crate) static POSTGRES_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(POSTGRES));

fn migrator(embedded: Embedded) -> Migrator {
    Migrator::with_migrations(
        embedded
            .iter()
            .map(|&(version, description, kind, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    kind,
                    SqlStr::from_static(sql),
                    // sqlx's marker for a migration that must not run in a transaction.
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    async fn assert_same_as_sqlx(embedded: &Migrator, dir: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let resolved = Migrator::new(dir.as_path())
            .await
            .expect("sqlx resolves the directory");
        let describe = |m: &Migrator| {
            m.iter()
                .map(|m| {
                    (
                        m.version,
                        m.description.to_string(),
                        m.migration_type,
                        m.checksum.to_vec(),
                        m.no_tx,
                        m.sql.as_str().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let (ours, theirs) = (describe(embedded), describe(&resolved));
        assert!(!ours.is_empty(), "{}: no migration embedded", dir.display());
        assert_eq!(
            ours,
            theirs,
            "{}: embedded migrations differ from the directory",
            dir.display()
        );
        assert!(embedded.locking, "migrations must take the database lock");
        assert_eq!(embedded.table_name, "_sqlx_migrations");
    }

    #[tokio::test]
    async fn embedded_sqlite_migrations_are_what_sqlx_resolves_from_the_directory() {
        assert_same_as_sqlx(&SQLITE_MIGRATOR, "migrations/sqlite").await;
    }

    #[tokio::test]
    async fn embedded_postgres_migrations_are_what_sqlx_resolves_from_the_directory() {
        assert_same_as_sqlx(&POSTGRES_MIGRATOR, "migrations/postgres").await;
    }
}
