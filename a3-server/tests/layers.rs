//! The architecture, enforced: a3-server's top-level modules form layers, and a module may
//! use only modules of a strictly lower layer; the workspace's crates depend on each other
//! only as the design allows; XAPI method names live in `xapi/` only; `anyhow` is used in
//! main and cli only. In the spirit of
//! firecracker's `verify_dependencies` test, this reads the sources, so a new upward `use`
//! fails here and not in review.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// a3-server's top-level modules, lowest layer first. A module may use a module of a lower
/// row only: never one of its own row or a higher one. `lib.rs` documents the same map.
const LAYERS: &[&[&str]] = &[
    &["util"],
    &["config"],
    &["xapi"],
    &["catalog"],
    &["store", "pki"],
    &["inventory", "ssh", "dataport"],
    &["sr"],
    &["fleet"],
    &["jobs"],
    &["api"],
    &["server"],
    &["cli"],
];

/// What the CLI may use: it is a client of the API, so it sees the API's wire types, plus
/// what `serve` and the direct (API-less) SSH mode need.
const CLI_MAY_USE: &[&str] = &["api::dto", "config", "server", "ssh", "util"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// Drops `//` comments (doc links to other modules are not dependencies).
fn code_only(source: &str) -> String {
    source
        .lines()
        .map(|line| line.find("//").map_or(line, |i| &line[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every crate path `source` refers to, as `a::b` (two segments at most): `crate::a::b`,
/// each item of `crate::{a::b, c}`, and `super::…` that climbs out of the top module.
/// `module_path` is the file's module path (`["jobs", "backup"]` for jobs/backup.rs).
fn crate_paths(module_path: &[&str], source: &str) -> BTreeSet<String> {
    let code = code_only(source);
    let mut paths = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths.insert(two_segments(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            if !item.trim().is_empty() {
                paths.insert(two_segments(item.trim()));
            }
        } else {
            paths.insert(two_segments(rest));
        }
    }
    for (i, _) in code.match_indices("super::") {
        // Only the first `super::` of a chain counts.
        if code[..i].ends_with("super::") {
            continue;
        }
        let mut rest = &code[i..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        if ups >= module_path.len() {
            paths.insert(two_segments(rest));
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

/// `a::b` of `a::b::c…`, or `a` alone.
fn two_segments(path: &str) -> String {
    let first = ident_at(path);
    match path[first.len()..].strip_prefix("::") {
        Some(rest) if !ident_at(rest).is_empty() => format!("{first}::{}", ident_at(rest)),
        _ => first.to_owned(),
    }
}

/// The layer rules `source`, a file of top-level module `module_path[0]`, breaks.
fn violations(module_path: &[&str], source: &str) -> Vec<String> {
    let top = module_path[0];
    let Some(own) = layer_of(top) else {
        return vec![format!("module `{top}` is missing from LAYERS")];
    };
    let mut found = Vec::new();
    for path in crate_paths(module_path, source) {
        let target = path.split("::").next().unwrap_or_default();
        if target == top {
            continue;
        }
        let Some(layer) = layer_of(target) else {
            continue; // an item of the crate root, or a `super::` inside an inline module
        };
        if top == "cli" {
            if !CLI_MAY_USE
                .iter()
                .any(|allowed| path == *allowed || target == *allowed)
            {
                found.push(format!(
                    "cli uses `crate::{path}`: the CLI may use only {CLI_MAY_USE:?}"
                ));
            }
        } else if layer >= own {
            found.push(format!(
                "`{top}` (layer {own}) uses `crate::{path}` (layer {layer}): a module may use \
                 only lower layers"
            ));
        }
    }
    found
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

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `["jobs", "backup"]` for src/jobs/backup.rs, `["jobs"]` for src/jobs/mod.rs.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut tops = BTreeSet::new();
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let path = module_path(rel);
        if path == ["lib"] || path == ["main"] {
            continue;
        }
        tops.insert(path[0].clone());
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        let source = std::fs::read_to_string(&file).unwrap();
        for v in violations(&parts, &source) {
            found.push(format!("{}: {v}", rel.display()));
        }
    }
    assert!(found.is_empty(), "layer violations:\n{}", found.join("\n"));
    let declared: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|r| r.iter())
        .map(|m| m.to_string())
        .collect();
    assert_eq!(
        tops, declared,
        "LAYERS must list exactly the modules of src/"
    );
}

#[test]
fn an_upward_use_is_rejected() {
    let fixture = include_str!("fixtures/upward_use.rs");
    let found = violations(&["store", "gc"], fixture);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].contains("`store` (layer 4) uses `crate::dataport::DataPort`"));
    assert!(found[1].contains("uses `crate::jobs::Engine`"));
    assert!(
        found[2].contains("uses `crate::pki::Ca`"),
        "same layer is refused too"
    );
    // Lower layers, comments and the module's own paths pass.
    assert!(
        violations(
            &["store"],
            "use crate::catalog::Catalog; // crate::jobs\nuse crate::store::fs;"
        )
        .is_empty()
    );
    // The CLI sees the API's wire types, not the domain.
    assert!(violations(&["cli", "jobs"], "use crate::api::dto::JobDetail;").is_empty());
    assert_eq!(
        violations(&["cli", "jobs"], "use crate::jobs::BackupSpec;").len(),
        1
    );
    assert_eq!(
        violations(&["cli", "jobs"], "use crate::api::jobs::JobDetail;").len(),
        1
    );
}

/// The `[dependencies]`-like tables of a crate's manifest, by name: `(section, crate)`.
fn dependencies(krate: &str) -> Vec<(String, String)> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let mut deps = Vec::new();
    let mut tables: Vec<(String, &toml::Table)> = vec![("".into(), &doc)];
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for (cfg, t) in targets {
            if let Some(t) = t.as_table() {
                tables.push((format!("target.{cfg}."), t));
            }
        }
    }
    for (prefix, table) in tables {
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(t) = table.get(section).and_then(|t| t.as_table()) {
                for name in t.keys() {
                    deps.push((format!("{prefix}{section}"), name.clone()));
                }
            }
        }
    }
    deps
}

#[test]
fn crates_depend_only_as_the_design_allows() {
    let rules: &[(&str, &[&str], bool)] = &[
        // (crate directory, crates it must not depend on, dev-dependencies exempt?)
        ("shared", &["a3-server", "abd-agent", "xapi-sim"], false),
        ("a3-server", &["abd-agent", "xapi-sim"], true),
        ("xapi-sim", &["a3-server"], false),
        ("abd-agent", &["a3-server", "xapi-sim"], false),
    ];
    let mut found = Vec::new();
    for (krate, banned, dev_ok) in rules {
        for (section, dep) in dependencies(krate) {
            if banned.contains(&dep.as_str()) && !(*dev_ok && section.ends_with("dev-dependencies"))
            {
                found.push(format!("{krate} depends on {dep} in [{section}]"));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    // The agent reaches the A3 through a3-shared only.
    assert!(
        dependencies("abd-agent")
            .iter()
            .any(|(_, d)| d == "a3-shared")
    );
}

/// XAPI class prefixes of method names, as in `"VM.snapshot"` or `"Async.VBD.plug"`.
const XAPI_CLASSES: &[&str] = &[
    "VM", "VBD", "VDI", "VIF", "SR", "PBD", "PIF", "pool", "host", "task", "network", "session",
    "event", "message", "Bond", "VLAN", "console", "blob",
];

/// String literals in `source` that name an XAPI method.
fn xapi_method_names(source: &str) -> Vec<String> {
    let code = code_only(source);
    let mut found = Vec::new();
    for (i, _) in code.match_indices('"') {
        let rest = &code[i + 1..];
        let rest = rest.strip_prefix("Async.").unwrap_or(rest);
        for class in XAPI_CLASSES {
            if let Some(after) = rest.strip_prefix(class).and_then(|r| r.strip_prefix('.'))
                && after.starts_with(|c: char| c.is_ascii_lowercase())
            {
                found.push(format!("\"{class}.{}", ident_at(after)));
            }
        }
    }
    found
}

#[test]
fn xapi_method_names_live_in_xapi_only() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        if rel.starts_with("xapi") {
            continue;
        }
        for name in xapi_method_names(&std::fs::read_to_string(&file).unwrap()) {
            found.push(format!("{}: {name}", rel.display()));
        }
    }
    assert!(
        found.is_empty(),
        "call XAPI through a typed function in a3-server/src/xapi/ops.rs:\n{}",
        found.join("\n")
    );
    // The scanner itself: a method name is found, a class name or a message is not.
    assert_eq!(
        xapi_method_names(r#"call("Async.VM.snapshot"); record("VM"); "VM. is off""#),
        vec!["\"VM.snapshot".to_owned()]
    );
}

/// Whether `source` uses `anyhow` (in code, not comments).
fn uses_anyhow(source: &str) -> bool {
    code_only(source).contains("anyhow")
}

#[test]
fn anyhow_is_used_only_at_the_edge() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let found: Vec<String> = files
        .iter()
        .filter(|file| {
            let rel = file.strip_prefix(&src).unwrap();
            !(rel.starts_with("cli") || rel == Path::new("main.rs"))
        })
        .filter(|file| uses_anyhow(&std::fs::read_to_string(file).unwrap()))
        .map(|file| file.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert!(
        found.is_empty(),
        "give the area its own thiserror enum; anyhow belongs to main and cli only:\n{}",
        found.join("\n")
    );
    assert!(uses_anyhow("fn f() -> anyhow::Result<()> {}"));
    assert!(!uses_anyhow("// not anyhow here"));
}
