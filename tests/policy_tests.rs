#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! `callgate test`: the shipped cases pass, a failing case is reported with its place, the
//! expectation and the trace, and malformed test files are refused with `file:line`.

mod common;

use common::PolicyDir;

fn callgate_test(policies: &str) -> (i32, String) {
    common::callgate_stdout(&["test", "--policies", policies])
}

/// Runs `callgate test` on `dir`, with the directory shown as `{dir}`.
fn run(dir: &PolicyDir) -> (i32, String) {
    let path = dir.path().to_str().unwrap();
    let (code, stdout) = callgate_test(path);
    (code, stdout.replace(path, "{dir}"))
}

const POLICY: &str = "\
rules:
  - id: no-sys
    on: [callbackBeforeAddBlackCommand]
    when:
      blackUserID: { regex: '^sys_' }
    decision: deny
    error: { code: 20001, message: \"system accounts\" }
  - id: trial
    when:
      blackUserID: { regex: '^guest_' }
    decision: deny
    error: { code: 20004, message: \"guests\" }
    mode: dry_run
  - id: rate
    rate_cap: { key: [ownerUserID], max: 3, per: 1m }
    decision: deny
    error: { code: 20002, message: \"slow down\" }
";

#[test]
fn shipped_cases_pass() {
    let (code, stdout) = callgate_test("policies");
    assert_eq!(code, 0, "{stdout}");
    let last = stdout.lines().last().unwrap();
    let passed: usize = last.strip_suffix(" passed, 0 failed").unwrap_or_else(|| panic!("{stdout}")).parse().unwrap();
    assert!(passed >= 15, "{stdout}");
    assert_eq!(stdout, format!("{passed} passed, 0 failed\n"));
}

#[test]
fn a_failing_case_is_reported_with_place_expectation_and_trace() {
    let dir = PolicyDir::with("10-policy.yaml", POLICY);
    dir.write(
        "tests/cases.yaml",
        "\
# one passes, one fails
- name: system accounts cannot be blocked
  callback: { callbackCommand: callbackBeforeAddBlackCommand, ownerUserID: u_1, blackUserID: sys_1 }
  expect: { decision: deny, rule: no-sys, error_code: 20001 }

- name: guests are fine
  callback: { callbackCommand: callbackBeforeAddBlackCommand, ownerUserID: u_1, blackUserID: guest_1 }
  expect: { decision: allow, rule: default, dry_run: [] }
",
    );
    let (code, stdout) = run(&dir);
    assert_eq!(code, 1, "{stdout}");
    let want = "\
{dir}/tests/cases.yaml:6: test `guests are fine`: expected allow by the default (no dry run held), got allow by the default (dry run held for `trial`)
  not held     no-sys                                   {dir}/10-policy.yaml:2
  dry run      trial                                    {dir}/10-policy.yaml:8
  under cap    rate                                     {dir}/10-policy.yaml:14  (cap 0/3 in window)
  dry run: rule `trial` would deny
1 passed, 1 failed
";
    assert_eq!(stdout, want);
}

#[test]
fn every_expectation_is_checked() {
    let dir = PolicyDir::with("10-policy.yaml", POLICY);
    let deny = "callback: { callbackCommand: callbackBeforeAddBlackCommand, ownerUserID: u_1, blackUserID: sys_1 }";
    dir.write(
        "tests/cases.yaml",
        &format!(
            "\
- name: decision
  {deny}
  expect: {{ decision: allow }}
- name: rule
  {deny}
  expect: {{ decision: deny, rule: rate }}
- name: default
  {deny}
  expect: {{ decision: deny, rule: default }}
- name: error code
  {deny}
  expect: {{ decision: deny, error_code: 20002 }}
- name: error message
  {deny}
  expect: {{ decision: deny, error_message: nope }}
- name: dry run
  {deny}
  expect: {{ decision: deny, dry_run: [trial] }}
- name: all right
  {deny}
  expect: {{ decision: deny, rule: no-sys, error_code: 20001, error_message: system accounts, dry_run: [] }}
"
        ),
    );
    let (code, stdout) = run(&dir);
    assert_eq!(code, 1, "{stdout}");
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("{dir}")).collect();
    assert_eq!(
        failures,
        [
            "{dir}/tests/cases.yaml:1: test `decision`: expected allow, got deny by rule `no-sys` (errCode 20001)",
            "{dir}/tests/cases.yaml:4: test `rule`: expected deny by rule `rate`, got deny by rule `no-sys` (errCode 20001)",
            "{dir}/tests/cases.yaml:7: test `default`: expected deny by the default, got deny by rule `no-sys` (errCode 20001)",
            "{dir}/tests/cases.yaml:10: test `error code`: expected deny (errCode 20002), got deny by rule `no-sys` (errCode 20001)",
            "{dir}/tests/cases.yaml:13: test `error message`: expected deny (errMsg \"nope\"), got deny by rule `no-sys` (errCode 20001, errMsg \"system accounts\")",
            "{dir}/tests/cases.yaml:16: test `dry run`: expected deny (dry run held for `trial`), got deny by rule `no-sys` (errCode 20001, no dry run held)",
        ]
    );
    assert!(stdout.ends_with("\n1 passed, 6 failed\n"), "{stdout}");
}

#[test]
fn caps_give_the_count_already_in_the_window() {
    let dir = PolicyDir::with("10-policy.yaml", POLICY);
    let callback = "callback: { callbackCommand: callbackAfterRemoveBlackCommand, ownerUserID: u_1, blackUserID: u_2 }";
    dir.write(
        "tests/caps.yaml",
        &format!(
            "\
- name: the 3rd in a minute is allowed
  {callback}
  caps: {{ rate: 2 }}
  expect: {{ decision: allow, rule: default }}
- name: the 4th in a minute is refused
  {callback}
  caps: {{ rate: 3 }}
  expect: {{ decision: deny, rule: rate, error_code: 20002 }}
- name: the count is for the callback's own key, so no count means 0
  {callback}
  expect: {{ decision: allow, rule: default }}
- name: command may be given beside the callback
  command: callbackAfterRemoveBlackCommand
  callback: {{ ownerUserID: u_1 }}
  caps: {{ rate: 99 }}
  expect: {{ decision: deny, rule: rate }}
"
        ),
    );
    let (code, stdout) = run(&dir);
    assert_eq!((code, stdout.as_str()), (0, "4 passed, 0 failed\n"));
}

#[test]
fn a_malformed_test_file_is_refused_with_its_line() {
    let dir = PolicyDir::with("10-policy.yaml", POLICY);
    dir.write(
        "tests/a.yaml",
        "\
- name: fine
  callback: { callbackCommand: x }
  expect: { decision: allow }
- name: typo
  callback: { callbackCommand: x }
  expect:
    decision: allow
    rul: no-sys
",
    );
    let (code, stdout) = run(&dir);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stdout,
        "\
{dir}/tests/a.yaml:8: test `typo`: expect: unknown field `rul`, expected one of `decision`, `rule`, `error_code`, `error_message`, `dry_run`
1 error(s) in the test files; no test was run
"
    );
}

#[test]
fn a_test_file_that_is_not_yaml_is_explained_in_plain_words() {
    let dir = PolicyDir::with("10-policy.yaml", POLICY);
    dir.write("tests/a.yaml", "- name: fine\n  callback: { callbackCommand: x\n  expect: { decision: allow }\n");
    let (code, stdout) = run(&dir);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stdout,
        "\
{dir}/tests/a.yaml:2: unclosed `{`: the map that starts at column 13 has no `}`; end it with `}`, and separate its entries with `,`
1 error(s) in the test files; no test was run
"
    );
}

#[test]
fn cases_naming_what_the_set_lacks_are_refused_with_their_lines() {
    let dir = PolicyDir::with("10-policy.yaml", POLICY);
    dir.write(
        "tests/a.yaml",
        "\
- name: unknown rule
  callback: { callbackCommand: x }
  expect: { decision: deny, rule: no-sys-typo }
- name: a dry-run rule never decides
  callback: { callbackCommand: x }
  expect:
    decision: deny
    rule: trial
- name: not a dry-run rule
  callback: { callbackCommand: x }
  expect: { decision: allow, dry_run: [no-sys] }
- name: no such cap
  callback: { callbackCommand: x }
  caps: { no-sys: 4 }
  expect: { decision: allow }
- name: no command
  callback: { ownerUserID: u_1 }
  expect: { decision: allow }
- name: commands disagree
  command: a
  callback: { callbackCommand: b }
  expect: { decision: allow }
- name: an allow has no error code
  callback: { callbackCommand: x }
  expect: { decision: allow, error_code: 20001 }
",
    );
    dir.write("tests/b.yml", "name: not a list\n");
    let (code, stdout) = run(&dir);
    assert_eq!(code, 1, "{stdout}");
    let want = "\
{dir}/tests/a.yaml:3: test `unknown rule`: expect.rule: no rule `no-sys-typo` in the policy set; rules: no-sys, trial, rate
{dir}/tests/a.yaml:8: test `a dry-run rule never decides`: expect.rule: rule `trial` is in dry run and never decides; list it under `expect.dry_run`
{dir}/tests/a.yaml:11: test `not a dry-run rule`: expect.dry_run: rule `no-sys` is not in dry run (`mode: dry_run`), so it never appears here
{dir}/tests/a.yaml:14: test `no such cap`: caps: rule `no-sys` has no `rate_cap`, so a count for it means nothing
{dir}/tests/a.yaml:17: test `no command`: the callback has no `callbackCommand`; add it, or give the case a `command:`
{dir}/tests/a.yaml:20: test `commands disagree`: `command: a` disagrees with the callback's callbackCommand `b`; callgate refuses such a request
{dir}/tests/a.yaml:25: test `an allow has no error code`: expect: `error_code` and `error_message` are only checked with `decision: deny`
{dir}/tests/b.yml:1: invalid type: map, expected a sequence; a test file is a list of cases, each starting `- name: …`
8 error(s) in the test files; no test was run
";
    assert_eq!(stdout, want);
}

#[test]
fn a_policy_set_that_does_not_load_runs_no_test() {
    let dir = PolicyDir::with("10-policy.yaml", "rules:\n  - id: a\n    decision: deny\n");
    dir.write("tests/a.yaml", "- name: x\n  callback: { callbackCommand: x }\n  expect: { decision: allow }\n");
    let (code, stdout) = run(&dir);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stdout,
        "\
{dir}/10-policy.yaml:2: rule `a`: a deny needs `error: { code: N, message: \"...\" }` (code 100 or more)
1 error(s); the policy set did not load, so no test was run
"
    );
}

#[test]
fn no_test_files_is_zero_cases_with_a_hint() {
    let dir = PolicyDir::with("10-policy.yaml", POLICY);
    let (code, stdout) = run(&dir);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        stdout,
        "no test files in `{dir}/tests`; add *.yaml files of cases (README: Policy tests)\n0 passed, 0 failed\n"
    );
    // An empty test file is a file with no cases, and is not mistaken for a policy.
    dir.write("tests/empty.yaml", "# cases to come\n");
    assert_eq!(run(&dir), (0, "0 passed, 0 failed\n".to_string()));
}
