#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! The documentation's links: every relative link in README.md and docs/*.md must name a
//! file of the repository, and its `#anchor`, if any, a heading of the target (GitHub's
//! slugs). README.md must stay short enough to read in five minutes.
//!
//! Links inside code (fenced blocks and `inline spans`) are not links and are skipped, as are
//! absolute URLs. Plain Rust on purpose: no Markdown parser, only what these files use.

use std::collections::HashSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// README.md's budget in bytes: a newcomer reads it in five minutes.
const README_MAX_BYTES: usize = 16_000;

/// Top-level folders that exist in a working tree but not in the repository.
const NOT_IN_REPOSITORY: [&str; 2] = ["target", "data"];

mod common;

use common::repo_root as root;

/// README.md and every docs/*.md, as paths relative to the repository root.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// A link found in a Markdown text: its 1-based line and its target as written.
#[derive(Debug, PartialEq)]
struct Link {
    line: usize,
    target: String,
}

/// Calls `visit` with each line outside fenced code blocks and its 1-based number, and
/// whether it starts a new paragraph (after a blank line, a fence or a heading).
fn prose_lines(text: &str, mut visit: impl FnMut(usize, &str, bool)) {
    let mut in_fence = false;
    let mut fresh = true;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            fresh = true;
            continue;
        }
        if in_fence {
            continue;
        }
        if trimmed.is_empty() {
            fresh = true;
            continue;
        }
        visit(i + 1, line, fresh);
        fresh = trimmed.starts_with('#');
    }
}

/// The inline and reference-style links of a Markdown text, outside code.
fn links(text: &str) -> Vec<Link> {
    let mut found = Vec::new();
    // The length of the backtick run that opened the code span we are in (spans may
    // continue on the next line of the same paragraph).
    let mut code: Option<usize> = None;
    prose_lines(text, |line_no, line, fresh| {
        if fresh {
            code = None;
        }
        if code.is_none()
            && let Some(rest) = line.trim_start().strip_prefix('[')
            && let Some((_, after)) = rest.split_once("]: ")
        {
            found.push(Link { line: line_no, target: after.trim().to_string() });
            return;
        }
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'`' {
                let run = bytes[i..].iter().take_while(|&&b| b == b'`').count();
                code = match code {
                    None => Some(run),
                    Some(open) if open == run => None,
                    other => other,
                };
                i += run;
                continue;
            }
            if code.is_none() && bytes[i] == b']' && bytes.get(i + 1) == Some(&b'(') {
                let start = i + 2;
                if let Some(len) = line[start..].find(')') {
                    let target = line[start..start + len].split_whitespace().next().unwrap_or("");
                    found.push(Link { line: line_no, target: target.to_string() });
                    i = start + len;
                    continue;
                }
            }
            i += 1;
        }
    });
    found
}

/// GitHub's anchor for a heading's text: lowercase; letters, digits, `-` and `_` kept,
/// spaces turned into `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The text a heading shows: `[text](url)` becomes `text`.
fn heading_text(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|at| open + at) else { break };
        let Some(end) = rest[close..].find(')').map(|at| close + at) else { break };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The anchors of a Markdown text's headings, with GitHub's `-1`, `-2` … for repeats.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    prose_lines(text, |_, line, _| {
        let hashes = line.bytes().take_while(|&b| b == b'#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            return;
        }
        let base = slug(&heading_text(line[hashes..].trim().trim_end_matches('#')));
        let mut anchor = base.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    });
    seen
}

/// `path` with `.` and `..` resolved, without touching the file system; `None` when it
/// climbs above its start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Why the link at `from` (a file relative to `root`) to `target` is broken, if it is.
fn check_link(root: &Path, from: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("empty link".into());
    }
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        let joined = from.parent().unwrap_or(Path::new("")).join(path);
        let Some(file) = normalize(&joined) else {
            return Some(format!("`{path}` leads out of the repository"));
        };
        if file.components().next().is_some_and(|c| NOT_IN_REPOSITORY.iter().any(|n| c.as_os_str() == *n)) {
            return Some(format!("`{}` is not part of the repository", file.display()));
        }
        if !root.join(&file).exists() {
            return Some(format!("`{}` does not exist", file.display()));
        }
        file
    };
    let anchor = anchor?;
    if file.extension().is_none_or(|ext| ext != "md") {
        return Some(format!("anchor `#{anchor}` on `{}`, which is not Markdown", file.display()));
    }
    let text = fs::read_to_string(root.join(&file)).ok()?;
    if anchors(&text).contains(anchor) {
        None
    } else {
        Some(format!("`{}` has no heading `#{anchor}`", file.display()))
    }
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = root();
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in doc_files() {
        let text = fs::read_to_string(root.join(&file)).unwrap();
        for link in links(&text) {
            checked += 1;
            if let Some(why) = check_link(&root, &file, &link.target) {
                broken.push(format!("{}:{}: ({}) {why}", file.display(), link.line, link.target));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    // README.md links into every guide: far fewer links would mean the scan missed them.
    assert!(checked >= 20, "only {checked} links found; is the link scanner broken?");
}

#[test]
fn readme_stays_short() {
    let size = fs::metadata(root().join("README.md")).unwrap().len() as usize;
    assert!(
        size < README_MAX_BYTES,
        "README.md is {size} bytes; keep it under {README_MAX_BYTES} and move detail into docs/"
    );
}

#[test]
fn scanner_finds_links_outside_code_only() {
    let text = "# Title\n\nSee [a](a.md) and [`b`](docs/b.md#part), not `[c](c.md)`, nor\n\
                a span `over\n[d](d.md)` two lines.\n\n```\n[e](e.md)\n```\n\n[f]: f.md\n";
    let found = links(text);
    let targets: Vec<(usize, &str)> = found.iter().map(|l| (l.line, l.target.as_str())).collect();
    assert_eq!(targets, [(3, "a.md"), (3, "docs/b.md#part"), (11, "f.md")]);
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug("Trying a callback: check and explain"), "trying-a-callback-check-and-explain");
    assert_eq!(slug("Files, rules and the default"), "files-rules-and-the-default");
    assert_eq!(slug(&heading_text("Set-up with `cargo` and [Redis](x.md)")), "set-up-with-cargo-and-redis");
    let repeated = anchors("# A\n## Notes\n## Notes\n");
    assert!(["a", "notes", "notes-1"].iter().all(|a| repeated.contains(*a)), "{repeated:?}");
}

#[test]
fn a_broken_link_or_anchor_is_reported() {
    let root = root();
    let from = Path::new("docs/policies.md");
    assert_eq!(check_link(&root, from, "../README.md#set-up"), None);
    assert_eq!(check_link(&root, from, "#validation"), None);
    assert_eq!(check_link(&root, from, "https://example.com/none"), None);
    assert!(check_link(&root, from, "../no-such-file.md").is_some());
    assert!(check_link(&root, from, "operations.md#no-such-heading").is_some());
    assert!(check_link(&root, from, "../../outside.md").is_some());
    assert!(check_link(&root, from, "../target/release/callgate").is_some());
    assert!(check_link(&root, from, "../Cargo.toml#anchor").is_some());
}
