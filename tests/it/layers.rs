//! Dependency directions inside the product crate, as ARCHITECTURE.md writes
//! them ("Layers"): every `crate::…` path in `src/` names a module of a lower
//! layer than the file it appears in, or the file's own module. A forbidden
//! arrow fails with its file and line. The two stand-alone crates under
//! `crates/` may not depend on the product at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The product's modules from the bottom up. A module may use the modules of
/// the layers before its own, never its own layer's others nor a later one.
/// A new module must be placed here (the test names any file it cannot place).
const LAYERS: &[&[&str]] = &[
    &["domain"],
    &["secret_file"],
    &["config", "output", "google::error"],
    &["store"],
    &["events"],
    &["telemetry", "google", "listener"],
    &["oauth", "subscriptions"],
    &["groups"],
    &["sync::context"],
    &["sync::gate"],
    &["sync", "sync::engine"],
    &["http"],
    &["daemon"],
    &["app"],
    &["demo"],
    &["cli"],
];

/// Files that only declare modules or hand over to the library.
const EXEMPT: &[&str] = &["lib.rs", "main.rs"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The layered module a path such as `google::error::GoogleError` or
/// `sync::engine` belongs to: its two-segment form when that is listed,
/// else its first segment.
fn module_of_path(path: &str) -> String {
    let mut segments = path.split("::").map(str::trim);
    let first = segments.next().unwrap_or_default();
    match segments.next() {
        Some(second) if layer_of(&format!("{first}::{second}")).is_some() => {
            format!("{first}::{second}")
        }
        _ => first.to_owned(),
    }
}

/// The layered module of a source file under `src/`.
fn module_of_file(relative: &Path) -> String {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    module_of_path(&parts.join("::"))
}

/// Every path named after `crate::` in a source text, with its 1-based line,
/// `use crate::{a::X, b::{Y, Z}}` groups (over several lines, as rustfmt
/// writes them) split into their members. Comments are skipped.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    // Blank out comments, keeping every offset and line break in place.
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => format!("{}{}\n", &line[..at], " ".repeat(line.len() - at)),
            None => format!("{line}\n"),
        })
        .collect();
    let line_at = |offset: usize| code[..offset].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found;
        from = at + "crate::".len();
        // `other_crate::` is not this crate's path; `$crate::` (in our
        // macros) is.
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let start = from + 1;
            let mut depth = 1;
            let mut item = String::new();
            let mut item_at = start;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c == ',' {
                    out.push((item_at, std::mem::take(&mut item)));
                    item_at = start + i + 1;
                } else {
                    if item.trim().is_empty() && !c.is_whitespace() {
                        item_at = start + i;
                    }
                    item.push(c);
                }
            }
            out.push((item_at, item));
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push((at, rest[..end].to_owned()));
        }
    }
    out.into_iter()
        .map(|(at, p)| {
            let path: String = p.split_whitespace().collect();
            (line_at(at), path.trim_end_matches(':').to_owned())
        })
        .filter(|(_, p)| p.starts_with(|c: char| c.is_ascii_lowercase()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every forbidden arrow in the sources under `src`, as `file:line: message`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let shown = Path::new("src").join(relative).display().to_string();
        if EXEMPT.contains(&relative.to_string_lossy().as_ref()) {
            continue;
        }
        let module = module_of_file(relative);
        let Some(own) = layer_of(&module) else {
            found.push(format!(
                "{shown}: module `{module}` has no layer: add it to LAYERS in tests/it/layers.rs and to ARCHITECTURE.md"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, path) in crate_paths(&text) {
            let target = module_of_path(&path);
            if target == module {
                continue;
            }
            match layer_of(&target) {
                Some(l) if l < own => {}
                Some(_) => found.push(format!(
                    "{shown}:{line}: `{module}` may not use `crate::{path}`: `{target}` is not below it (ARCHITECTURE.md, Layers)"
                )),
                None => found.push(format!(
                    "{shown}:{line}: `crate::{path}` names `{target}`, which has no layer"
                )),
            }
        }
    }
    found
}

#[test]
fn modules_only_use_modules_of_lower_layers() {
    let found = violations(&root().join("src"));
    assert!(
        found.is_empty(),
        "forbidden dependency directions:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_layer_check_names_an_upward_import_with_its_file_and_line() {
    // Arrange: a copy of a few real modules plus one deliberate upward arrow.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("google")).unwrap();
    std::fs::create_dir_all(src.join("sync")).unwrap();
    std::fs::write(src.join("domain.rs"), "pub struct A;\n").unwrap();
    std::fs::write(
        src.join("google/gmail.rs"),
        "use crate::domain::A;\nuse crate::google::error::E;\n// use crate::cli::Ignored;\nfn f() {\n    let _ = crate::{domain::B, sync::engine::Pass};\n}\n",
    )
    .unwrap();
    std::fs::write(
        src.join("sync/gate.rs"),
        "use crate::sync::engine::SyncContext;\n",
    )
    .unwrap();
    std::fs::write(src.join("newthing.rs"), "use crate::domain::A;\n").unwrap();

    // Act
    let found = violations(src);

    // Assert: the group member, the gate's arrow and the unplaced module, nothing else.
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0]
            .starts_with("src/google/gmail.rs:5: `google` may not use `crate::sync::engine::Pass`"),
        "{found:#?}"
    );
    assert!(found[1].starts_with("src/newthing.rs: module `newthing` has no layer"));
    assert!(
        found[2].starts_with(
            "src/sync/gate.rs:1: `sync::gate` may not use `crate::sync::engine::SyncContext`"
        ),
        "{found:#?}"
    );
}

#[test]
fn crate_paths_are_read_from_plain_and_grouped_uses() {
    let paths = |text: &str| -> Vec<(usize, String)> { crate_paths(text) };
    let owned = |v: &[(usize, &str)]| -> Vec<(usize, String)> {
        v.iter().map(|(n, p)| (*n, (*p).to_owned())).collect()
    };
    assert_eq!(
        paths("use crate::store::Store;"),
        owned(&[(1, "store::Store")])
    );
    assert_eq!(
        paths("use crate::{\n    config::Settings,\n    store::{Store, StoreError},\n};\n"),
        owned(&[(2, "config::Settings"), (3, "store::{Store,StoreError}")])
    );
    assert_eq!(
        paths("// crate::cli\n    let s = crate::output::progress(x); // crate::cli\n"),
        owned(&[(2, "output::progress")])
    );
    assert_eq!(
        paths("macro! { $crate::domain::X }"),
        owned(&[(1, "domain::X")])
    );
    assert!(paths("use gmail_emulator_crate::X;").is_empty());
    assert!(paths("use gmail_normalize::PayloadPart;").is_empty());
}

/// The stand-alone crates: nothing of the product in their manifests or sources.
#[test]
fn the_stand_alone_crates_import_nothing_of_the_product() {
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let parsed: toml::Value = toml::from_str(&manifest).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(deps) = parsed.get(section).and_then(|d| d.as_table()) {
                assert!(
                    !deps.contains_key("gmail-ingest"),
                    "crates/{name}/Cargo.toml: [{section}] names gmail-ingest"
                );
            }
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            if let Some(n) = text.lines().position(|l| l.contains("gmail_ingest::")) {
                panic!("{}:{}: names gmail_ingest", file.display(), n + 1);
            }
        }
        checked.insert(name, files.len());
    }
    assert!(
        checked.contains_key("normalize"),
        "crates/normalize was not found: {checked:?}"
    );
}

/// The normalizer stays pure: mail-parser and small crates, nothing of ours,
/// nothing that does I/O on its behalf (ARCHITECTURE.md, Invariants).
#[test]
fn the_normalizer_depends_on_no_path_crate_and_no_runtime() {
    let manifest = std::fs::read_to_string(root().join("crates/normalize/Cargo.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&manifest).unwrap();
    let deps = parsed["dependencies"].as_table().unwrap();
    let names: Vec<&String> = deps.keys().collect();
    assert_eq!(
        names,
        ["mail-parser", "serde", "sha2", "thiserror"],
        "crates/normalize/Cargo.toml: the normalizer's dependencies changed; the fuzz build compiles each of them instrumented"
    );
}
