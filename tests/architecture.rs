//! The rules of the house, checked on the source: a module names only modules below it; the
//! data plane and the control thread meet only through `server::handoff` (and the session
//! table and the layers below), never naming each other by any path; `unsafe` stays in `sys`;
//! functions of the server stay small enough to read at once.

use std::path::{Path, PathBuf};

/// Lines of one function in `src/server/` at most.
const MAX_FUNCTION_LINES: usize = 80;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without its comments (line comments and doc comments; block comments
/// are not used in this codebase) and without string literals' contents.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let mut code = String::new();
            let mut in_string = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' => in_string = !in_string,
                    '\\' if in_string => {
                        chars.next();
                    }
                    '/' if !in_string && chars.peek() == Some(&'/') => break,
                    _ if in_string => {}
                    _ => code.push(c),
                }
            }
            (i + 1, code)
        })
        .collect()
}

/// Every place in `dir`'s code that names `module` as a path segment (`x::module::`,
/// `module::`, `use ...::module`, `{module, ...}`).
fn names_module(dir: &Path, module: &str) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(dir) {
        for (n, code) in code_lines(&file) {
            let bytes = code.as_bytes();
            let mut from = 0;
            while let Some(at) = code[from..].find(module) {
                let start = from + at;
                let end = start + module.len();
                let before = bytes.get(start.wrapping_sub(1)).copied().unwrap_or(b' ');
                let after = bytes.get(end).copied().unwrap_or(b' ');
                let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
                let as_path = code[end..].starts_with("::")
                    || code[..start].trim_end().ends_with("::")
                    || (code.trim_start().starts_with("use ") && !ident(after));
                if !ident(before) && !ident(after) && as_path {
                    found.push(format!("{}:{n}: {}", file.display(), code.trim()));
                }
                from = end;
            }
        }
    }
    found
}

#[test]
fn the_data_plane_and_the_control_thread_never_name_each_other() {
    let server = root().join("src/server");
    let crossings: Vec<String> = names_module(&server.join("dataplane"), "control")
        .into_iter()
        .chain(names_module(&server.join("control"), "dataplane"))
        .collect();
    assert!(
        crossings.is_empty(),
        "the data plane and the control thread meet only through server::handoff; these \
         lines cross:\n{}",
        crossings.join("\n")
    );
}

#[test]
fn the_checker_sees_a_crossing() {
    // The rule above must be able to fail: a line naming the other side by a path is caught.
    let dir = std::env::temp_dir().join(format!("arch-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("x.rs"),
        "// control:: in a comment is fine\nlet s = \"control::x\";\nfn f(l: &crate::server::control::LoadSignal) {}\n",
    )
    .expect("write");
    let found = names_module(&dir, "control");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(":3:"), "{found:?}");
}

#[test]
fn unsafe_is_forbidden_outside_sys() {
    let src = root().join("src");
    let mut missing = Vec::new();
    for module in [
        "client", "config", "offload", "ops", "proto", "route", "server", "tunnel",
    ] {
        let file = src.join(module).join("mod.rs");
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if !text.contains("#![forbid(unsafe_code)]") {
            missing.push(file.display().to_string());
        }
    }
    // Any module at the crate's root besides these and `sys` must be added to the list.
    for entry in std::fs::read_dir(&src).expect("src") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let module = name.trim_end_matches(".rs");
        let known = [
            "client", "config", "offload", "ops", "proto", "route", "server", "tunnel", "sys",
            "cli", "lib", "main",
        ];
        assert!(
            known.contains(&module),
            "src/{name} is a new top-level module: add it to this test's list"
        );
    }
    assert!(
        missing.is_empty(),
        "#![forbid(unsafe_code)] missing in: {missing:?}"
    );
}

/// Functions (by their `fn` line) and how many lines each spans, found by brace counting.
fn function_lengths(path: &Path) -> Vec<(String, usize, usize)> {
    let lines = code_lines(path);
    let mut out = Vec::new();
    for (i, (n, code)) in lines.iter().enumerate() {
        let trimmed = code.trim_start();
        let Some(at) = trimmed.find("fn ") else {
            continue;
        };
        let head = &trimmed[..at];
        if !head
            .split_whitespace()
            .all(|w| w.starts_with("pub") || w == "const" || w == "unsafe")
        {
            continue;
        }
        let name: String = trimmed[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened) = (0i64, false);
        for (j, (_, line)) in lines[i..].iter().enumerate() {
            if !opened && line.trim_end().ends_with(';') && !line.contains('{') {
                break; // a declaration without a body
            }
            for c in line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth <= 0 {
                out.push((name.clone(), *n, j + 1));
                break;
            }
        }
    }
    out
}

#[test]
fn no_function_of_the_server_is_longer_than_a_screen() {
    let mut long = Vec::new();
    for file in rust_files(&root().join("src/server")) {
        for (name, line, len) in function_lengths(&file) {
            if len > MAX_FUNCTION_LINES {
                long.push(format!("{}:{line}: {name} ({len} lines)", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines in src/server (split them):\n{}",
        long.join("\n")
    );
}
