//! Golden corpus for the normalizer (`gmail_normalize`): every `tests/fixtures/eml/<folder>/*.eml`
//! is normalized with the default limits and compared with the `*.json` beside it.
//!
//! On a mismatch the actual output is written to `<name>.failed` (ignored by
//! git) and the test fails naming it; review the diff, then accept it by
//! re-running with `UPDATE_GOLDEN=1`, which rewrites every expectation.
//! The expectations are the spec: read each rewritten file before committing.

use std::fs;
use std::path::{Path, PathBuf};

use gmail_ingest::domain::NormalizedMessage;
use gmail_normalize::{NormalizeLimits, normalize};

const FOLDERS: &[&str] = &["rfc", "gmail", "malformed"];

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eml")
}

fn fixtures_in(folder: &str) -> Vec<PathBuf> {
    let dir = fixture_root().join(folder);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    paths.sort();
    paths
}

fn pretty(message: &NormalizedMessage) -> String {
    let mut json = serde_json::to_string_pretty(message).expect("NormalizedMessage serializes");
    json.push('\n');
    json
}

#[test]
fn every_golden_fixture_normalizes_to_its_expected_json() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for folder in FOLDERS {
        let fixtures = fixtures_in(folder);
        assert!(
            !fixtures.is_empty(),
            "no fixtures ran in {folder}: the corpus is missing"
        );
        for eml in fixtures {
            let raw = fs::read(&eml).expect("fixture readable");
            let actual = normalize(&raw, &NormalizeLimits::default());
            let expected_path = eml.with_extension("json");
            let failed_path = eml.with_extension("failed");
            if update {
                fs::write(&expected_path, pretty(&actual)).expect("expectation written");
                let _ = fs::remove_file(&failed_path);
                continue;
            }
            let expected: Option<NormalizedMessage> = fs::read_to_string(&expected_path)
                .ok()
                .and_then(|json| serde_json::from_str(&json).ok());
            if expected.as_ref() == Some(&actual) {
                let _ = fs::remove_file(&failed_path);
            } else {
                fs::write(&failed_path, pretty(&actual)).expect("actual output written");
                failures.push(failed_path.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) differ from their expected JSON; actual output in:\n{}\n\
         review, then accept with UPDATE_GOLDEN=1",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_outputs_hold_the_text_invariants() {
    for folder in FOLDERS {
        for eml in fixtures_in(folder) {
            let raw = fs::read(&eml).expect("fixture readable");
            let json = pretty(&normalize(&raw, &NormalizeLimits::default()));
            assert!(
                !json.contains("\\u0000"),
                "{} produced a NUL",
                eml.display()
            );
        }
    }
}
