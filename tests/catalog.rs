#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! The catalog of commands and fields (`src/catalog.rs`) against the sample bodies in
//! tests/fixtures/samples: every sample's top-level keys are in its command's entry and
//! every entry's fields in its sample, every OpenIM command has a sample, and every sample a
//! command. A sample added or changed without the catalog (or the reverse) fails here.

use std::collections::BTreeSet;
use std::path::Path;

use callgate::catalog::{self, Server};

/// The top-level keys of each sample of `server`, by command (the file name).
fn samples(server: &str) -> Vec<(String, BTreeSet<String>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples").join(server);
    let mut samples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let command = path.file_stem().unwrap().to_str().unwrap().to_string();
            let body: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            (command, body.keys().cloned().collect())
        })
        .collect();
    samples.sort();
    samples
}

/// Every disagreement between the samples of `server` and the catalog's entries for them.
fn disagreements(server: &str, expected: Server) -> Vec<String> {
    let mut problems = Vec::new();
    for (command, keys) in samples(server) {
        let Some((found, entry)) = catalog::find(&command) else {
            problems.push(format!("{server}/{command}.json: `{command}` is not in the catalog"));
            continue;
        };
        if found != expected {
            problems.push(format!("{server}/{command}.json: the catalog has it as {found:?}"));
        }
        let fields: BTreeSet<String> = entry.fields.iter().map(ToString::to_string).collect();
        for key in keys.difference(&fields) {
            problems.push(format!("{server}/{command}.json: key `{key}` is not in the catalog's entry"));
        }
        for field in fields.difference(&keys) {
            problems.push(format!("{command}: the catalog lists `{field}`, which its sample does not carry"));
        }
        if entry.fields.len() != fields.len() {
            problems.push(format!("{command}: the catalog lists a field twice"));
        }
    }
    problems
}

#[test]
fn every_openim_sample_matches_its_catalog_entry() {
    let problems = disagreements("openim", Server::OpenIm);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_tencent_sample_matches_its_catalog_entry() {
    let problems = disagreements("tencent", Server::Tencent);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_openim_command_has_a_sample() {
    let sampled: BTreeSet<String> = samples("openim").into_iter().map(|(command, _)| command).collect();
    let missing: Vec<&str> = catalog::OPENIM.iter().map(|c| c.name).filter(|n| !sampled.contains(*n)).collect();
    assert!(missing.is_empty(), "no sample in tests/fixtures/samples/openim for {missing:?}");
}
