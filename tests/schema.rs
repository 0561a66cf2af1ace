#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! `schema/policy.schema.json` against the loader: shipped and feature-complete policies
//! pass both, bad policies of every shape the loader refuses fail the schema too, and
//! `callgate schema` prints the file byte for byte.

mod common;

use serde_json::Value;

fn schema() -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::repo_root().join("schema/policy.schema.json")).unwrap())
        .unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&schema()).unwrap()
}

/// A policy file as an editor's YAML language server sees it: YAML read as JSON.
fn as_json(yaml: &str) -> Value {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// The schema's complaints about `yaml`, one a line; empty when it passes.
fn schema_errors(validator: &jsonschema::Validator, yaml: &str) -> String {
    let instance = as_json(yaml);
    validator.iter_errors(&instance).map(|e| format!("{}: {e}\n", e.instance_path())).collect()
}

/// Whether `callgate validate` accepts a set made of this one file.
fn loader_accepts(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), yaml).unwrap();
    std::fs::create_dir(dir.path().join("lists")).unwrap();
    std::fs::write(dir.path().join("lists/vip.txt"), "vip_1\n").unwrap();
    let (code, stdout) = common::callgate_stdout(&["validate", "--policies", dir.path().to_str().unwrap()]);
    (code == 0, stdout)
}

#[test]
fn schema_is_a_valid_draft_07_schema() {
    let schema = schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    jsonschema::draft7::meta::validate(&schema).unwrap();
}

#[test]
fn every_shipped_policy_file_matches_the_schema() {
    let validator = validator();
    let mut files = 0;
    for entry in std::fs::read_dir(common::repo_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(schema_errors(&validator, &text), "", "{}", path.display());
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schema/policy.schema.json\n"),
            "{} should start with the schema modeline",
            path.display()
        );
        files += 1;
    }
    assert!(files >= 1, "no shipped policy file found");
}

#[test]
fn the_modeline_path_reaches_the_schema_from_the_policy_directory() {
    assert!(common::repo_root().join("policies").join("../schema/policy.schema.json").is_file());
}

/// Every construct of the language in one file, which both the loader and the schema accept.
const EVERY_FEATURE: &str = r#"
lists:
  staff: [admin_1, 1001, 2.5]
  vip: { file: lists/vip.txt }
rules:
  - id: "all.of_it:1-x"
    on: [callbackBeforeAddBlackCommand, "callbackAfter*", "*"]
    when:
      ownerUserID: { in_list: staff, not_in_list: vip, equals: admin_1, not_equals: 3, in: [a, 1, true], not_in: [b] }
      offlinePushInfo.title: { regex: '^x', not_regex: 'y$', exists: true }
      /atUserList/0: { exists: false }
      /a~1b~0c: { equals: false }
      users.0.userID: { equals: 1.5 }
      any:
        - blackUserID: { regex: '^guest_' }
        - not: { ownerUserID: { exists: true } }
      all:
        - a: { equals: x }
        - {}
      not:
        b: { equals: y }
    rate_cap: { key: [ownerUserID, /a/0, x.y], max: 1, per: 500ms }
    decision: deny
    error: { code: 100, message: "m", detail: "d" }
    mode: dry_run
  - id: one-command
    on: callbackBeforeAddBlackCommand
    rate_cap: { key: ownerUserID, max: 10, per: 1d }
    decision: allow
    mode: enforce
  - id: whole-rule-cap
    rate_cap: { key: [], max: 5, per: 30s }
    decision: deny
    error: { code: 2147483647, message: "busy" }
  - id: empty-when
    when: {}
    decision: allow
default: deny
error: { code: 20099, message: "not allowed" }
"#;

#[test]
fn every_feature_passes_the_loader_and_the_schema() {
    let (is_loaded, stdout) = loader_accepts(EVERY_FEATURE);
    assert!(is_loaded, "{stdout}");
    assert_eq!(schema_errors(&validator(), EVERY_FEATURE), "");
}

#[test]
fn empty_and_minimal_files_pass_the_loader_and_the_schema() {
    let validator = validator();
    for yaml in ["", "# nothing yet\n", "rules: []\n", "lists: {}\n", "default: allow\n"] {
        let (is_loaded, stdout) = loader_accepts(yaml);
        assert!(is_loaded, "{yaml:?}: {stdout}");
        assert_eq!(schema_errors(&validator, yaml), "", "{yaml:?}");
    }
}

/// Policies the loader refuses for their shape alone: the schema must refuse them too.
const SHAPE_ERRORS: &[(&str, &str)] = &[
    ("errCode 99", "rules: [{ id: a, decision: deny, error: { code: 99, message: m } }]"),
    ("errCode too large", "rules: [{ id: a, decision: deny, error: { code: 2147483648, message: m } }]"),
    ("errCode as text", "rules: [{ id: a, decision: deny, error: { code: '200', message: m } }]"),
    ("error without message", "rules: [{ id: a, decision: deny, error: { code: 200 } }]"),
    ("unknown key in error", "rules: [{ id: a, decision: deny, error: { code: 200, message: m, msg: x } }]"),
    ("misspelt rule key", "rules: [{ id: a, decison: allow }]"),
    ("unknown rule key", "rules: [{ id: a, decision: allow, mdoe: dry_run }]"),
    ("unknown key in a rate cap", "rules: [{ id: a, decision: allow, rate_cap: { max: 1, per: 1m, keys: [a] } }]"),
    ("unknown top-level key", "rule: []"),
    ("bad decision", "rules: [{ id: a, decision: maybe }]"),
    ("no decision", "rules: [{ id: a }]"),
    ("no id", "rules: [{ decision: allow }]"),
    ("bad id", "rules: [{ id: 'no spaces', decision: allow }]"),
    ("empty id", "rules: [{ id: '', decision: allow }]"),
    ("bad mode", "rules: [{ id: a, decision: allow, mode: dryrun }]"),
    ("deny without error", "rules: [{ id: a, decision: deny }]"),
    ("allow with error", "rules: [{ id: a, decision: allow, error: { code: 200, message: m } }]"),
    ("empty on", "rules: [{ id: a, on: [], decision: allow }]"),
    ("bad command", "rules: [{ id: a, on: [callback/After], decision: allow }]"),
    ("on a number", "rules: [{ id: a, on: 5, decision: allow }]"),
    ("unknown operator", "rules: [{ id: a, when: { f: { equal: x } }, decision: allow }]"),
    ("field without operator", "rules: [{ id: a, when: { f: {} }, decision: allow }]"),
    ("operator on a list", "rules: [{ id: a, when: { f: { equals: [1] } }, decision: allow }]"),
    ("exists not a boolean", "rules: [{ id: a, when: { f: { exists: 'yes' } }, decision: allow }]"),
    ("any not a list", "rules: [{ id: a, when: { any: { f: { equals: x } } }, decision: allow }]"),
    ("bad field in any", "rules: [{ id: a, when: { any: [{ f: { equl: x } }] }, decision: allow }]"),
    ("bad field in not", "rules: [{ id: a, when: { not: { f: 5 } }, decision: allow }]"),
    ("bad JSON pointer", "rules: [{ id: a, when: { /a~2b: { exists: true } }, decision: allow }]"),
    ("empty dotted part", "rules: [{ id: a, when: { a..b: { exists: true } }, decision: allow }]"),
    ("rate cap max 0", "rules: [{ id: a, rate_cap: { max: 0, per: 1m }, decision: allow }]"),
    ("rate cap without per", "rules: [{ id: a, rate_cap: { max: 1 }, decision: allow }]"),
    ("rate cap bad per", "rules: [{ id: a, rate_cap: { max: 1, per: 1 minute }, decision: allow }]"),
    ("rate cap zero per", "rules: [{ id: a, rate_cap: { max: 1, per: 0s }, decision: allow }]"),
    ("rate cap bad key", "rules: [{ id: a, rate_cap: { key: [owner..id], max: 1, per: 1m }, decision: allow }]"),
    ("list of lists", "lists: { a: [[1]] }"),
    ("list of booleans", "lists: { a: [true] }"),
    ("list file outside", "lists: { a: { file: ../vip.txt } }"),
    ("list file absolute", "lists: { a: { file: /etc/vip.txt } }"),
    ("list unknown key", "lists: { a: { path: vip.txt } }"),
    ("bad default", "default: maybe"),
    ("default deny without error", "default: deny"),
    ("error without default deny", "error: { code: 200, message: m }"),
    ("not a map", "- rules"),
];

#[test]
fn the_schema_refuses_what_the_loader_refuses_for_its_shape() {
    let validator = validator();
    let mut failures = Vec::new();
    for (what, yaml) in SHAPE_ERRORS {
        let (is_loaded, stdout) = loader_accepts(yaml);
        if is_loaded {
            failures.push(format!("{what}: the loader accepts it: {stdout}"));
        }
        if schema_errors(&validator, yaml).is_empty() {
            failures.push(format!("{what}: the schema accepts `{yaml}`"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The golden cases of tests/bad_policies the schema catches; the others need the whole
/// set, the file system, a regex engine or arithmetic (the 30d window limit), and the schema
/// lets them through.
const GOLDEN_SCHEMA_CATCHES: &[&str] = &[
    "empty_when",
    "equals_null",
    "errors_of_different_kinds_in_one_file",
    "null_message",
    "null_on",
    "allow_with_error",
    "bad_command_name",
    "bad_decision",
    "decision_is_a_list",
    "bad_json_pointer",
    "bad_mode",
    "bad_rule_id",
    "default_deny_without_error",
    "deny_without_error",
    "empty_on",
    "errcode_below_100",
    "errcode_too_large",
    "field_without_operator",
    "list_file_outside_dir",
    "rate_cap_bad_duration",
    "rate_cap_bad_key",
    "rate_cap_max_zero",
    "several_errors_at_once",
    "several_rules_broken_in_one_file",
    "unknown_key",
    "unknown_operator",
    "unknown_top_level_key",
    "redis_list_and_file",
    "list_cache_without_redis",
    "redis_list_bad_cache",
];
/// The golden cases that are not YAML at all: for the parser (and the editor) to report.
const GOLDEN_NOT_YAML: &[&str] = &[
    "bad_yaml",
    "yaml_bad_indentation",
    "yaml_escape_in_double_quotes",
    "yaml_tab_indent",
    "yaml_unclosed_bracket",
    "yaml_unclosed_quote",
];
const GOLDEN_BEYOND_THE_SCHEMA: &[&str] = &[
    "bad_regex",
    "default_twice",
    "duplicate_id",
    "duplicate_list",
    "list_file_missing",
    "rate_cap_window_too_long",
    "redis_list_cache_too_long",
    "unknown_list",
    // Which codes a rule may give depends on the commands its `on` reaches.
    "discard_on_openim",
    "tencent_code_out_of_range",
    "tencent_code_per_family_missing",
];

#[test]
fn the_schema_catches_the_golden_bad_policies_it_can_see() {
    let validator = validator();
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(common::repo_root().join("tests/bad_policies")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let mut errors = String::new();
        let mut is_not_yaml = false;
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&file).unwrap();
                // Malformed YAML is for the YAML parser (and the editor) to report.
                if serde_yaml_ng::from_str::<Value>(&text).is_ok() {
                    errors.push_str(&schema_errors(&validator, &text));
                } else {
                    is_not_yaml = true;
                }
            }
        }
        if GOLDEN_SCHEMA_CATCHES.contains(&name.as_str()) {
            if errors.is_empty() {
                failures.push(format!("{name}: the schema accepts it"));
            }
        } else if GOLDEN_NOT_YAML.contains(&name.as_str()) {
            if !is_not_yaml {
                failures.push(format!("{name}: listed as not YAML, but it parses"));
            }
        } else if GOLDEN_BEYOND_THE_SCHEMA.contains(&name.as_str()) {
            if !errors.is_empty() {
                failures.push(format!("{name}: the schema refuses it, move it to GOLDEN_SCHEMA_CATCHES:\n{errors}"));
            }
        } else {
            failures.push(format!(
                "{name}: new bad policy; check whether schema/policy.schema.json can refuse it, then list it in tests/schema.rs"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schema_command_prints_the_schema_file_byte_for_byte() {
    let (code, stdout) = common::callgate_stdout(&["schema"]);
    assert_eq!(code, 0);
    assert_eq!(stdout, std::fs::read_to_string(common::repo_root().join("schema/policy.schema.json")).unwrap());
}
