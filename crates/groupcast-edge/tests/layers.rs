//! The edge's floors hold: a module imports only from its own floor or the
//! ones below (base < sessions < control plane < server), so the crate has
//! no import circle between floors. `src/lib.rs` and `docs/architecture.md`
//! describe the floors; this test keeps them true when code moves.
//!
//! It reads the sources as text: every `crate::<module>` path outside
//! comments and test modules is an import of that module.

use std::path::{Path, PathBuf};

/// The floor of a top-level module of `src/`; `None` for an unknown one
/// (which fails the test: a new module must be given its floor here).
fn floor(module: &str) -> Option<u8> {
    Some(match module {
        "config" | "glob" | "origin" | "routes" | "auth" | "conn" | "keepalive" | "limits"
        | "proxy" | "webhooks" | "metrics" | "request_deadlines" | "tls" | "state" | "backbone"
        | "publish_gate" | "holder" | "fence" => 0,
        "session" | "relay" | "socketio" => 1,
        "control" => 2,
        "server" | "lib" => 3,
        // An item of the crate root (`crate::EdgeError`, a re-export).
        m if m.starts_with(|c: char| c.is_ascii_uppercase()) => 3,
        _ => return None,
    })
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`session/connect.rs` → `session`).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let body = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level module named by a `crate::` path in `code`, including
/// grouped imports (`use crate::{a, b::C}`).
fn imported(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find("};").unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn every_module_imports_only_its_own_floor_or_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut wrong = Vec::new();
    for file in &files {
        let me = top_module(&src, file);
        let Some(my_floor) = floor(&me) else {
            wrong.push(format!(
                "{}: module {me:?} has no floor in this test",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for other in imported(&code(&text)) {
            if other == me {
                continue;
            }
            match floor(&other) {
                None => wrong.push(format!(
                    "{}: imports crate::{other}, a module with no floor",
                    file.display()
                )),
                Some(f) if f > my_floor => wrong.push(format!(
                    "{}: {me} (floor {my_floor}) imports crate::{other} (floor {f})",
                    file.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports running up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for file in &files {
        let me = top_module(&src, file);
        let text = std::fs::read_to_string(file).expect("read source");
        let entry = edges.entry(me.clone()).or_default();
        for other in imported(&code(&text)) {
            if other != me {
                entry.insert(other);
            }
        }
    }
    // Depth-first search; a module met again on the current path closes a circle.
    fn visit(
        m: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = Default::default();
    for m in edges.keys() {
        if let Some(circle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_base_floor_never_reaches_a_session_or_the_control_plane() {
    // The check above on a known bad line, so it cannot pass vacuously.
    let bad = "use crate::control::api::handle;\nuse crate::{conn::Conn, session};";
    assert_eq!(imported(&code(bad)), ["control", "conn", "session"]);
    assert_eq!(floor("control"), Some(2));
    assert!(floor("state") < floor("session"));
    // Comments and test modules do not count.
    let commented =
        "// see crate::control\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::server; }";
    assert!(imported(&code(commented)).is_empty());
}
