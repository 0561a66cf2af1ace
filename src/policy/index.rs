//! The rule index: for one callback, which rules could possibly hold, found without looking
//! at every rule.
//!
//! Each rule gets one *anchor*: a top-level, positive condition that must hold for the rule
//! to hold. `equals`/`in` anchors go into a hash map per field, `in_list` anchors are
//! grouped by (field, list) so each membership test runs once, and `regex` anchors go into
//! one `RegexSet` per field. A rule with none of these is anchored on its exact `on`
//! commands, or else is a candidate for every callback. A callback's candidates are then
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

#[derive(Debug, Default)]
pub(crate) struct Index {
    equals: Vec<(FieldPath, HashMap<Box<str>, RuleIds>)>,
    lists: Vec<(FieldPath, Arc<List>, RuleIds)>,
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
                Some(Anchor::Regex(field, pattern)) => {
                    let (patterns, ids) = regexes.entry(field).or_default();
                    patterns.push(pattern);
                    ids.push(i);
                }
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
        for (field, (patterns, ids)) in regexes {
            match RegexSet::new(&patterns) {
                Ok(set) => index.regexes.push((field.clone(), set, ids)),
                // A set can exceed the size limit where each regex alone did not; those rules
                // are then checked on every callback, which is slower but still exact.
                Err(_) => index.always.extend(ids),
            }
        }
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
