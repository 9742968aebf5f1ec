//! No import cycle between the modules of any crate of the workspace: within each crate, the
//! modules that share a parent (the crate's top-level modules, a `plan/` directory's stages)
//! form a DAG under `crate::` and `super::` references. A child using its ancestors, and a
//! parent using its children, are not counted: only siblings can form a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `[a, b]`; `lib.rs`, `main.rs` → `[]`.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Module = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The paths (as segments) after each `crate::` / `super::` in `text`, relative paths made
/// absolute from `here`; `use crate::{a::X, b}` yields `[a, X]` and `[b]`.
fn references(text: &str, here: &Module) -> Vec<Module> {
    let mut out = Vec::new();
    for (kw, base) in [("crate::", Vec::new()), ("super::", here[..here.len().saturating_sub(1)].to_vec())] {
        let mut rest = text;
        while let Some(i) = rest.find(kw) {
            let before = rest[..i].chars().last();
            rest = &rest[i + kw.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let groups: Vec<&str> = if let Some(g) = rest.strip_prefix('{') {
                g.split('}').next().unwrap_or("").split(',').map(str::trim).collect()
            } else {
                vec![rest]
            };
            for g in groups {
                let mut path = base.clone();
                let mut s = g;
                while let Some(id) = ident_at(s) {
                    path.push(id.to_string());
                    match s[id.len()..].strip_prefix("::") {
                        Some(r) => s = r,
                        None => break,
                    }
                }
                out.push(path);
            }
        }
    }
    out
}

/// The longest known module that is a prefix of `path`.
fn resolve(path: &Module, modules: &BTreeSet<Module>) -> Module {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| modules.contains(m)).unwrap_or_default()
}

fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        n: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let i = stack.iter().position(|s| s == n).unwrap_or(0);
                return Some(stack[i..].to_vec());
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    edges.keys().find_map(|n| visit(n, edges, &mut state, &mut Vec::new()))
}

fn crate_cycle(src: &Path) -> Option<Vec<Module>> {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for f in &files {
        let here = module_of(src, f);
        // Code only: a doc link (`[`crate::write`]`) is not a dependency.
        let text: String = std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for r in references(&text, &here) {
            let to = resolve(&r, &modules);
            // Siblings under the deepest common parent.
            let common = here.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common < here.len() && common < to.len() {
                edges.entry(here[..=common].to_vec()).or_default().insert(to[..=common].to_vec());
            }
        }
    }
    find_cycle(&edges)
}

#[test]
fn modules_form_a_dag_in_every_crate() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates).unwrap().map(|e| e.unwrap().path().join("src")).collect();
    dirs.sort();
    for src in dirs.iter().filter(|d| d.is_dir()) {
        checked += 1;
        if let Some(c) = crate_cycle(src) {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            panic!("{}: import cycle {} → {}", src.display(), names.join(" → "), names[0]);
        }
    }
    assert!(checked >= 7, "only {checked} crates found");
}

#[test]
fn the_checker_sees_a_cycle() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-dag-check");
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("plan")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod plan;").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::{b::X, plan};").unwrap();
    std::fs::write(src.join("b.rs"), "pub struct X; use crate::plan::stage::Y;").unwrap();
    std::fs::write(src.join("plan/mod.rs"), "mod stage; use super::a::Z;").unwrap();
    std::fs::write(src.join("plan/stage.rs"), "pub struct Y; use super::Q; use crate::plan::W;").unwrap();
    let c = crate_cycle(&src).expect("a → b → plan → a");
    assert_eq!(c.len(), 3, "{c:?}");
    std::fs::write(src.join("plan/mod.rs"), "mod stage;").unwrap();
    assert_eq!(crate_cycle(&src), None);
}
