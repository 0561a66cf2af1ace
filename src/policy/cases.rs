//! Policy test cases: the files in `tests/` beside the policies, each a list of callbacks
//! with the decision the policy set must reach, run by `callgate test`.
//!
//! This module reads and checks the case files and evaluates each case with
//! [`PolicySet::explain`]; it returns structured results and prints nothing. It also writes
//! cases ([`pinning_case`], for `callgate replay --write-cases`), through the same types
//! it reads, so what it writes is what it reads. The file format is documented in
//! docs/policies.md ("Policy tests").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lines::sequence_item_lines;
use super::model::{Place, TraceStep, is_policy_file_name};
use super::parse::{self, RawDecision};
use super::set::PolicySet;
use crate::catalog::CodeFamily;
use crate::decision::{Decision, Outcome};
use crate::event::{CommandError, CommandNaming, Event, resolve_command};

/// The directory, inside the policy directory, that holds the test files. The server loads
/// only files directly in the policy directory, so cases are never taken for policies.
pub const CASES_DIR: &str = "tests";

/// What `expect.rule` says when the default, not a rule, must decide.
const DEFAULT_RULE: &str = "default";

/// Why the test files could not be run. Each message starts with `file:line:`.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The test directory exists but cannot be listed.
    #[error("{}: cannot read the test directory: {source}", dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    /// A test file could not be read.
    #[error("{}:1: cannot read the file: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    /// The YAML is malformed or has an unknown key or a wrong type.
    #[error("{at}: {message}")]
    Syntax { at: Place, message: String },
    /// A case that cannot be run against this policy set as written.
    #[error("{at}: test `{name}`: {message}")]
    Case { at: Place, name: String, message: String },
}

/// The outcome of running every test file.
#[derive(Debug)]
pub struct CaseRun {
    /// The test files found, in the order run.
    pub files: Vec<PathBuf>,
    /// One report per case, in file order, then case order.
    pub reports: Vec<CaseReport>,
}

impl CaseRun {
    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.reports.iter().filter(|r| r.failure.is_none()).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.reports.len() - self.passed()
    }
}

/// What happened to one case.
#[derive(Debug)]
pub struct CaseReport {
    /// Where the case starts.
    pub at: Place,
    /// The case's name.
    pub name: String,
    /// The decision the policy set reached.
    pub decision: Decision,
    /// What happened to each rule, as `callgate check` shows it.
    pub trace: Vec<TraceStep>,
    /// `expected …, got …` when the case failed; `None` when it passed.
    pub failure: Option<String>,
}

/// One case as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    /// Decide as this command; by default the callback's `callbackCommand`.
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    /// The callback body.
    callback: Map<String, Value>,
    /// Rule id → allowed callbacks already in that rule's window for this callback's key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    caps: BTreeMap<String, u64>,
    expect: Expect,
}

/// What a case expects; every field but `decision` is checked only when given.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(deserialize_with = "parse::rule_decision")]
    decision: RawDecision,
    /// The rule that decides, or `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<String>,
    /// The dry-run rules that held, as a set.
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<BTreeSet<String>>,
}

/// A case checked against the policy set, ready to run.
struct Case {
    at: Place,
    name: String,
    command: String,
    body: Map<String, Value>,
    caps: BTreeMap<String, u64>,
    expect: Expect,
}

/// Reads every `*.yaml`/`*.yml` file in `policy_dir/tests`, in file-name order, checks each
/// case against `set`, and runs them all. No test directory means no cases. Fails whole
/// when any file or case is malformed: then no case is run.
pub fn run_cases(set: &PolicySet, policy_dir: &Path) -> Result<CaseRun, Vec<CaseError>> {
    let files = case_files(&policy_dir.join(CASES_DIR)).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut cases = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => read_cases(set, file, &text, &mut cases, &mut errors),
            Err(source) => errors.push(CaseError::Read { file: file.clone(), source }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let reports = cases.into_iter().map(|case| run_case(set, case)).collect();
    Ok(CaseRun { files, reports })
}

/// A case that pins what `set` decides for a callback: the decision, the deciding rule (or
/// `default`), the errCode of a refusal, and the dry-run rules that held (as a set, so also
/// that no other held). `caps` gives each rate-capped rule's count before the callback.
/// Returns the case as YAML (one `- name: …` list item), checked the way `callgate test`
/// checks it and run against `set`; `Err` says why it cannot pin the decision.
pub fn pinning_case(
    set: &PolicySet,
    name: String,
    command: &str,
    callback: Map<String, Value>,
    caps: BTreeMap<String, u64>,
    decision: &Decision,
) -> Result<String, String> {
    // Name the command only where the callback does not.
    let is_named = callback.get(CASE_NAMING.body_key).and_then(Value::as_str) == Some(command);
    let expect = Expect {
        decision: match decision.outcome {
            Outcome::Allow => RawDecision::Allow,
            Outcome::Deny(_) => RawDecision::Deny,
            Outcome::Discard => RawDecision::Discard,
        },
        rule: Some(decision.rule.as_deref().unwrap_or(DEFAULT_RULE).to_string()),
        error_code: decision.outcome.error_code().map(i64::from),
        error_message: None,
        dry_run: Some(dry_run_ids(decision)),
    };
    let case = RawCase { name, command: (!is_named).then(|| command.to_string()), callback, caps, expect };
    let text = serde_yaml_ng::to_string(&[&case]).map_err(|e| format!("cannot write the case as YAML: {e}"))?;
    // Read back as `callgate test` reads it: what is written is what is run.
    let file = Path::new("(written case)");
    let (mut cases, mut errors) = (Vec::new(), Vec::new());
    read_cases(set, file, &text, &mut cases, &mut errors);
    if let Some(e) = errors.first() {
        return Err(e.to_string());
    }
    for case in cases {
        if let Some(failure) = run_case(set, case).failure {
            return Err(failure);
        }
    }
    Ok(text)
}

fn case_files(dir: &Path) -> Result<Vec<PathBuf>, CaseError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CaseError::Dir { dir: dir.to_path_buf(), source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CaseError::Dir { dir: dir.to_path_buf(), source })?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if is_policy_file_name(&name) && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Parses one test file and checks its cases against `set`, appending to `cases` or
/// `errors`.
fn read_cases(set: &PolicySet, file: &Path, text: &str, cases: &mut Vec<Case>, errors: &mut Vec<CaseError>) {
    let raw: Vec<RawCase> = match serde_yaml_ng::from_str::<Option<Vec<RawCase>>>(text) {
        Ok(raw) => raw.unwrap_or_default(),
        Err(err) => {
            // YAML that does not parse at all is explained in plain words, as in policies.
            let (line, message) = match serde_yaml_ng::from_str::<serde::de::IgnoredAny>(text) {
                Err(syntax) => super::syntax::explain(text, &syntax),
                Ok(_) => {
                    let (line, message) = parse::split_yaml_error(&err);
                    (line, name_case_in_message(text, message))
                }
            };
            errors.push(CaseError::Syntax { at: Place { file: file.to_path_buf(), line }, message });
            return;
        }
    };
    let lines = CaseLines::new(text, raw.len());
    for (i, raw_case) in raw.into_iter().enumerate() {
        let mut fail = |needle: &str, message: String| {
            let at = Place { file: file.to_path_buf(), line: lines.within_case(i, needle) };
            errors.push(CaseError::Case { at, name: raw_case.name.clone(), message });
        };
        let problems = check_rule_ids(&raw_case, set, &mut fail);
        let command = case_command(&raw_case).map_err(|(needle, message)| fail(needle, message));
        let Ok(command) = command else { continue };
        if problems > 0 {
            continue;
        }
        cases.push(Case {
            at: Place { file: file.to_path_buf(), line: lines.case(i) },
            name: raw_case.name,
            command,
            body: raw_case.callback,
            caps: raw_case.caps,
            expect: raw_case.expect,
        });
    }
}

/// How a case names its command: `command:` beside the callback, or its `callbackCommand`
/// (OpenIM's key).
const CASE_NAMING: CommandNaming = CommandNaming {
    body_key: "callbackCommand",
    outside: "the case's `command:`",
    how: "the callback has no `callbackCommand`; add it, or give the case a `command:`",
};

/// The same for a Tencent callback, whose body names its command `CallbackCommand`.
const TENCENT_CASE_NAMING: CommandNaming = CommandNaming { body_key: "CallbackCommand", ..CASE_NAMING };

/// The command a case is decided as (the one resolver the servers use too), or the word
/// of the case to point at and why it has none.
fn case_command(case: &RawCase) -> Result<String, (&'static str, String)> {
    let is_tencent = !case.callback.contains_key("callbackCommand") && case.callback.contains_key("CallbackCommand");
    let naming = if is_tencent { &TENCENT_CASE_NAMING } else { &CASE_NAMING };
    resolve_command(naming, case.command.as_deref(), case.callback.get(naming.body_key)).map_err(|e| match e {
        CommandError::Missing { how } => ("callback:", how.to_string()),
        CommandError::Mismatch { named, body, body_key, .. } => (
            "command:",
            format!(
                "`command: {named}` disagrees with the callback's {body_key} `{body}`; callgate refuses such a request"
            ),
        ),
        CommandError::NotString { body_key } => (body_key, format!("the callback's `{body_key}` is not a string")),
        CommandError::Invalid(_) => ("command", format!("{e}; callgate refuses such a request")),
    })
}

/// Checks the rule ids a case names against the set, reporting each problem through
/// `fail(needle, message)`; returns how many it found.
fn check_rule_ids(case: &RawCase, set: &PolicySet, fail: &mut dyn FnMut(&str, String)) -> usize {
    let mut count = 0;
    let mut report = |needle: &str, message: String| {
        count += 1;
        fail(needle, message);
    };
    let rule = |id: &str| set.rules.iter().find(|r| &*r.id == id);
    let expect = &case.expect;
    match expect.rule.as_deref() {
        Some(DEFAULT_RULE) if rule(DEFAULT_RULE).is_some() => report(
            "rule:",
            "`rule: default` means the default decides, but a rule is also named `default`; rename that rule".into(),
        ),
        Some(DEFAULT_RULE) | None => {}
        Some(id) => match rule(id) {
            None => report(id, format!("expect.rule: no rule `{id}` in the policy set; {}", known_rules(set))),
            Some(r) if r.is_dry_run => report(
                id,
                format!("expect.rule: rule `{id}` is in dry run and never decides; list it under `expect.dry_run`"),
            ),
            Some(_) => {}
        },
    }
    if expect.decision == RawDecision::Allow && (expect.error_code.is_some() || expect.error_message.is_some()) {
        report("error_", "expect: `error_code` and `error_message` are only checked with `decision: deny`".into());
    }
    for id in expect.dry_run.iter().flatten() {
        match rule(id) {
            None => report(id, format!("expect.dry_run: no rule `{id}` in the policy set; {}", known_rules(set))),
            Some(r) if !r.is_dry_run => report(
                id,
                format!("expect.dry_run: rule `{id}` is not in dry run (`mode: dry_run`), so it never appears here"),
            ),
            Some(_) => {}
        }
    }
    for id in case.caps.keys() {
        match rule(id) {
            None => report(id, format!("caps: no rule `{id}` in the policy set; {}", known_rules(set))),
            Some(r) if r.rate_cap.is_none() => {
                report(id, format!("caps: rule `{id}` has no `rate_cap`, so a count for it means nothing"))
            }
            Some(_) => {}
        }
    }
    count
}

fn known_rules(set: &PolicySet) -> String {
    if set.rules.is_empty() {
        return "the set has no rules".into();
    }
    // A large set would drown the message; the first few show the naming.
    const SHOWN: usize = 20;
    let ids: Vec<&str> = set.rules.iter().take(SHOWN).map(|r| &*r.id).collect();
    match set.rules.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("rules: {}, and {more} more", ids.join(", ")),
        _ => format!("rules: {}", ids.join(", ")),
    }
}

fn run_case(set: &PolicySet, case: Case) -> CaseReport {
    let event = Event::offline(case.command, case.body);
    let cap_counts: HashMap<String, u64> = set
        .cap_checks_for(&event)
        .into_iter()
        .filter_map(|check| case.caps.get(&*check.rule).map(|&count| (check.key, count)))
        .collect();
    let (decision, trace) = set.explain(&event, &cap_counts);
    let family = event.code_family();
    let failure = (!case.expect.is_met_by(&decision, family)).then(|| {
        format!("expected {}, got {}", case.expect.describe(), case.expect.describe_actual(&decision, family))
    });
    CaseReport { at: case.at, name: case.name, decision, trace, failure }
}

impl Expect {
    fn is_met_by(&self, decision: &Decision, family: CodeFamily) -> bool {
        let refusal = match &decision.outcome {
            Outcome::Allow | Outcome::Discard => None,
            Outcome::Deny(r) => Some(r),
        };
        let is_decision_met = match self.decision {
            RawDecision::Allow => decision.outcome == Outcome::Allow,
            RawDecision::Deny => refusal.is_some(),
            RawDecision::Discard => decision.outcome == Outcome::Discard,
        };
        let is_rule_met = match self.rule.as_deref() {
            None => true,
            Some(DEFAULT_RULE) => decision.rule.is_none(),
            Some(id) => decision.rule.as_deref() == Some(id),
        };
        let is_code_met =
            self.error_code.is_none_or(|code| refusal.is_some_and(|r| i64::from(r.code_for(family)) == code));
        let is_message_met = self.error_message.as_ref().is_none_or(|m| refusal.is_some_and(|r| r.message == *m));
        let is_dry_run_met = self.dry_run.as_ref().is_none_or(|want| *want == dry_run_ids(decision));
        is_decision_met && is_rule_met && is_code_met && is_message_met && is_dry_run_met
    }

    /// The expectation in words, only what is checked:
    /// ``deny by rule `x` (errCode 20001, no dry run held)``.
    fn describe(&self) -> String {
        let mut text = match self.decision {
            RawDecision::Allow => "allow".to_string(),
            RawDecision::Deny => "deny".to_string(),
            RawDecision::Discard => "discard".to_string(),
        };
        match self.rule.as_deref() {
            None => {}
            Some(DEFAULT_RULE) => text.push_str(" by the default"),
            Some(id) => {
                let _ = write!(text, " by rule `{id}`");
            }
        }
        let mut details = Vec::new();
        if let Some(code) = self.error_code {
            details.push(format!("errCode {code}"));
        }
        if let Some(message) = &self.error_message {
            details.push(format!("errMsg {message:?}"));
        }
        if let Some(ids) = &self.dry_run {
            details.push(describe_dry_run(ids));
        }
        with_details(text, &details)
    }

    /// The decision in the same words, with the details this expectation checks.
    fn describe_actual(&self, decision: &Decision, family: CodeFamily) -> String {
        let mut text = decision.outcome.as_str().to_string();
        match decision.rule.as_deref() {
            None => text.push_str(" by the default"),
            Some(id) => {
                let _ = write!(text, " by rule `{id}`");
            }
        }
        let mut details = Vec::new();
        if let Outcome::Deny(refusal) = &decision.outcome {
            details.push(format!("errCode {}", refusal.code_for(family)));
            if self.error_message.is_some() {
                details.push(format!("errMsg {:?}", refusal.message));
            }
        }
        if self.dry_run.is_some() {
            details.push(describe_dry_run(&dry_run_ids(decision)));
        }
        with_details(text, &details)
    }
}

fn with_details(text: String, details: &[String]) -> String {
    if details.is_empty() { text } else { format!("{text} ({})", details.join(", ")) }
}

fn dry_run_ids(decision: &Decision) -> BTreeSet<String> {
    decision.dry_run.iter().map(|hit| hit.rule.to_string()).collect()
}

fn describe_dry_run(ids: &BTreeSet<String>) -> String {
    if ids.is_empty() {
        return "no dry run held".into();
    }
    let ids: Vec<String> = ids.iter().map(|id| format!("`{id}`")).collect();
    format!("dry run held for {}", ids.join(" and "))
}

/// Rewrites a message that starts with serde's path `.[N]…: ` to name the case:
/// `test `name`: expect: …`. The name is read from a loose parse of the same text. A file
/// that is not a list gets a hint.
fn name_case_in_message(text: &str, message: String) -> String {
    if message.starts_with("invalid type: ") && message.ends_with(", expected a sequence") {
        return format!("{message}; a test file is a list of cases, each starting `- name: …`");
    }
    let Some(rest) = message.strip_prefix(".[").or_else(|| message.strip_prefix('[')) else { return message };
    let Some((index, rest)) = rest.split_once(']') else { return message };
    let Ok(index) = index.parse::<usize>() else { return message };
    let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else { return message };
    let Some(name) = doc.get(index).and_then(|c| c.get("name")).and_then(|n| n.as_str()) else { return message };
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    let rest = rest.strip_prefix(": ").map_or_else(|| rest.to_string(), |r| r.to_string());
    format!("test `{name}`: {rest}")
}

/// The line on which each case of a file starts, found from the text. A block-style list
/// (the normal way to write cases) gets exact lines; anything else falls back to line 1.
struct CaseLines<'a> {
    lines: Vec<&'a str>,
    starts: Vec<usize>,
}

impl<'a> CaseLines<'a> {
    fn new(text: &'a str, case_count: usize) -> CaseLines<'a> {
        let lines: Vec<&str> = text.lines().collect();
        let mut starts = sequence_item_lines(&lines, 0);
        if starts.len() != case_count {
            starts.clear();
        }
        CaseLines { lines, starts }
    }

    /// The line where case `index` starts.
    fn case(&self, index: usize) -> usize {
        self.starts.get(index).copied().unwrap_or(1)
    }

    /// The first line of case `index` that contains `needle`, or the case's start.
    fn within_case(&self, index: usize, needle: &str) -> usize {
        let start = self.case(index);
        let end = self.starts.get(index + 1).copied().unwrap_or(self.lines.len() + 1);
        (start..end).find(|&n| self.lines.get(n - 1).is_some_and(|l| l.contains(needle))).unwrap_or(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_lines_block_style() {
        let text = "# cases\n- name: one\n  callback: {}\n\n- name: two\n  expect:\n    rule: x\n";
        let lines = CaseLines::new(text, 2);
        assert_eq!((lines.case(0), lines.case(1)), (2, 5));
        assert_eq!(lines.within_case(1, "rule:"), 7);
        assert_eq!(lines.within_case(0, "rule:"), 2);
    }

    #[test]
    fn case_lines_flow_style_falls_back() {
        let lines = CaseLines::new("[{name: a}, {name: b}]\n", 2);
        assert_eq!((lines.case(0), lines.case(1)), (1, 1));
    }

    #[test]
    fn parse_errors_name_the_case() {
        let text = "- name: first\n  callback: {}\n  expect: { decision: allow, rul: x }\n";
        let err = serde_yaml_ng::from_str::<Option<Vec<RawCase>>>(text).unwrap_err();
        let (line, message) = parse::split_yaml_error(&err);
        assert_eq!(line, 3, "{message}");
        assert!(message.starts_with(".[0].expect: unknown field `rul`"), "{message}");
        assert!(name_case_in_message(text, message).starts_with("test `first`: expect: unknown field `rul`"));
    }
}
