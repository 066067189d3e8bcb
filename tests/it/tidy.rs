//! Rules kept by tests rather than by review.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn keys_of(toml_text: &str) -> BTreeSet<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_table() {
                    walk(&p, v, out)
                } else {
                    out.insert(p);
                }
            }
        }
    }
    let v: toml::Value = toml::from_str(toml_text).unwrap();
    let mut out = BTreeSet::new();
    walk("", &v, &mut out);
    out
}

#[test]
fn every_setting_is_documented_in_the_example_config() {
    let example = keys_of(&std::fs::read_to_string(root().join("config/example.toml")).unwrap());
    let known = gmail_ingest::config::known_keys();
    let missing: Vec<_> = known.difference(&example).collect();
    assert!(missing.is_empty(), "config/example.toml lacks {missing:?}");
    let unknown: Vec<_> = example.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "config/example.toml documents keys that do not exist: {unknown:?}"
    );
}

#[test]
fn the_example_config_loads() {
    let dir = root().join("config");
    let s = gmail_ingest::config::Settings::load_from(&dir, Some(&dir.join("example.toml")), &[]);
    assert!(s.is_ok(), "{:?}", s.err());
}

#[test]
fn every_metric_is_listed_in_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (name, _) in gmail_ingest::events::METRICS {
        assert!(
            readme.contains(&format!("`{name}")),
            "README.md does not list {name}"
        );
    }
}
