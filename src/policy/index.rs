//! The rule index: for one callback, which rules could possibly hold, found without looking
//! at every rule.
//!
//! Each rule gets one *anchor*: a top-level, positive condition that must hold for the rule
//! to hold. `equals`/`in` anchors go into a hash map per field, `in_list` anchors are
//! grouped by (field, list) so each membership test runs once. A `regex` whose every match
//! begins with one of a few literals is filed under those literals: when it is anchored at
//! the start (`^…`), in a map of prefixes (one hash lookup per prefix length of the text);
//! otherwise in one Aho-Corasick automaton per field (one scan of the text finds every
//! regex whose literal occurs in it). The remaining regexes go into `RegexSet`s per field,
//! in chunks small enough that each set's lazy DFA stays fast. A rule with none of these is anchored on its exact `on` commands, or else is
//! a candidate for every callback. A callback's candidates are then
//! checked in rule order, so the first-match semantics are those of a plain scan; the
//! index only skips rules that cannot hold.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex::RegexSet;
use serde_json::{Map, Value};

use super::model::{Cond, FieldPath, Group, List, OnCommands, Rule, Scalar, Test, lookup, value_text};

/// Rule positions (indexes into `PolicySet::rules`).
type RuleIds = Vec<u32>;

/// Patterns per `RegexSet`: past a few dozen, a set of ID-like patterns (Unicode `\d`,
/// bounded repeats) outgrows the lazy DFA's cache and matching falls back to a far slower
/// engine; many small sets stay on the fast path.
const REGEX_SET_CHUNK: usize = 32;

/// Anchored regexes of one field, by literal prefix.
#[derive(Debug, Default)]
struct Prefixes {
    by_prefix: foldhash::HashMap<Box<[u8]>, RuleIds>,
    /// Bit `n` set when some prefix is `n` bytes long (bit 63: 63 or more), so that a text
    /// is looked up only at the lengths there are.
    lengths: u64,
}

/// Unanchored regexes of one field, by a literal every match begins with.
#[derive(Debug)]
struct Substrings {
    automaton: AhoCorasick,
    /// Rules per literal, by the automaton's pattern id.
    rules: Vec<RuleIds>,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    /// The anchors on each field, so that a callback's field is looked up once for all.
    fields: Vec<(FieldPath, FieldAnchors)>,
    by_command: foldhash::HashMap<Box<str>, RuleIds>,
    always: RuleIds,
}

/// The anchors filed under one field.
#[derive(Debug, Default)]
struct FieldAnchors {
    equals: foldhash::HashMap<Box<str>, RuleIds>,
    lists: Vec<(Arc<List>, RuleIds)>,
    prefixes: Prefixes,
    substrings: Option<Substrings>,
    regexes: Vec<(RegexSet, RuleIds)>,
}

enum Anchor<'a> {
    Texts(&'a FieldPath, Vec<&'a str>),
    List(&'a FieldPath, &'a Arc<List>),
    Regex(&'a FieldPath, &'a str),
}

/// The anchors a rule is filed under: one top-level positive test, or else, for a rule
/// whose conditions include an `any` each of whose branches has such a test, every branch's
/// (the rule can hold only when one of those branches does). `None`: no anchor.
fn anchors(rule: &Rule) -> Option<Vec<Anchor<'_>>> {
    if let Some(anchor) = group_anchor(&rule.when) {
        return Some(vec![anchor]);
    }
    rule.when.0.iter().find_map(|c| match c {
        Cond::Any(groups) if !groups.is_empty() => groups.iter().map(group_anchor).collect(),
        _ => None,
    })
}

/// A top-level positive test of `group` to file a rule under, the most selective kind first.
fn group_anchor(group: &Group) -> Option<Anchor<'_>> {
    let positive = || {
        group.0.iter().filter_map(|c| match c {
            Cond::Field { field, test, is_negated: false } => Some((field, test)),
            _ => None,
        })
    };
    let texts = positive().find_map(|(field, test)| match test {
        Test::Equals(Scalar::Text(t)) => Some(Anchor::Texts(field, vec![t.as_str()])),
        Test::In(set) if set.bools.is_empty() => Some(Anchor::Texts(field, set.texts.iter().map(|t| &**t).collect())),
        _ => None,
    });
    texts
        .or_else(|| {
            positive().find_map(|(field, test)| match test {
                // A list held in Redis is not known here: it cannot file a rule.
                Test::InList(list) if list.redis.is_none() => Some(Anchor::List(field, list)),
                _ => None,
            })
        })
        .or_else(|| {
            positive().find_map(|(field, test)| match test {
                Test::Regex(re) => Some(Anchor::Regex(field, re.as_str())),
                _ => None,
            })
        })
}

/// The index while it is built: keyed by the rules' own fields, made owned by `finish`.
#[derive(Default)]
struct Builder<'r> {
    equals: HashMap<&'r FieldPath, foldhash::HashMap<Box<str>, RuleIds>>,
    lists: HashMap<(&'r FieldPath, &'r str), (Arc<List>, RuleIds)>,
    regexes: HashMap<&'r FieldPath, (Vec<&'r str>, RuleIds)>,
    prefixes: HashMap<&'r FieldPath, Prefixes>,
    substrings: HashMap<&'r FieldPath, HashMap<Vec<u8>, RuleIds>>,
    by_command: foldhash::HashMap<Box<str>, RuleIds>,
    always: RuleIds,
}

/// Adds rule `i` to `ids` unless it is there already (rules are filed in order).
fn push_once(ids: &mut RuleIds, i: u32) {
    if ids.last() != Some(&i) {
        ids.push(i);
    }
}

impl<'r> Builder<'r> {
    /// Files rule `i`, which has no anchor, under its exact commands, or else for every callback.
    fn file_by_command(&mut self, i: u32, on: &OnCommands) {
        match on {
            OnCommands::Some { exact, globs } if globs.is_empty() => {
                for c in exact {
                    self.by_command.entry(c.clone()).or_default().push(i);
                }
            }
            _ => self.always.push(i),
        }
    }

    /// Files rule `i` under one of its anchors.
    fn file(&mut self, i: u32, anchor: Anchor<'r>) {
        match anchor {
            Anchor::Texts(field, texts) => {
                let by_text = self.equals.entry(field).or_default();
                for t in texts {
                    push_once(by_text.entry(t.into()).or_default(), i);
                }
            }
            Anchor::List(field, list) => {
                let entry = self.lists.entry((field, list.name.as_str())).or_insert_with(|| (list.clone(), Vec::new()));
                push_once(&mut entry.1, i);
            }
            Anchor::Regex(field, pattern) => match literal_prefixes(pattern) {
                Some((false, literals)) => {
                    let by_literal = self.substrings.entry(field).or_default();
                    for literal in literals {
                        push_once(by_literal.entry(literal).or_default(), i);
                    }
                }
                Some((true, literals)) => {
                    let index = self.prefixes.entry(field).or_default();
                    for literal in literals {
                        index.lengths |= 1 << literal.len().min(63);
                        push_once(index.by_prefix.entry(literal.into()).or_default(), i);
                    }
                }
                None => {
                    let (patterns, ids) = self.regexes.entry(field).or_default();
                    patterns.push(pattern);
                    ids.push(i);
                }
            },
        }
    }

    /// The finished index: automatons and regex sets built, every rule list owned.
    fn finish(self) -> Index {
        let mut fields: HashMap<&FieldPath, FieldAnchors> = HashMap::new();
        let mut always = self.always;
        for (field, equals) in self.equals {
            fields.entry(field).or_default().equals = equals;
        }
        for ((field, _), list) in self.lists {
            fields.entry(field).or_default().lists.push(list);
        }
        for (field, prefixes) in self.prefixes {
            fields.entry(field).or_default().prefixes = prefixes;
        }
        for (field, by_literal) in self.substrings {
            let (literals, rules): (Vec<Vec<u8>>, Vec<RuleIds>) = by_literal.into_iter().unzip();
            match AhoCorasick::new(&literals) {
                Ok(automaton) => fields.entry(field).or_default().substrings = Some(Substrings { automaton, rules }),
                // Too large for an automaton: check those rules on every callback instead.
                Err(_) => always.extend(rules.into_iter().flatten()),
            }
        }
        for (field, (patterns, ids)) in self.regexes {
            for (patterns, ids) in patterns.chunks(REGEX_SET_CHUNK).zip(ids.chunks(REGEX_SET_CHUNK)) {
                match RegexSet::new(patterns) {
                    Ok(set) => fields.entry(field).or_default().regexes.push((set, ids.to_vec())),
                    // A set can exceed the size limit where each regex alone did not; those
                    // rules are then checked on every callback: slower, still exact.
                    Err(_) => always.extend_from_slice(ids),
                }
            }
        }
        always.sort_unstable();
        Index {
            fields: fields.into_iter().map(|(field, anchors)| (field.clone(), anchors)).collect(),
            by_command: self.by_command,
            always,
        }
    }
}

impl Index {
    /// Builds the index of `rules`. Infallible: every regex was already compiled alone.
    pub(crate) fn build(rules: &[Rule]) -> Index {
        let mut builder = Builder::default();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match anchors(rule) {
                Some(anchors) => anchors.into_iter().for_each(|anchor| builder.file(i, anchor)),
                None => builder.file_by_command(i, &rule.on),
            }
        }
        builder.finish()
    }

    /// The rules that could hold for this callback, in rule order, without duplicates.
    pub(crate) fn candidates(&self, command: &str, body: &Map<String, Value>) -> RuleIds {
        let mut out = RuleIds::with_capacity(8);
        for (field, anchors) in &self.fields {
            if let Some(text) = lookup(body, field).and_then(value_text) {
                anchors.candidates(&text, &mut out);
            }
        }
        if let Some(ids) = self.by_command.get(command) {
            out.extend_from_slice(ids);
        }
        out.extend_from_slice(&self.always);
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl FieldAnchors {
    /// Adds to `out` the rules filed under this field that `text`, its value, may hold for.
    fn candidates(&self, text: &str, out: &mut RuleIds) {
        if let Some(ids) = self.equals.get(text) {
            out.extend_from_slice(ids);
        }
        for (list, ids) in &self.lists {
            if list.ids.contains(text) {
                out.extend_from_slice(ids);
            }
        }
        let bytes = text.as_bytes();
        let mut lengths = self.prefixes.lengths;
        while lengths != 0 {
            let len = lengths.trailing_zeros() as usize;
            lengths &= lengths - 1;
            // Past 62, every length up to the text's.
            let lens = if len == 63 { 63..bytes.len() + 1 } else { len..len + 1 };
            for len in lens {
                if let Some(ids) = bytes.get(..len).and_then(|prefix| self.prefixes.by_prefix.get(prefix)) {
                    out.extend_from_slice(ids);
                }
            }
        }
        if let Some(substrings) = &self.substrings {
            for m in substrings.automaton.find_overlapping_iter(bytes) {
                if let Some(ids) = substrings.rules.get(m.pattern().as_usize()) {
                    out.extend_from_slice(ids);
                }
            }
        }
        for (set, ids) in &self.regexes {
            out.extend(set.matches(text).iter().filter_map(|m| ids.get(m).copied()));
        }
    }
}

/// The literals every match of `pattern` begins with, when they are few and non-empty, and
/// whether the pattern is anchored at the start of the text (then the literals are prefixes
/// of the text; otherwise they occur somewhere in it). `None` when there are no such literals.
fn literal_prefixes(pattern: &str) -> Option<(bool, Vec<Vec<u8>>)> {
    use regex_syntax::hir::Look;
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    let is_anchored = hir.properties().look_set_prefix().contains(Look::Start);
    let mut extractor = Extractor::new();
    // Short, few literals: a class like `[0-9]` ends the literal rather than multiplying it
    // tenfold, which keeps the index small and quick to build.
    extractor.kind(ExtractKind::Prefix).limit_class(4).limit_total(64);
    let seq = extractor.extract(&hir);
    let literals = seq.literals()?;
    if literals.is_empty() || literals.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    Some((is_anchored, literals.iter().map(|l| l.as_bytes().to_vec()).collect()))
}

#[cfg(test)]
mod tests {
    use super::literal_prefixes;

    #[test]
    fn anchored_patterns_have_literal_prefixes() {
        let p = |s: &str| {
            literal_prefixes(s)
                .map(|(a, v)| (a, v.into_iter().map(|l| String::from_utf8(l).unwrap()).collect::<Vec<_>>()))
        };
        assert_eq!(p("^sys_"), Some((true, vec!["sys_".to_string()])));
        let (anchored, mut both) = p("^(sys|bot)_").unwrap();
        both.sort();
        assert_eq!((anchored, both), (true, vec!["bot_".to_string(), "sys_".to_string()]));
        assert!(p("^u_12[0-9]{2}$").unwrap().1.iter().all(|l| l.starts_with("u_12")));
        assert_eq!(p("sys_"), Some((false, vec!["sys_".to_string()])), "unanchored: a substring");
        assert_eq!(p("_word\\d+$").map(|(a, _)| a), Some(false));
        assert_eq!(p("^.*x"), None, "no literal prefix");
        assert_eq!(p("(?m)^sys_").map(|(a, _)| a), Some(false), "line anchors are not text anchors");
    }

    #[test]
    fn prefixes_are_found_at_every_length_they_have() {
        let long = "a".repeat(70);
        let dir = tempfile::tempdir().unwrap();
        let rule = |id: &str, pattern: &str| {
            format!(
                "  - id: {id}\n    when:\n      sendID: {{ regex: '^{pattern}' }}\n    decision: deny\n    error: {{ code: 150, message: no }}\n"
            )
        };
        let rules = [rule("long", &format!("{long}b")), rule("longer", &format!("{long}aa")), rule("short", "ab")];
        std::fs::write(dir.path().join("10.yaml"), format!("rules:\n{}", rules.concat())).unwrap();
        let set = crate::policy::load_dir(dir.path()).unwrap();
        let decided = |id: &str| {
            let body = serde_json::json!({ "sendID": id }).as_object().unwrap().clone();
            set.decide(&crate::event::Event::openim("c", body)).rule
        };
        assert_eq!(decided(&format!("{long}b")).as_deref(), Some("long"));
        assert_eq!(decided(&format!("{long}aax")).as_deref(), Some("longer"));
        assert_eq!(decided("abc").as_deref(), Some("short"));
        assert_eq!(decided(&long), None);
    }
}
