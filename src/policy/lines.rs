//! Lines found again by searching a policy file's text: where each rule starts, where a
//! word sits within a rule. Used where a check runs after parsing, when the parsed node no
//! longer knows its line.

/// The line on which each rule of a file starts, found from the text, so that checks made
/// after parsing can name a line. Block-style YAML (the normal way to write rules) gets
/// exact lines; anything else falls back to the line of `rules:`, or 1.
#[derive(Debug)]
pub struct RuleLines<'a> {
    lines: Vec<&'a str>,
    starts: Vec<usize>,
    fallback: usize,
}

impl<'a> RuleLines<'a> {
    /// Finds the start of each of the `rule_count` rules in `text`.
    pub fn new(text: &'a str, rule_count: usize) -> RuleLines<'a> {
        let lines: Vec<&str> = text.lines().collect();
        let rules_at = lines.iter().position(|l| {
            l.strip_prefix("rules:").is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
        });
        let Some(rules_at) = rules_at else {
            return RuleLines { lines, starts: Vec::new(), fallback: 1 };
        };
        let mut starts = sequence_item_lines(&lines, rules_at + 1);
        if starts.len() != rule_count {
            starts.clear();
        }
        RuleLines { lines, starts, fallback: rules_at + 1 }
    }

    /// The line where rule `index` starts.
    pub fn rule(&self, index: usize) -> usize {
        self.starts.get(index).copied().unwrap_or(self.fallback)
    }

    /// The first line of rule `index` that contains `needle`, or the rule's start.
    pub fn within_rule(&self, index: usize, needle: &str) -> usize {
        let start = self.rule(index);
        let end = self.starts.get(index + 1).copied().unwrap_or(self.lines.len() + 1);
        (start..end).find(|&n| self.lines.get(n - 1).is_some_and(|l| l.contains(needle))).unwrap_or(start)
    }

    /// The first line of rule `index` that holds every one of `needles`; `None` when no
    /// line does, or the rule's lines are not known (flow style).
    pub fn find_in_rule(&self, index: usize, needles: &[&str]) -> Option<usize> {
        let start = *self.starts.get(index)?;
        let end = self.starts.get(index + 1).copied().unwrap_or(self.lines.len() + 1);
        (start..end).find(|&n| self.lines.get(n - 1).is_some_and(|l| needles.iter().all(|needle| l.contains(needle))))
    }

    /// The first line outside any rule that starts with `key`, as in `default:`.
    pub fn top_level(&self, key: &str) -> usize {
        self.lines.iter().position(|l| l.starts_with(key)).map_or(1, |i| i + 1)
    }
}

/// The 1-based lines where the items of a block sequence start, reading `lines` from index
/// `from` until the sequence ends (a line indented less than its items, or as much but not
/// an item). Blank and comment lines, and a `---` before the first item, are skipped.
pub fn sequence_item_lines(lines: &[&str], from: usize) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut item_indent = None;
    for (i, line) in lines.iter().enumerate().skip(from) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || (item_indent.is_none() && trimmed.starts_with("---")) {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let is_item = trimmed == "-" || trimmed.starts_with("- ");
        let item_indent = *item_indent.get_or_insert(indent);
        if indent < item_indent || (indent == item_indent && !is_item) {
            break;
        }
        if indent == item_indent {
            starts.push(i + 1);
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_lines_block_style() {
        let text = "lists:\n  a: [x]\nrules:\n  # first\n  - id: one\n    decision: allow\n\n  - id: two\n    when:\n      f: { regex: 'x' }\n    decision: allow\ndefault: allow\n";
        let lines = RuleLines::new(text, 2);
        assert_eq!(lines.rule(0), 5);
        assert_eq!(lines.rule(1), 8);
        assert_eq!(lines.within_rule(1, "regex"), 10);
        assert_eq!(lines.within_rule(0, "regex"), 5);
        assert_eq!(lines.top_level("default:"), 12);
    }

    #[test]
    fn rule_lines_zero_indent_items() {
        let text = "rules:\n- id: one\n  decision: allow\n- id: two\n  decision: allow\n";
        let lines = RuleLines::new(text, 2);
        assert_eq!((lines.rule(0), lines.rule(1)), (2, 4));
    }

    #[test]
    fn rule_lines_flow_style_falls_back() {
        let text = "\nrules: [{id: a, decision: allow}]\n";
        let lines = RuleLines::new(text, 1);
        assert_eq!(lines.rule(0), 1);
    }
}
