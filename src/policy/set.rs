//! [`PolicySet`]: the compiled rules of one set with their index, default and warnings,
//! and the set's identity (version, files). Built by `load` from what `compile` and `warn`
//! return; decided on by `eval`.

use std::collections::HashMap;
use std::path::PathBuf;

use regex::Regex;

use super::index::Index;
use super::model::{Cond, Group, Rule, Test, Warning};
use crate::decision::Outcome;

/// A compiled, immutable policy set. Requests share it through an `Arc`; a reload builds a
/// new one and swaps it in whole.
#[derive(Debug)]
pub struct PolicySet {
    pub(crate) rules: Vec<Rule>,
    pub(crate) default: Outcome,
    pub(crate) index: Index,
    /// Every top-level body key a rule reads, by length then bytes: decoders need keep no
    /// other.
    body_keys: Box<[Box<str>]>,
    /// For each of 256 slots ([`slot_of`] a key), the body key in it: 0 for none, `SEVERAL`
    /// when more than one, else its place in `body_keys` plus one. Asked for every key of
    /// every body, [`PolicySet::reads`] answers with one comparison at most, mostly none.
    body_key_slots: [u16; 256],
    /// The rules that test a list held in Redis, in order: what a decision asks about.
    pub(crate) redis_list_rules: Vec<u32>,
    warnings: Vec<Warning>,
    version: String,
    files: Vec<PathBuf>,
}

impl PolicySet {
    /// The sha256 (hex) of the set's file names and contents.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The policy and list files the set was built from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// How many rules the set has.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// What is decided when no rule holds.
    pub fn default_outcome(&self) -> &Outcome {
        &self.default
    }

    /// What in the set is probably a mistake (a command no IM server sends, a field none of
    /// a rule's commands carries), in file and rule order. Warnings never refuse a set.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Whether any rule of the set reads the top-level body key `key` (in a condition, a
    /// rate-cap key, or below it by a dotted path or JSON pointer). A decoder may drop the
    /// other keys: no answer can depend on them.
    #[inline(always)]
    pub fn reads(&self, key: &str) -> bool {
        match self.body_key_slots[slot_of(key)] {
            0 => false,
            // By length first: most comparisons end without comparing bytes.
            SEVERAL => {
                self.body_keys.binary_search_by(|k| (k.len(), k.as_bytes()).cmp(&(key.len(), key.as_bytes()))).is_ok()
            }
            i => self.body_keys.get(usize::from(i) - 1).is_some_and(|k| **k == *key),
        }
    }

    /// Every compiled regex of the set, by pattern.
    pub(super) fn regexes(&self) -> HashMap<String, Regex> {
        fn walk(group: &Group, out: &mut HashMap<String, Regex>) {
            for cond in &group.0 {
                match cond {
                    Cond::Field { test: Test::Regex(re), .. } => {
                        out.insert(re.as_str().to_string(), re.clone());
                    }
                    Cond::Field { .. } => {}
                    Cond::Any(groups) | Cond::All(groups) => groups.iter().for_each(|g| walk(g, out)),
                    Cond::Not(g) => walk(g, out),
                }
            }
        }
        let mut out = HashMap::new();
        for rule in &self.rules {
            walk(&rule.when, &mut out);
        }
        out
    }

    /// The empty set: no rules, default allow. Used only where no directory is involved.
    pub fn empty() -> PolicySet {
        PolicySet {
            rules: Vec::new(),
            default: Outcome::Allow,
            index: Index::default(),
            body_keys: Box::default(),
            body_key_slots: [0; 256],
            redis_list_rules: Vec::new(),
            warnings: Vec::new(),
            version: String::new(),
            files: Vec::new(),
        }
    }

    /// Assembles a set from compiled rules: builds their index and the body keys they read.
    pub(super) fn new(
        rules: Vec<Rule>,
        default: Outcome,
        warnings: Vec<Warning>,
        version: String,
        files: Vec<PathBuf>,
    ) -> PolicySet {
        let index = Index::build(&rules);
        let body_keys = body_keys(&rules);
        let mut body_key_slots = [0; 256];
        for (i, key) in body_keys.iter().enumerate() {
            let slot = &mut body_key_slots[slot_of(key)];
            *slot = match (*slot, u16::try_from(i + 1)) {
                (0, Ok(i)) if i != SEVERAL => i,
                _ => SEVERAL,
            };
        }
        let redis_list_rules =
            (0..rules.len() as u32).filter(|&i| tests_a_redis_list(&rules[i as usize].when)).collect();
        PolicySet { rules, default, index, body_keys, body_key_slots, redis_list_rules, warnings, version, files }
    }
}

/// Whether `group` tests a list held in Redis.
fn tests_a_redis_list(group: &Group) -> bool {
    group.0.iter().any(|cond| match cond {
        Cond::Field { test: Test::InList(list), .. } => list.redis.is_some(),
        Cond::Field { .. } => false,
        Cond::Any(groups) | Cond::All(groups) => groups.iter().any(tests_a_redis_list),
        Cond::Not(g) => tests_a_redis_list(g),
    })
}

/// A slot of [`PolicySet::body_key_slots`] holding more than one key.
const SEVERAL: u16 = u16::MAX;

/// The slot of [`PolicySet::body_key_slots`] for `key`: from its length, its first two
/// bytes and its last, which tell apart most keys of one length ("operationID",
/// "ownerUserID").
#[inline(always)]
fn slot_of(key: &str) -> usize {
    let bytes = key.as_bytes();
    let byte = |i: usize| bytes.get(i).map_or(0, |&b| usize::from(b));
    let last = bytes.last().map_or(0, |&b| usize::from(b));
    (bytes.len() * 131 + byte(0) * 31 + byte(1) * 7 + last) % 256
}

/// The top-level body keys `rules` read, by length then bytes, without repeats.
fn body_keys(rules: &[Rule]) -> Box<[Box<str>]> {
    fn walk(group: &Group, out: &mut Vec<Box<str>>) {
        for cond in &group.0 {
            match cond {
                Cond::Field { field, .. } => out.push(field.top_key().into()),
                Cond::Any(groups) | Cond::All(groups) => groups.iter().for_each(|g| walk(g, out)),
                Cond::Not(g) => walk(g, out),
            }
        }
    }
    let mut keys = Vec::new();
    for rule in rules {
        walk(&rule.when, &mut keys);
        if let Some(cap) = &rule.rate_cap {
            keys.extend(cap.fields.iter().map(|f| f.top_key().into()));
        }
    }
    keys.sort_unstable_by(|a, b| (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes())));
    keys.dedup();
    keys.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_exactly_the_top_level_keys_of_conditions_and_cap_keys() {
        let long = "k".repeat(70);
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "rules:\n  - id: r\n    when:\n      sendID: {{ equals: a }}\n      ex.inner: {{ exists: true }}\n      {long}: {{ exists: true }}\n      any:\n        - {{ recvID: {{ equals: b }} }}\n    rate_cap: {{ key: [groupID], max: 1, per: 1s }}\n    decision: deny\n    error: {{ code: 150, message: no }}\n"
        );
        std::fs::write(dir.path().join("10.yaml"), yaml).unwrap();
        let set = super::super::load_dir(dir.path()).unwrap();
        for key in ["sendID", "ex", "recvID", "groupID", long.as_str()] {
            assert!(set.reads(key), "{key}");
        }
        let other = "k".repeat(64);
        for key in ["sendid", "sendIE", "e", "inner", "ex.inner", "groupIDs", "", other.as_str()] {
            assert!(!set.reads(key), "{key}");
        }
    }

    #[test]
    fn reads_every_key_of_a_set_whose_keys_share_slots() {
        let dir = tempfile::tempdir().unwrap();
        let fields: String = (0..600).map(|i| format!("      field{i}: {{ exists: true }}\n")).collect();
        let yaml = format!("rules:\n  - id: r\n    when:\n{fields}    decision: allow\n");
        std::fs::write(dir.path().join("10.yaml"), yaml).unwrap();
        let set = super::super::load_dir(dir.path()).unwrap();
        assert!(set.body_key_slots.contains(&super::SEVERAL));
        for i in 0..600 {
            assert!(set.reads(&format!("field{i}")), "field{i}");
            assert!(!set.reads(&format!("fielD{i}")), "fielD{i}");
            assert!(!set.reads(&format!("field{}", i + 600)));
        }
    }
}
