//! The rule index: for one callback, which rules could possibly hold, found without looking
//! at every rule.
//!
//! Each rule gets one *anchor*: a top-level, positive condition that must hold for the rule
//! to hold. `equals`/`in` anchors go into a hash map per field, `in_list` anchors are
//! grouped by (field, list) so each membership test runs once. A `regex` anchored at the
//! start (`^…`) whose matches must begin with one of a few literal prefixes is filed under
//! those prefixes, so a field's text finds it with one hash lookup per prefix length; other
//! regexes go into `RegexSet`s per field, in chunks small enough that each set's lazy DFA
//! stays fast. A rule with none of these is anchored on its exact `on` commands, or else is
//! a candidate for every callback. A callback's candidates are then
//! checked in rule order, so the first-match semantics are those of a plain scan; the
//! index only skips rules that cannot hold.

use std::collections::HashMap;
use std::sync::Arc;

use regex::RegexSet;
use serde_json::{Map, Value};

use super::compile::{Cond, FieldPath, List, OnCommands, Rule, Test};
use super::eval::{lookup, value_text};
use super::parse::Scalar;

/// Rule positions (indexes into `PolicySet::rules`).
type RuleIds = Vec<u32>;

/// Patterns per `RegexSet`: past a few dozen, a set of ID-like patterns (Unicode `\d`,
/// bounded repeats) outgrows the lazy DFA's cache and matching falls back to a far slower
/// engine; many small sets stay on the fast path.
const REGEX_SET_CHUNK: usize = 32;

/// Anchored regexes of one field, by literal prefix.
#[derive(Debug, Default)]
struct Prefixes {
    by_prefix: HashMap<Box<[u8]>, RuleIds>,
    longest: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    equals: Vec<(FieldPath, HashMap<Box<str>, RuleIds>)>,
    lists: Vec<(FieldPath, Arc<List>, RuleIds)>,
    prefixes: Vec<(FieldPath, Prefixes)>,
    regexes: Vec<(FieldPath, RegexSet, RuleIds)>,
    by_command: HashMap<Box<str>, RuleIds>,
    always: RuleIds,
}

enum Anchor<'a> {
    Texts(&'a FieldPath, Vec<&'a str>),
    List(&'a FieldPath, &'a Arc<List>),
    Regex(&'a FieldPath, &'a str),
}

fn anchor(rule: &Rule) -> Option<Anchor<'_>> {
    let positive = || {
        rule.when.0.iter().filter_map(|c| match c {
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
                Test::InList(list) => Some(Anchor::List(field, list)),
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

impl Index {
    /// Builds the index of `rules`. Infallible: every regex was already compiled alone.
    pub(crate) fn build(rules: &[Rule]) -> Index {
        let mut index = Index::default();
        let mut equals: HashMap<&FieldPath, HashMap<Box<str>, RuleIds>> = HashMap::new();
        let mut lists: HashMap<(&FieldPath, &str), (Arc<List>, RuleIds)> = HashMap::new();
        let mut regexes: HashMap<&FieldPath, (Vec<&str>, RuleIds)> = HashMap::new();
        let mut prefixes: HashMap<&FieldPath, Prefixes> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match anchor(rule) {
                Some(Anchor::Texts(field, texts)) => {
                    let by_text = equals.entry(field).or_default();
                    for t in texts {
                        by_text.entry(t.into()).or_default().push(i);
                    }
                }
                Some(Anchor::List(field, list)) => {
                    lists.entry((field, list.name.as_str())).or_insert_with(|| (list.clone(), Vec::new())).1.push(i);
                }
                Some(Anchor::Regex(field, pattern)) => match literal_prefixes(pattern) {
                    Some(literals) => {
                        let index = prefixes.entry(field).or_default();
                        for literal in literals {
                            index.longest = index.longest.max(literal.len());
                            let ids = index.by_prefix.entry(literal.into()).or_default();
                            if ids.last() != Some(&i) {
                                ids.push(i);
                            }
                        }
                    }
                    None => {
                        let (patterns, ids) = regexes.entry(field).or_default();
                        patterns.push(pattern);
                        ids.push(i);
                    }
                },
                None => match &rule.on {
                    OnCommands::Some { exact, globs } if globs.is_empty() => {
                        for c in exact {
                            index.by_command.entry(c.clone()).or_default().push(i);
                        }
                    }
                    _ => index.always.push(i),
                },
            }
        }
        index.equals = equals.into_iter().map(|(f, m)| (f.clone(), m)).collect();
        index.lists = lists.into_iter().map(|((f, _), (l, ids))| (f.clone(), l, ids)).collect();
        index.prefixes = prefixes.into_iter().map(|(f, p)| (f.clone(), p)).collect();
        for (field, (patterns, ids)) in regexes {
            for (patterns, ids) in patterns.chunks(REGEX_SET_CHUNK).zip(ids.chunks(REGEX_SET_CHUNK)) {
                match RegexSet::new(patterns) {
                    Ok(set) => index.regexes.push((field.clone(), set, ids.to_vec())),
                    // A set can exceed the size limit where each regex alone did not; those
                    // rules are then checked on every callback: slower, still exact.
                    Err(_) => index.always.extend_from_slice(ids),
                }
            }
        }
        index.always.sort_unstable();
        index
    }

    /// The rules that could hold for this callback, in rule order, without duplicates.
    pub(crate) fn candidates(&self, command: &str, body: &Map<String, Value>) -> RuleIds {
        let mut out = RuleIds::with_capacity(8);
        for (field, by_text) in &self.equals {
            if let Some(text) = lookup(body, field).and_then(value_text)
                && let Some(ids) = by_text.get(&*text)
            {
                out.extend_from_slice(ids);
            }
        }
        for (field, list, ids) in &self.lists {
            if let Some(text) = lookup(body, field).and_then(value_text)
                && list.ids.contains(&*text)
            {
                out.extend_from_slice(ids);
            }
        }
        for (field, index) in &self.prefixes {
            if let Some(text) = lookup(body, field).and_then(value_text) {
                let bytes = text.as_bytes();
                for len in 1..=bytes.len().min(index.longest) {
                    if let Some(ids) = index.by_prefix.get(&bytes[..len]) {
                        out.extend_from_slice(ids);
                    }
                }
            }
        }
        for (field, set, ids) in &self.regexes {
            if let Some(text) = lookup(body, field).and_then(value_text) {
                out.extend(set.matches(&text).iter().filter_map(|m| ids.get(m).copied()));
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

/// The literals every match of `pattern` must begin with, when the pattern is anchored at
/// the start of the text and they are few and non-empty; `None` otherwise.
fn literal_prefixes(pattern: &str) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::Look;
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let seq = extractor.extract(&hir);
    let literals = seq.literals()?;
    if literals.is_empty() || literals.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    Some(literals.iter().map(|l| l.as_bytes().to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::literal_prefixes;

    #[test]
    fn anchored_patterns_have_literal_prefixes() {
        let p = |s: &str| literal_prefixes(s).map(|v| v.into_iter().map(|l| String::from_utf8(l).unwrap()).collect::<Vec<_>>());
        assert_eq!(p("^sys_"), Some(vec!["sys_".to_string()]));
        let mut both = p("^(sys|bot)_").unwrap();
        both.sort();
        assert_eq!(both, ["bot_", "sys_"]);
        assert!(p("^u_12[0-9]{2}$").unwrap().iter().all(|l| l.starts_with("u_12")));
        assert_eq!(p("sys_"), None, "not anchored");
        assert_eq!(p("^.*x"), None, "no literal prefix");
        assert_eq!(p("(?m)^sys_"), None, "line anchors are not text anchors");
    }
}
