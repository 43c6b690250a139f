//! The crate's layers, as docs/architecture.md lists them: every module of
//! `src/` names (`crate::<module>`) only modules of lower layers. A file's
//! `#[cfg(test)] mod tests` block is not read.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;

/// Lowest first; modules on one line are one layer and may not use each
/// other either.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["names", "paths", "ident", "failpoint", "sys", "policy"],
    &["link", "holder", "netns"],
    &["ipam", "release", "rootless"],
    &["ports"],
    &["dns"],
    &["host"],
    &["sandbox", "attach"],
    &["network"],
    &["pod", "network_policy"],
    &["cni"],
    &["bin"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `src/<module>.rs` or `src/<module>/**.rs`, without test modules.
fn sources() -> Vec<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let module = rel.split(['/', '.']).next().unwrap().to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap()
                .to_owned();
            out.push((rel, module, code));
        }
    }
    out
}

/// The modules a line names: `crate::a::..` and `crate::{a, b::c}`.
fn uses(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or_default();
                out.extend(group.split(',').map(ident).filter(|m| !m.is_empty()));
            }
            None => out.push(ident(rest)),
        }
    }
    out
}

#[test]
fn the_reader_of_uses_sees_paths_and_groups() {
    assert_eq!(uses("use crate::link::nft::Nft;"), ["link"]);
    assert_eq!(
        uses("use crate::{link, netns::Enter, release};"),
        ["link", "netns", "release"]
    );
    assert_eq!(
        uses("let x = crate::ident::creator()?; crate::sys::f()"),
        ["ident", "sys"]
    );
}

#[test]
fn every_module_of_src_has_a_layer() {
    for (file, module, _) in sources() {
        if module != "lib" {
            assert!(
                layer_of(&module).is_some(),
                "{file}: module {module} has no layer"
            );
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let mut wrong = Vec::new();
    for (file, module, code) in sources() {
        let Some(own) = layer_of(&module) else {
            continue;
        };
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for used in uses(line) {
                if let Some(theirs) = layer_of(&used) {
                    if used != module && theirs >= own {
                        wrong.push(format!("{file}: {module} uses {used}: {}", line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses that go up or sideways:\n{}",
        wrong.join("\n")
    );
}
