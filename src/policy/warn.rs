//! Warnings: what in a policy set loads but is probably a mistake, found by checking each
//! compiled rule against [`crate::catalog`] — a command in `on` that no IM server sends, a
//! glob that matches no command, a field in `when` or in a rate-cap key that none of the
//! rule's commands carries. Such a rule loads and silently never holds (or, for a cap key,
//! counts every callback under one value), which is why these are worth saying.
//!
//! A warning never refuses a set or a reload; `callgate validate --strict` makes them
//! errors. A set that does not compile gets no warnings: its errors come first.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::LazyLock;

use super::lines::RuleLines;
use super::model::{Commands, Cond, FieldPath, Group, OnCommands, Place, Rule, SourceFile, Warning, glob_reaches};
use crate::catalog::{self, Command, Server};
use crate::event::{ITEM_KEY, Source};

/// Every field any OpenIM command carries: what a rule without `on` is checked against.
/// Made once: a set of ten thousand such rules would otherwise make it ten thousand times.
static OPENIM_FIELDS: LazyLock<BTreeSet<&'static str>> =
    LazyLock::new(|| catalog::OPENIM.iter().flat_map(|c| c.fields.iter().copied()).collect());

/// Finds the first line of the rule that holds every needle; `None` when none does.
pub(super) type Locate<'a> = dyn Fn(&[&str]) -> Option<Place> + 'a;

/// The warnings of a compiled set, in file and rule order. `sources` are the files the
/// rules were compiled from, in the same order; each rule's lines are looked for in its file.
pub(super) fn set_warnings(rules: &[Rule], sources: &[SourceFile]) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let mut rest = rules;
    for src in sources {
        // INVARIANT: the set compiled, so every rule of the file did, in the order written.
        let count = rest.iter().take_while(|rule| rule.at.file == src.path).count();
        let (mine, after) = rest.split_at(count);
        rest = after;
        let lines = RuleLines::new(&src.text, mine.len());
        for (i, rule) in mine.iter().enumerate() {
            let locate =
                |needles: &[&str]| lines.find_in_rule(i, needles).map(|line| Place { file: src.path.clone(), line });
            warnings.extend(rule_warnings(rule, &locate));
        }
    }
    warnings
}

/// The warnings of one compiled rule, in the order its parts are written. `locate` finds
/// lines within the rule; what it cannot find is placed at the rule's start.
pub(super) fn rule_warnings(rule: &Rule, locate: &Locate<'_>) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let place = |needles: &[&str]| locate(needles).unwrap_or_else(|| rule.at.clone());
    // Nothing known to check the fields against: the warnings so far say why.
    let Some((scope, carried)) = commands_checked(rule, &place, &mut warnings) else {
        return warnings;
    };
    field_warnings(rule, locate, &scope, &carried, &mut warnings);
    item_field_warnings(rule, locate, &scope, &mut warnings);
    cap_key_warnings(rule, &place, &scope, &carried, &mut warnings);
    // In the order they are written.
    warnings.sort_by_key(|w| w.at().line);
    warnings
}

/// The commands `rule` applies to that an IM server sends, and every field they carry;
/// warns of each name and glob in `on` that matches none. `None` when no command is known.
fn commands_checked(
    rule: &Rule,
    place: &dyn Fn(&[&str]) -> Place,
    warnings: &mut Vec<Warning>,
) -> Option<(Commands, Cow<'static, BTreeSet<&'static str>>)> {
    let (exact, globs) = match &rule.on {
        OnCommands::Every => return Some((Commands::EveryOpenIm, Cow::Borrowed(&*OPENIM_FIELDS))),
        OnCommands::Some { exact, globs } => (exact, globs),
    };
    let id = || rule.id.to_string();
    let mut commands: Vec<&'static Command> = Vec::new();
    for name in exact {
        match catalog::find(name) {
            Some((_, command)) => commands.push(command),
            None => warnings.push(Warning::UnknownCommand {
                at: place(&[name]),
                rule: id(),
                command: name.to_string(),
                suggestion: suggest(name, catalog::all().map(|(_, c)| c.name)).map(str::to_string),
            }),
        }
    }
    for glob in globs {
        let before = commands.len();
        commands
            .extend(catalog::all().filter(|&(server, c)| glob_reaches(glob, source(server), c.name)).map(|(_, c)| c));
        if commands.len() == before {
            warnings.push(Warning::GlobMatchesNothing {
                at: place(&[glob]),
                rule: id(),
                glob: glob.to_string(),
                suggestion: suggest_glob(glob),
            });
        }
    }
    commands.sort_unstable_by_key(|c| c.name);
    commands.dedup_by_key(|c| c.name);
    let scope = match commands.as_slice() {
        [] => return None,
        [one] => Commands::One(one.name),
        several => Commands::Several(several.len()),
    };
    let mut carried: BTreeSet<&'static str> = commands.iter().flat_map(|c| c.fields.iter().copied()).collect();
    // A command decided item by item shows the rules each item under `item`.
    if commands.iter().any(|c| catalog::tencent_decided(c.name).is_some_and(|d| d.answer.is_per_item())) {
        carried.insert(crate::event::ITEM_KEY);
    }
    Some((scope, Cow::Owned(carried)))
}

/// Warns of each field in `when` whose top-level key none of the commands carries.
fn field_warnings(
    rule: &Rule,
    locate: &Locate<'_>,
    scope: &Commands,
    carried: &BTreeSet<&'static str>,
    warnings: &mut Vec<Warning>,
) {
    let mut fields = Vec::new();
    walk_fields(&rule.when, &mut fields);
    for (key, field) in uncarried(fields, carried) {
        let at = locate(&[&format!("{field}:")]).or_else(|| locate(&[&field])).unwrap_or_else(|| rule.at.clone());
        let suggestion = suggest(&key, carried.iter().copied()).map(str::to_string);
        warnings.push(Warning::UnknownField {
            at,
            rule: rule.id.to_string(),
            suggestion,
            key,
            field,
            commands: scope.clone(),
        });
    }
}

/// Warns of each `item.X` field in `when` whose `X` no item of the rule's per-item commands
/// carries (`item.To_Acount`).
fn item_field_warnings(rule: &Rule, locate: &Locate<'_>, scope: &Commands, warnings: &mut Vec<Warning>) {
    let OnCommands::Some { exact, globs } = &rule.on else { return };
    let item_fields: BTreeSet<&'static str> = catalog::TENCENT_DECIDED
        .iter()
        .filter(|d| {
            exact.iter().any(|e| **e == *d.name) || globs.iter().any(|g| glob_reaches(g, Source::Tencent, d.name))
        })
        .flat_map(|d| d.item_fields.iter().copied())
        .collect();
    if item_fields.is_empty() {
        return;
    }
    let mut fields = Vec::new();
    walk_fields(&rule.when, &mut fields);
    let mut seen = BTreeSet::new();
    for path in fields {
        let Some(key) = path.second_key().filter(|_| path.top_key() == ITEM_KEY) else { continue };
        let field = path.to_string();
        if item_fields.contains(&*key) || !seen.insert(field.clone()) {
            continue;
        }
        let at = locate(&[&format!("{field}:")]).or_else(|| locate(&[&field])).unwrap_or_else(|| rule.at.clone());
        let suggestion = suggest(&key, item_fields.iter().copied()).map(|s| format!("{ITEM_KEY}.{s}"));
        warnings.push(Warning::UnknownField {
            at,
            rule: rule.id.to_string(),
            suggestion,
            key: format!("{ITEM_KEY}.{key}"),
            field,
            commands: scope.clone(),
        });
    }
}

/// Warns of each rate-cap key field whose top-level key none of the commands carries.
fn cap_key_warnings(
    rule: &Rule,
    place: &dyn Fn(&[&str]) -> Place,
    scope: &Commands,
    carried: &BTreeSet<&'static str>,
    warnings: &mut Vec<Warning>,
) {
    let Some(cap) = &rule.rate_cap else { return };
    for (key, field) in uncarried(&cap.fields, carried) {
        let suggestion = suggest(&key, carried.iter().copied()).map(str::to_string);
        warnings.push(Warning::UnknownCapKey {
            at: place(&["key", &field]),
            rule: rule.id.to_string(),
            suggestion,
            key,
            field,
            commands: scope.clone(),
        });
    }
}

/// The fields among `paths` whose top-level key none of the commands carries, each once, in
/// order, as (top-level key, the field as written).
fn uncarried<'a>(
    paths: impl IntoIterator<Item = &'a FieldPath>,
    carried: &BTreeSet<&'static str>,
) -> Vec<(String, String)> {
    let mut seen = BTreeSet::new();
    paths
        .into_iter()
        .filter_map(|path| {
            let key = path.top_key();
            if carried.contains(&*key) {
                return None;
            }
            let field = path.to_string();
            seen.insert(field.clone()).then(|| (key.into_owned(), field))
        })
        .collect()
}

/// The source of events a catalog server sends.
fn source(server: Server) -> Source {
    match server {
        Server::OpenIm => Source::OpenIm,
        Server::Tencent => Source::Tencent,
    }
}

/// Every field path a group reads, in the order written, inside `any`/`all`/`not` too.
fn walk_fields<'a>(group: &'a Group, out: &mut Vec<&'a FieldPath>) {
    for cond in &group.0 {
        match cond {
            Cond::Field { field, .. } => out.push(field),
            Cond::Any(groups) | Cond::All(groups) => groups.iter().for_each(|g| walk_fields(g, out)),
            Cond::Not(g) => walk_fields(g, out),
        }
    }
}

/// The candidate `input` most probably meant, or `None` when nothing is close. In order of
/// preference: one that differs only in case (`blackUserId` → `blackUserID`); one that holds
/// all of the input's words in order, so a word left out is put back rather than another
/// swapped in (`callbackBeforeSendMsgCommand` → `callbackBeforeSendGroupMsgCommand`, not
/// `callbackBeforeAfterMsgCommand`); then the nearest by edit distance (a swap of two
/// letters is one edit). Nothing further than a third of the input's length is suggested;
/// ties go to the earliest candidate.
pub fn suggest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let input_lower = input.to_lowercase();
    let input_words = words(input);
    let length = input_lower.chars().count();
    let limit = length / 3;
    let mut best: Option<((bool, bool, usize), &str)> = None;
    for candidate in candidates {
        // Lengths that differ by more than the limit take more edits than it: skip the work.
        if candidate == input || candidate.chars().count().abs_diff(length) > limit {
            continue;
        }
        // Lowercased both sides, so a difference of case alone is distance 0.
        let distance = strsim::osa_distance(&input_lower, &candidate.to_lowercase());
        if distance > limit {
            continue;
        }
        let rank = (distance != 0, !is_subsequence(&input_words, &words(candidate)), distance);
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// The lowercased words of a name: split before capitals and at `.` and `_`, so
/// `Sns.CallbackBlackListAdd` is `sns callback black list add`; `ID` is one word.
fn words(name: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut previous_is_upper = false;
    for c in name.chars() {
        if c == '.' || c == '_' {
            words.push(String::new());
            previous_is_upper = false;
            continue;
        }
        if c.is_ascii_uppercase() && !previous_is_upper || words.is_empty() {
            words.push(String::new());
        }
        previous_is_upper = c.is_ascii_uppercase();
        if let Some(word) = words.last_mut() {
            word.push(c.to_ascii_lowercase());
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// Whether every word of `needle` is in `haystack`, in the same order.
fn is_subsequence(needle: &[String], haystack: &[String]) -> bool {
    let mut rest = haystack.iter();
    needle.iter().all(|word| rest.any(|w| w == word))
}

/// A glob of the usual shapes, `prefix*` or `*suffix`, corrected to the nearest prefix or
/// suffix of a known command that ends (or starts) at a word: `callbackAfterRemoveBlak*` →
/// `callbackAfterRemoveBlack*`. Other globs get no suggestion.
fn suggest_glob(glob: &str) -> Option<String> {
    if glob.matches('*').count() != 1 {
        return None;
    }
    if let Some(prefix) = glob.strip_suffix('*') {
        return suggest(prefix, GLOB_PARTS.0.iter().copied()).map(|p| format!("{p}*"));
    }
    if let Some(suffix) = glob.strip_prefix('*') {
        return suggest(suffix, GLOB_PARTS.1.iter().copied()).map(|s| format!("*{s}"));
    }
    None
}

/// The prefixes and suffixes of known command names that end or start at a word: before a
/// capital letter, after a `.`, or at an end.
static GLOB_PARTS: LazyLock<(BTreeSet<&'static str>, BTreeSet<&'static str>)> = LazyLock::new(|| {
    let (mut prefixes, mut suffixes) = (BTreeSet::new(), BTreeSet::new());
    for (_, command) in catalog::all() {
        let name = command.name;
        let boundaries = name
            .char_indices()
            .filter(|&(i, c)| i > 0 && c.is_ascii_uppercase())
            .map(|(i, _)| i)
            .chain(name.match_indices('.').map(|(i, _)| i + 1));
        for i in boundaries {
            prefixes.insert(&name[..i]);
            suffixes.insert(&name[i..]);
        }
        prefixes.insert(name);
        suffixes.insert(name);
    }
    (prefixes, suffixes)
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_of_case_is_suggested_first() {
        assert_eq!(suggest("blackUserId", ["blackUserID", "ownerUserID"]), Some("blackUserID"));
        // Even where another candidate is one edit away.
        assert_eq!(suggest("ownerUserId", ["ownerUserIds", "ownerUserID"]), Some("ownerUserID"));
        assert_eq!(suggest("seq", ["seq"]), None, "the input itself is not a suggestion");
    }

    #[test]
    fn typos_are_suggested_within_a_third_of_the_length() {
        let commands = || catalog::all().map(|(_, c)| c.name);
        assert_eq!(suggest("callbackBeforeAddBlakCommand", commands()), Some("callbackBeforeAddBlackCommand"));
        assert_eq!(suggest("callbackBeforeAddBalckCommand", commands()), Some("callbackBeforeAddBlackCommand"));
        assert_eq!(suggest("callbackbeforeaddblackcommand", commands()), Some("callbackBeforeAddBlackCommand"));
        assert_eq!(suggest("callbackBeforeSendMsgCommand", commands()), Some("callbackBeforeSendGroupMsgCommand"));
        assert_eq!(suggest("Sns.CallbackBlacklistDelete", commands()), Some("Sns.CallbackBlackListDelete"));
        assert_eq!(suggest("somethingElseEntirely", commands()), None);
        assert_eq!(suggest("blackUser", ["blackUserID"]), Some("blackUserID"));
        assert_eq!(suggest("black", ["blackUserID"]), None, "6 edits in 5 letters is too far");
        assert_eq!(suggest("x", ["ex"]), None, "short names get only case suggestions");
    }

    #[test]
    fn names_split_into_words() {
        assert_eq!(words("Sns.CallbackBlackListAdd"), ["sns", "callback", "black", "list", "add"]);
        assert_eq!(words("blackUserID"), ["black", "user", "id"]);
        assert_eq!(words("From_Account"), ["from", "account"]);
    }

    #[test]
    fn globs_are_corrected_at_word_boundaries() {
        assert_eq!(suggest_glob("callbackAfterRemoveBlak*").as_deref(), Some("callbackAfterRemoveBlack*"));
        assert_eq!(suggest_glob("callbackafterremove*").as_deref(), Some("callbackAfterRemove*"));
        assert_eq!(suggest_glob("*RemoveBlakCommand").as_deref(), Some("*RemoveBlackCommand"));
        assert_eq!(suggest_glob("Snss.*").as_deref(), Some("Sns.*"));
        assert_eq!(suggest_glob("call*Blak*"), None);
        assert_eq!(suggest_glob("zzzzzzzz*"), None);
    }

    #[test]
    fn commands_name_what_was_checked() {
        assert_eq!(Commands::One("callbackBeforeAddBlackCommand").to_string(), "`callbackBeforeAddBlackCommand`");
        assert_eq!(Commands::Several(3).to_string(), "any of the rule's 3 commands");
    }
}
