//! Embeds `migrations/{sqlite,postgres}` in the binary.
//!
//! For each dialect it writes `$OUT_DIR/migrations_<dialect>.rs`: a slice of
//! `(version, description, kind, sql)` in version order, the SQL pulled in with
//! `include_str!`. `store::migrations` turns it into a `sqlx` `Migrator`
//! exactly as `sqlx::migrate!` would (same versions, descriptions and SHA-384
//! checksums, so databases migrated by either agree) without sqlx's proc-macro
//! crate, which compiles both database drivers a second time for the compiler.

use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let out = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for dialect in ["sqlite", "postgres"] {
        let dir = Path::new("migrations").join(dialect);
        println!("cargo:rerun-if-changed={}", dir.display());
        let code = embed(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        fs::write(
            Path::new(&out).join(format!("migrations_{dialect}.rs")),
            code,
        )
        .expect("writing into OUT_DIR");
    }
}

/// The Rust slice for one migrations directory, with sqlx's naming rules:
/// `<VERSION>_<DESCRIPTION>.sql`, `.up.sql` / `.down.sql` for reversible ones,
/// underscores in the description read as spaces; other files are ignored.
fn embed(dir: &Path) -> Result<String, String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("non-UTF-8 file name")?;
        let Some((version, rest)) = name.split_once('_') else {
            continue;
        };
        let (kind, suffix) = if rest.ends_with(".up.sql") {
            ("ReversibleUp", ".up.sql")
        } else if rest.ends_with(".down.sql") {
            ("ReversibleDown", ".down.sql")
        } else if rest.ends_with(".sql") {
            ("Simple", ".sql")
        } else {
            continue;
        };
        let version: i64 = version
            .parse()
            .map_err(|_| format!("{name}: the version prefix is not an integer"))?;
        let description = rest.trim_end_matches(suffix).replace('_', " ");
        let abs = fs::canonicalize(&path).map_err(|e| e.to_string())?;
        println!("cargo:rerun-if-changed={}", path.display());
        found.push((version, kind, description, abs));
    }
    found.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut code = String::from("&[\n");
    for (version, kind, description, abs) in found {
        writeln!(
            code,
            "    ({version}, {description:?}, sqlx::migrate::MigrationType::{kind}, include_str!({:?})),",
            abs.display().to_string()
        )
        .expect("writing to a String");
    }
    code.push(']');
    Ok(code)
}
