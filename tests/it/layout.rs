//! The hot-function list that release builds link in its order (build.rs,
//! benches/hot-functions.sh): one linker symbol name per line, the request path first.

use std::collections::HashSet;

fn listed() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/hot-functions.txt");
    let text = std::fs::read_to_string(path).expect("benches/hot-functions.txt is readable");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_hot_function_list_holds_one_symbol_name_per_line_without_repeats() {
    let names = listed();
    assert!(names.len() >= 100, "only {} names listed", names.len());
    let mut seen = HashSet::new();
    for name in &names {
        // What the linker reads as one name: no blanks, no comment sign, the characters of
        // mangled Rust (legacy `_ZN`, v0 `_R`) and C symbol names.
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.')),
            "not a symbol name: {name:?}"
        );
        assert!(seen.insert(name), "listed twice: {name}");
    }
}

#[test]
fn the_hot_function_list_starts_with_the_http_request_path() {
    let names = listed();
    let first = &names[..names.len().min(20)];
    for path in ["4wasp5proxy4http5serve", "5hyper5proto2h1"] {
        assert!(
            first.iter().any(|n| n.contains(path)),
            "no function of {path} among the first 20: {first:#?}"
        );
    }
}
