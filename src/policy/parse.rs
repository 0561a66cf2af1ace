//! YAML text → raw policy structs. Shape only: which keys exist, which types they hold.
//!
//! Errors found here come from `serde_yaml_ng` and carry the exact line. A file is parsed
//! part by part — each top-level key, each list, each rule — so that one broken rule does
//! not hide the errors of the next: see [`parse_file`]. Checks that need more than one place
//! at once (duplicate ids, unknown lists, a deny without `error`) are made in `compile`,
//! which finds their lines through `lines::RuleLines`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::model::Scalar;
use crate::catalog::CodeFamily;

/// One policy file as written, less the parts that did not parse (see [`Unparsed`]).
#[derive(Debug, Default)]
pub struct RawFile {
    /// Named lists of IDs, inline or from a file.
    pub lists: BTreeMap<String, RawList>,
    /// Rules, in the order written; `None` for a rule that did not parse (its error is
    /// reported), so that each rule keeps its place.
    pub rules: Vec<Option<RawRule>>,
    /// The decision when no rule holds; at most one file of a set may give it.
    pub default: Option<RawDecision>,
    /// The refusal sent when `default: deny`.
    pub error: Option<RawError>,
    /// What of the file did not parse.
    pub unparsed: Unparsed,
}

/// What of a file did not parse (its errors are reported), so that compiling the rest does
/// not add errors that follow from them: an "unknown list" that is only a broken one, a
/// `default: deny` "without `error:`" whose `error:` is broken.
#[derive(Debug, Default)]
pub struct Unparsed {
    /// Lists whose definitions did not parse, by name.
    pub lists: Vec<String>,
    /// Whether `lists:` as a whole did not parse, so any list may be defined here.
    pub is_any_list: bool,
    /// Whether `default:` did not parse.
    pub is_default: bool,
    /// Whether the top-level `error:` did not parse.
    pub is_error: bool,
}

impl Unparsed {
    /// Nothing of the file parsed: it may define any list, `default` and `error`.
    fn everything() -> Unparsed {
        Unparsed { lists: Vec::new(), is_any_list: true, is_default: true, is_error: true }
    }

    /// Whether a list called `name` may be defined in the part that did not parse.
    pub fn may_define_list(&self, name: &str) -> bool {
        self.is_any_list || self.lists.iter().any(|l| l == name)
    }
}

/// A problem found while parsing a file, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Where the problem is.
    pub line: usize,
    /// What it is, naming the rule by its id where it can.
    pub message: String,
}

/// A named list: `[a, b]` inline, `{ file: path }`, or `{ redis: key, cache: 1s }`.
#[derive(Debug)]
pub enum RawList {
    /// IDs written in the policy file.
    Inline(Vec<Scalar>),
    /// A file of IDs, one a line, relative to the policy directory.
    File(String),
    /// A Redis set, asked live; `cache` is how long an answer may be reused.
    Redis { key: String, cache: Option<String> },
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule: a map with `id`, `decision` and, as needed, `on`, `when`, `rate_cap`, `error`, `mode`"
)]
pub struct RawRule {
    /// Unique across the set.
    pub id: String,
    /// Command names or globs; `None` means every OpenIM command.
    #[serde(default, deserialize_with = "one_or_many")]
    pub on: Option<Vec<String>>,
    /// Conditions, all of which must hold.
    #[serde(default, deserialize_with = "present_when")]
    pub when: Option<RawGroup>,
    /// A rate cap that must also hold.
    #[serde(default, deserialize_with = "present_rate_cap")]
    pub rate_cap: Option<RawRateCap>,
    /// What the rule decides when it holds.
    #[serde(deserialize_with = "rule_decision")]
    pub decision: RawDecision,
    /// The refusal, required with `decision: deny`.
    #[serde(default, deserialize_with = "present_error")]
    pub error: Option<RawError>,
    /// `enforce` (default) or `dry_run`.
    #[serde(default)]
    pub mode: RawMode,
}

/// `allow`, `deny` or (a rule's, for Tencent messages) `discard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawDecision {
    /// Let the operation go on.
    Allow,
    /// Refuse it.
    Deny,
    /// Drop a Tencent message silently (the loader checks the rule reaches only those).
    Discard,
}

/// Whether a rule decides or only reports what it would decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RawMode {
    /// The rule decides.
    #[default]
    Enforce,
    /// The rule is recorded as "would …" and evaluation goes on.
    DryRun,
}

/// The refusal the IM server passes to its client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a refusal: `{ code: N, message: \"...\" }`, with an optional `detail`")]
pub struct RawError {
    /// The code; checked to be ≥ 100 while parsing, and against the ranges of the
    /// commands the rule reaches in `compile`.
    pub code: RawCode,
    /// OpenIM's `errMsg`.
    #[serde(deserialize_with = "text")]
    pub message: String,
    /// OpenIM's `errDlt`.
    #[serde(default, deserialize_with = "text")]
    pub detail: String,
}

/// `code: N`, or one code per family: `code: { openim: N, group: M }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCode {
    /// The one code, or the first stated (OpenIM's when stated).
    pub code: i32,
    /// Codes per family, each checked to lie in its range while parsing; empty for `code: N`.
    pub per_family: Vec<(CodeFamily, i32)>,
}

/// `rate_cap: { key: [...], max: N, per: 1m }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rate cap: `{ key: [fields], max: N, per: 1m }`")]
pub struct RawRateCap {
    /// Fields whose values, with the rule id, make the cap's key.
    #[serde(default, deserialize_with = "cap_key_fields")]
    pub key: Option<Vec<String>>,
    /// Allowed callbacks per window; at least 1.
    #[serde(deserialize_with = "whole_number")]
    pub max: u64,
    /// The rolling window, in the duration syntax.
    pub per: String,
}

/// A `when` map: every entry must hold.
#[derive(Debug, Default)]
pub struct RawGroup(pub Vec<RawEntry>);

/// One entry of a `when` map.
#[derive(Debug)]
pub enum RawEntry {
    /// `field: { operator: value, ... }`.
    Field { field: String, ops: RawOps },
    /// `any: [group, ...]`: at least one group holds.
    Any(Vec<RawGroup>),
    /// `all: [group, ...]`: every group holds.
    All(Vec<RawGroup>),
    /// `not: group`: the group does not hold.
    Not(RawGroup),
}

/// The operators applied to one field; every one given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map of operators: equals, not_equals, in, not_in, in_list, not_in_list, regex, not_regex, exists"
)]
pub struct RawOps {
    #[serde(default, deserialize_with = "some_scalar")]
    pub equals: Option<Scalar>,
    #[serde(default, deserialize_with = "some_scalar")]
    pub not_equals: Option<Scalar>,
    #[serde(rename = "in")]
    pub in_: Option<Vec<Scalar>>,
    pub not_in: Option<Vec<Scalar>>,
    pub in_list: Option<String>,
    pub not_in_list: Option<String>,
    pub regex: Option<Pattern>,
    pub not_regex: Option<Pattern>,
    pub exists: Option<bool>,
}

impl RawOps {
    fn is_empty(&self) -> bool {
        self.equals.is_none()
            && self.not_equals.is_none()
            && self.in_.is_none()
            && self.not_in.is_none()
            && self.in_list.is_none()
            && self.not_in_list.is_none()
            && self.regex.is_none()
            && self.not_regex.is_none()
            && self.exists.is_none()
    }
}

/// A regex whose syntax was checked while parsing, so its error has an exact line.
#[derive(Debug, Clone)]
pub struct Pattern(pub String);

/// The most errors reported for one file. A file that broken is reported this many at a
/// time: each costs one more reading of the file.
const MAX_ERRORS_PER_FILE: usize = 50;

/// Parses one policy file: what parsed, and one error for each part that did not. An empty
/// file (or one of only comments) is an empty policy.
///
/// serde stops at a file's first error, so a file is read in passes: each pass skips the
/// parts (a top-level key, a list, a rule) already known to be broken, and the part its
/// error came from joins them, until a pass reads the rest whole. YAML that does not parse
/// at all gives one error, in plain words, and nothing parsed.
pub fn parse_file(text: &str) -> (RawFile, Vec<ParseError>) {
    let mut skip = HashSet::new();
    let mut errors = Vec::new();
    loop {
        let pass = Pass { skip: &skip, current: Cell::new(None), unparsed: RefCell::default() };
        let err = match (&pass).deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
            Ok(mut file) => {
                file.unparsed = pass.unparsed.into_inner();
                return (file, errors);
            }
            Err(err) => err,
        };
        // Broken YAML fails whichever part the reader had reached; say what is broken instead.
        if errors.is_empty()
            && let Err(syntax) = serde_yaml_ng::from_str::<IgnoredAny>(text)
        {
            return (
                RawFile { unparsed: Unparsed::everything(), ..RawFile::default() },
                vec![yaml_error(text, &syntax)],
            );
        }
        errors.push(located_error(text, &err));
        match pass.current.get() {
            Some(part) if errors.len() < MAX_ERRORS_PER_FILE && skip.insert(part) => {}
            // An error outside any part (the file is not a map), or one that skipping its part
            // did not remove: nothing more can be read.
            _ => return (RawFile { unparsed: Unparsed::everything(), ..RawFile::default() }, errors),
        }
    }
}

/// A shape error with its line, naming the rule by id where the message says `rules[N]`, and
/// the list by name where it says `lists.name`, as the messages of `compile` do.
fn located_error(text: &str, err: &serde_yaml_ng::Error) -> ParseError {
    let (line, message) = split_yaml_error(err);
    let message = match message.strip_prefix("lists.").and_then(|rest| rest.split_once(": ")) {
        Some((name, rest)) if !name.contains(['.', '[']) => format!("list `{name}`: {rest}"),
        _ => name_rule_in_message(text, message),
    };
    ParseError { line, message }
}

/// A YAML syntax error, in plain words, with its line.
fn yaml_error(text: &str, err: &serde_yaml_ng::Error) -> ParseError {
    let (line, message) = super::syntax::explain(text, err);
    ParseError { line, message }
}

/// A part of a file that parses, or is skipped, as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    /// The n-th top-level key, with its value.
    Entry(usize),
    /// The n-th entry of `lists:`.
    List(usize),
    /// The n-th rule.
    Rule(usize),
}

/// One reading of a file, skipping the parts known to be broken.
struct Pass<'a> {
    skip: &'a HashSet<Part>,
    /// The innermost part being read; when an error ends the pass, the part it belongs to.
    current: Cell<Option<Part>>,
    unparsed: RefCell<Unparsed>,
}

impl Pass<'_> {
    /// Reads `part` with `read`: with the part's own types, or with `skip` when an earlier
    /// pass found it broken. On error the part stays current, to be blamed.
    fn read<T, E>(&self, part: Part, read: impl FnOnce(bool) -> Result<T, E>) -> Result<T, E> {
        let outer = self.current.replace(Some(part));
        let value = read(self.skip.contains(&part))?;
        self.current.set(outer);
        Ok(value)
    }
}

/// The top-level keys of a policy file.
const TOP_KEYS: &[&str] = &["lists", "rules", "default", "error"];

impl<'de> DeserializeSeed<'de> for &Pass<'_> {
    type Value = RawFile;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawFile, D::Error> {
        d.deserialize_option(FileVisitor(self))
    }
}

struct FileVisitor<'p, 'a>(&'p Pass<'a>);

impl<'de> Visitor<'de> for FileVisitor<'_, '_> {
    type Value = RawFile;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a policy file: a map with `lists`, `rules`, `default` and `error`")
    }

    fn visit_none<E: de::Error>(self) -> Result<RawFile, E> {
        Ok(RawFile::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawFile, E> {
        Ok(RawFile::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawFile, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFile, A::Error> {
        let pass = self.0;
        let mut file = RawFile::default();
        let mut seen = Vec::new();
        for n in 0.. {
            let is_more = pass.read(Part::Entry(n), |is_skipped| {
                if is_skipped {
                    let Some(KeyText(key)) = map.next_key()? else { return Ok(false) };
                    map.next_value::<IgnoredAny>()?;
                    let mut unparsed = pass.unparsed.borrow_mut();
                    match key.as_deref() {
                        Some("lists") => unparsed.is_any_list = true,
                        Some("default") => unparsed.is_default = true,
                        Some("error") => unparsed.is_error = true,
                        _ => {}
                    }
                    return Ok(true);
                }
                let Some(key) = map.next_key_seed(TopKey { seen: &seen })? else { return Ok(false) };
                seen.push(key);
                match key {
                    "lists" => file.lists = map.next_value_seed(Lists(pass))?,
                    "rules" => file.rules = map.next_value_seed(Rules(pass))?,
                    "default" => file.default = map.next_value_seed(Present::new("default"))?,
                    _ => file.error = map.next_value_seed(Present::new("error"))?,
                }
                Ok(true)
            })?;
            if !is_more {
                break;
            }
        }
        Ok(file)
    }
}

/// A top-level key: one of [`TOP_KEYS`], not given before.
struct TopKey<'s> {
    seen: &'s [&'static str],
}

impl<'de> DeserializeSeed<'de> for TopKey<'_> {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for TopKey<'_> {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("one of `lists`, `rules`, `default`, `error`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<&'static str, E> {
        match TOP_KEYS.iter().find(|k| **k == v) {
            Some(key) if self.seen.contains(key) => Err(E::duplicate_field(key)),
            Some(key) => Ok(key),
            None => Err(E::unknown_field(v, TOP_KEYS)),
        }
    }
}

/// Any map key, as text when it is a string: what a skipped entry was called.
struct KeyText(Option<String>);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyText, D::Error> {
        Ok(KeyText(match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::String(s) => Some(s),
            _ => None,
        }))
    }
}

/// `lists:`, read one list at a time.
struct Lists<'p, 'a>(&'p Pass<'a>);

impl<'de> DeserializeSeed<'de> for Lists<'_, '_> {
    type Value = BTreeMap<String, RawList>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Lists<'_, '_> {
    type Value = BTreeMap<String, RawList>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of list names to lists")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let pass = self.0;
        let mut lists = BTreeMap::new();
        for n in 0.. {
            let is_more = pass.read(Part::List(n), |is_skipped| {
                if is_skipped {
                    let Some(KeyText(name)) = map.next_key()? else { return Ok(false) };
                    map.next_value::<IgnoredAny>()?;
                    pass.unparsed.borrow_mut().lists.extend(name);
                    return Ok(true);
                }
                let Some(name) = map.next_key::<String>()? else { return Ok(false) };
                lists.insert(name, map.next_value()?);
                Ok(true)
            })?;
            if !is_more {
                break;
            }
        }
        Ok(lists)
    }
}

/// `rules:`, read one rule at a time.
struct Rules<'p, 'a>(&'p Pass<'a>);

impl<'de> DeserializeSeed<'de> for Rules<'_, '_> {
    type Value = Vec<Option<RawRule>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rules<'_, '_> {
    type Value = Vec<Option<RawRule>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of rules")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let pass = self.0;
        let mut rules = Vec::new();
        for n in 0.. {
            let rule = pass.read(Part::Rule(n), |is_skipped| match is_skipped {
                true => seq.next_element::<IgnoredAny>().map(|r| r.map(|_| None)),
                false => seq.next_element::<RawRule>().map(|r| r.map(Some)),
            })?;
            match rule {
                Some(rule) => rules.push(rule),
                None => break,
            }
        }
        Ok(rules)
    }
}

/// An optional top-level value that, when its key is given, must not be empty.
struct Present<T> {
    key: &'static str,
    value: PhantomData<T>,
}

impl<T> Present<T> {
    fn new(key: &'static str) -> Present<T> {
        Present { key, value: PhantomData }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Present<T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        present(d, self.key)
    }
}

/// Splits a `serde_yaml_ng` error into its line (1-based) and its message without the
/// trailing "at line L column C".
pub fn split_yaml_error(err: &serde_yaml_ng::Error) -> (usize, String) {
    let text = err.to_string();
    match err.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let message = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
            (loc.line(), message)
        }
        None => (1, text),
    }
}

/// Rewrites a message that starts with serde's path `rules[N]…: ` to name the rule by its
/// id, as every other rule message does: `rule `id`: when.f: …`. The id is read from a
/// loose parse of the same text; when that fails the message is left as it is.
pub fn name_rule_in_message(text: &str, message: String) -> String {
    let Some(rest) = message.strip_prefix("rules[") else { return message };
    let Some((index, rest)) = rest.split_once(']') else { return message };
    let Ok(index) = index.parse::<usize>() else { return message };
    let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else { return message };
    let Some(id) = doc.get("rules").and_then(|r| r.get(index)).and_then(|r| r.get("id")).and_then(|id| id.as_str())
    else {
        return message;
    };
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    let rest = rest.strip_prefix(": ").map_or_else(|| rest.to_string(), |r| r.to_string());
    format!("rule `{id}`: {rest}")
}

/// For optional keys: absent is `None` (through `#[serde(default)]`), but a key that is
/// present with nothing after it (`when:` with every condition commented out) is an error,
/// not a silent "always". serde does not say which key failed here, so each key has its
/// own function naming it.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D, key: &str) -> Result<Option<T>, D::Error> {
    match Option::<T>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(de::Error::custom(format_args!("`{key}` is empty; give it a value, or remove the key"))),
    }
}

fn present_when<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawGroup>, D::Error> {
    present(d, "when")
}

fn present_rate_cap<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawRateCap>, D::Error> {
    present(d, "rate_cap")
}

fn present_error<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawError>, D::Error> {
    present(d, "error")
}

fn cap_key_fields<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    strings(d, "`key` is empty; list fields, or remove it for one cap shared by every callback")
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    strings(d, "`on` is empty; list commands, or remove it to apply the rule to every command")
}

/// A string or a list of strings; `if_empty` is the error for a key with nothing after it.
fn strings<'de, D: Deserializer<'de>>(d: D, if_empty: &str) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match Option::<OneOrMany>::deserialize(d) {
        Ok(None) => Err(de::Error::custom(if_empty)),
        Ok(Some(OneOrMany::One(s))) => Ok(Some(vec![s])),
        Ok(Some(OneOrMany::Many(v))) => Ok(Some(v)),
        Err(_) => Err(de::Error::custom("expected a string or a list of strings")),
    }
}

impl<'de> Deserialize<'de> for RawCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CodeVisitor;
        impl<'de> Visitor<'de> for CodeVisitor {
            type Value = RawCode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a number, or a code per family: `{ openim: N, c2c: N, group: N, sns: N, official_account: N }`",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawCode, E> {
                Ok(RawCode { code: err_code(v)?, per_family: Vec::new() })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawCode, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawCode, A::Error> {
                let mut per_family: Vec<(CodeFamily, i32)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let family = CodeFamily::from_key(&key).ok_or_else(|| {
                        let keys: Vec<&str> = CodeFamily::ALL.iter().map(|f| f.key()).collect();
                        de::Error::custom(format_args!("unknown code family `{key}`; use {}", keys.join(", ")))
                    })?;
                    let code: i64 = map.next_value()?;
                    let range = family.range();
                    if !range.contains(&code) {
                        return Err(de::Error::custom(format_args!(
                            "{key} code {code} is outside [{}, {}], the codes {} passes to its client",
                            range.start(),
                            range.end(),
                            family.reader()
                        )));
                    }
                    if per_family.iter().any(|(f, _)| *f == family) {
                        return Err(de::Error::custom(format_args!("code for `{key}` given twice")));
                    }
                    per_family.push((family, code as i32));
                }
                let first = per_family.iter().find(|(f, _)| *f == CodeFamily::OpenIm).or(per_family.first());
                let Some(&(_, code)) = first else {
                    return Err(de::Error::custom("`code: {}` states no code; give at least one family's"));
                };
                Ok(RawCode { code, per_family })
            }
        }
        d.deserialize_any(CodeVisitor)
    }
}

pub(super) fn rule_decision<'de, D: Deserializer<'de>>(d: D) -> Result<RawDecision, D::Error> {
    match word(d, &["allow", "deny", "discard"])? {
        0 => Ok(RawDecision::Allow),
        1 => Ok(RawDecision::Deny),
        _ => Ok(RawDecision::Discard),
    }
}

fn err_code<E: de::Error>(code: i64) -> Result<i32, E> {
    if code < 100 {
        return Err(de::Error::custom(format_args!(
            "errCode {code} is below 100; OpenIM turns such codes into a generic server error, use 100 or more"
        )));
    }
    i32::try_from(code).map_err(|_| {
        de::Error::custom(format_args!("errCode {code} does not fit OpenIM's 32-bit errCode; use at most {}", i32::MAX))
    })
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                // The same text serde_json gives a JSON float, so `1.5` matches `1.5`.
                Ok(Scalar::Text(serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Err(E::custom(
                    "null (`~`) is not a value to compare with: conditions compare strings, numbers and booleans; test presence with `exists`",
                ))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Deserialize<'de> for RawDecision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match word(d, &["allow", "deny"])? {
            0 => Ok(RawDecision::Allow),
            _ => Ok(RawDecision::Deny),
        }
    }
}

impl<'de> Deserialize<'de> for RawMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match word(d, &["enforce", "dry_run"])? {
            0 => Ok(RawMode::Enforce),
            _ => Ok(RawMode::DryRun),
        }
    }
}

/// Which of `words` is given, by index. serde's derived enums take a YAML map or list for
/// an enum written with a tag, and say "expected a YAML tag starting with '!'" for one;
/// these are words, and say which.
fn word<'de, D: Deserializer<'de>>(d: D, words: &'static [&'static str]) -> Result<usize, D::Error> {
    struct WordVisitor(&'static [&'static str]);
    impl Visitor<'_> for WordVisitor {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            let quoted: Vec<String> = self.0.iter().map(|w| format!("`{w}`")).collect();
            match quoted.split_last() {
                Some((last, [])) => f.write_str(last),
                Some((last, rest)) => write!(f, "{} or {last}", rest.join(", ")),
                None => f.write_str("a word"),
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            self.0.iter().position(|w| *w == v).ok_or_else(|| E::unknown_variant(v, self.0))
        }
    }
    d.deserialize_str(WordVisitor(words))
}

/// A count, 1 or more in the end (`compile` says so for 0, on its line).
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct WholeVisitor;
    impl Visitor<'_> for WholeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number, 1 or more")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
    }
    d.deserialize_u64(WholeVisitor)
}

/// `equals: v`: present means a value, so a YAML null is refused (by [`Scalar`]) rather
/// than read as "no operator".
fn some_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Scalar>, D::Error> {
    Scalar::deserialize(d).map(Some)
}

/// Text shown to users. A YAML null (`~`, `null`, or nothing after the colon) is refused:
/// read as a string it would be the text "~" or "null", which is never what was meant.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct TextVisitor;
    impl Visitor<'_> for TextVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("text")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_unit<E: de::Error>(self) -> Result<String, E> {
            Err(E::custom("is null (`~`); write the text, in quotes if it could be read as something else"))
        }
    }
    d.deserialize_any(TextVisitor)
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match regex_syntax::Parser::new().parse(&text) {
            Ok(_) => Ok(Pattern(text)),
            Err(err) => Err(de::Error::custom(format_args!("bad regex `{text}`: {}", regex_error_summary(&err)))),
        }
    }
}

/// One line from a regex-syntax error, which otherwise draws a multi-line diagram.
fn regex_error_summary(err: &regex_syntax::Error) -> String {
    match err {
        regex_syntax::Error::Parse(e) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        regex_syntax::Error::Translate(e) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        other => other.to_string().lines().next().unwrap_or("invalid").to_string(),
    }
}

impl<'de> Deserialize<'de> for RawList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = RawList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of IDs, `{ file: path }` or `{ redis: key }`")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawList, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element()? {
                    ids.push(id);
                }
                Ok(RawList::Inline(ids))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawList, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields, expecting = "`{ file: path }` or `{ redis: key }`")]
                struct Source {
                    file: Option<String>,
                    redis: Option<String>,
                    cache: Option<String>,
                }
                let r = Source::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (r.file, r.redis, r.cache) {
                    (Some(file), None, None) => Ok(RawList::File(file)),
                    (None, Some(key), cache) => Ok(RawList::Redis { key, cache }),
                    (Some(_), None, Some(_)) => Err(de::Error::custom("`cache` is for `{ redis: key }` lists")),
                    (Some(_), Some(_), _) => Err(de::Error::custom("a list is a `file` or a `redis` set, not both")),
                    (None, None, _) => Err(de::Error::custom("a list needs `file: path` or `redis: key`")),
                }
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

impl<'de> Deserialize<'de> for RawGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct GroupVisitor;
        impl<'de> Visitor<'de> for GroupVisitor {
            type Value = RawGroup;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of field names to operators (or any/all/not)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawGroup, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let entry = match key.as_str() {
                        "any" => RawEntry::Any(map.next_value()?),
                        "all" => RawEntry::All(map.next_value()?),
                        "not" => RawEntry::Not(map.next_value()?),
                        _ => {
                            let ops: RawOps = map.next_value()?;
                            if ops.is_empty() {
                                return Err(de::Error::custom(format_args!(
                                    "field `{key}` has no operator; use equals, not_equals, in, not_in, in_list, not_in_list, regex, not_regex or exists"
                                )));
                            }
                            RawEntry::Field { field: key, ops }
                        }
                    };
                    entries.push(entry);
                }
                Ok(RawGroup(entries))
            }
        }
        d.deserialize_map(GroupVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errors of `text` as `line: message`.
    fn errors(text: &str) -> Vec<String> {
        parse_file(text).1.iter().map(|e| format!("{}: {}", e.line, e.message)).collect()
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_policies() {
        for text in ["", "# nothing yet\n", "~\n"] {
            let (file, errors) = parse_file(text);
            assert!(file.rules.is_empty() && errors.is_empty(), "{text:?}: {errors:?}");
        }
    }

    #[test]
    fn unknown_operator_is_located() {
        let text = "rules:\n  - id: a\n    when:\n      f: { equal: x }\n    decision: allow\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("4: rule `a`: when.f: unknown field `equal`"), "{errors:?}");
    }

    #[test]
    fn bad_regex_is_located() {
        let text = "rules:\n  - id: a\n    when:\n      f: { regex: '(x' }\n    decision: allow\n";
        assert_eq!(errors(text), ["4: rule `a`: when.f: bad regex `(x`: unclosed group at offset 0"]);
    }

    #[test]
    fn each_broken_part_is_reported_and_the_rest_parsed() {
        let text = "\
lists:
  good: [a]
  bad: { fil: x }
rules:
  - id: one
    decison: allow
  - id: two
    decision: allow
  - id: three
    decision: deny
    error: { code: 99, message: m }
rule: []
default: maybe
";
        assert_eq!(
            errors(text),
            [
                "3: list `bad`: unknown field `fil`, expected one of `file`, `redis`, `cache`",
                "6: rule `one`: unknown field `decison`, expected one of `id`, `on`, `when`, `rate_cap`, `decision`, `error`, `mode`",
                "11: rule `three`: error.code: errCode 99 is below 100; OpenIM turns such codes into a generic server error, use 100 or more",
                "12: unknown field `rule`, expected one of `lists`, `rules`, `default`, `error`",
                "13: default: unknown variant `maybe`, expected `allow` or `deny`",
            ]
        );
        let (file, _) = parse_file(text);
        assert_eq!(file.lists.keys().collect::<Vec<_>>(), ["good"]);
        let ids: Vec<Option<&str>> = file.rules.iter().map(|r| r.as_ref().map(|r| r.id.as_str())).collect();
        assert_eq!(ids, [None, Some("two"), None]);
        assert_eq!(file.unparsed.lists, ["bad"]);
        assert!(file.unparsed.is_default && !file.unparsed.is_error && !file.unparsed.is_any_list);
    }

    #[test]
    fn a_duplicate_top_level_key_is_one_error() {
        assert_eq!(errors("rules: []\nrules: []\n"), ["2: duplicate field `rules`"]);
    }

    #[test]
    fn a_file_that_is_not_a_map_is_one_error() {
        let errors = errors("- rules\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("1: invalid type: sequence, expected a policy file"), "{errors:?}");
    }
}
