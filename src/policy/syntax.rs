//! YAML that does not parse, explained in plain words: an unclosed `[` or quote, a line
//! indented to no level above it, a tab, a stray `]`. The YAML parser (libyaml) reports where
//! it gave up in its own terms ("did not find expected key … while parsing a block mapping");
//! this module reads that report against the text and says what the writer should change,
//! on the line where the change goes. What it does not recognise keeps the parser's words.
//!
//! Only messages are made here; `parse` decides when YAML is broken.

/// Why `text` is not YAML, as a 1-based line and a message. `err` is what `serde_yaml_ng`
/// said reading `text`.
pub(super) fn explain(text: &str, err: &serde_yaml_ng::Error) -> (usize, String) {
    let report = Report::new(text, err);
    let line = report.line.clamp(1, report.lines.len().max(1));
    explain_report(&report).unwrap_or_else(|| (line, format!("not valid YAML: {}", report.problem)))
}

/// The parser's report, taken apart, with the text it is about.
struct Report<'t> {
    lines: Vec<&'t str>,
    /// What went wrong, in the parser's words, without places.
    problem: String,
    /// Where: 1-based line and column (in characters).
    line: usize,
    column: usize,
    /// What the parser was reading, as in "parsing a flow sequence", and where that began.
    context: Option<(String, usize, usize)>,
}

impl<'t> Report<'t> {
    fn new(text: &'t str, err: &serde_yaml_ng::Error) -> Report<'t> {
        let message = err.to_string();
        let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
        let (head, context) = match message.split_once(", while ") {
            Some((head, context)) => (head, Some(context)),
            None => (message.as_str(), None),
        };
        let problem = head.split(" at line ").next().unwrap_or(head).to_string();
        // The parser leaves out the context's place when it is the problem's own.
        let context = context.map(|c| match c.split_once(" at line ") {
            Some((what, place)) => {
                let (l, col) = place.split_once(" column ").unwrap_or((place, "1"));
                (what.to_string(), l.trim().parse().unwrap_or(line), col.trim().parse().unwrap_or(column))
            }
            None => (c.to_string(), line, column),
        });
        Report { lines: text.lines().collect(), problem, line, column, context }
    }

    /// The text of line `line` (1-based); empty past the end.
    fn text(&self, line: usize) -> &'t str {
        line.checked_sub(1).and_then(|i| self.lines.get(i)).copied().unwrap_or("")
    }

    /// The character at a 1-based line and column.
    fn char_at(&self, line: usize, column: usize) -> Option<char> {
        self.text(line).chars().nth(column.checked_sub(1)?)
    }

    /// The word starting at a 1-based line and column: up to a space or a flow indicator.
    fn word_at(&self, line: usize, column: usize) -> String {
        let rest: String = self.text(line).chars().skip(column.saturating_sub(1)).collect();
        let word: String =
            rest.chars().take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '[' | ']' | '{' | '}')).collect();
        if word.is_empty() { rest.chars().take(1).collect() } else { word }
    }

    /// How many spaces indent line `line`.
    fn indent(&self, line: usize) -> usize {
        let text = self.text(line);
        text.len() - text.trim_start_matches(' ').len()
    }

    /// Whether the problem is at the first character of its line, past the indentation.
    fn is_at_line_start(&self) -> bool {
        self.column == self.indent(self.line) + 1
    }

    /// The context's kind and place, when it is `kind`.
    fn context_is(&self, kind: &str) -> Option<(usize, usize)> {
        self.context.as_ref().filter(|(what, ..)| what.ends_with(kind)).map(|&(_, l, c)| (l, c))
    }
}

/// One kind of problem recognised: its line and explanation, or `None`.
type Explainer = fn(&Report<'_>) -> Option<(usize, String)>;

/// The explanation of a problem this module recognises, most specific first: a second
/// document, an unknown anchor, a tab, an unclosed quote, a bad escape, an unclosed or
/// interrupted `[`/`{`, a stray `]`/`}`, a value with `: `, indentation, text after a value,
/// a character that cannot start one. `None` for anything else.
fn explain_report(r: &Report<'_>) -> Option<(usize, String)> {
    // Each explains problems no earlier one does; the order is the order of precedence.
    let explainers: [Explainer; 6] =
        [document_anchor_or_tab, quote_or_escape, bracket, colon_in_value, indentation, key_or_token];
    explainers.iter().find_map(|explain| explain(r))
}

/// A second document, an alias to no anchor, a tab.
fn document_anchor_or_tab(r: &Report<'_>) -> Option<(usize, String)> {
    let problem = r.problem.as_str();
    let here = r.char_at(r.line, r.column);

    if problem.contains("more than one document") {
        return Some((second_document_line(&r.lines), "a second YAML document starts here; a policy file is one document: remove the `---`, or move what follows to a file of its own".into()));
    }
    if problem == "unknown anchor" {
        let alias = r.word_at(r.line, r.column);
        let name = alias.trim_start_matches('*');
        return Some((
            r.line,
            format!(
                "`*{name}` refers to no anchor `&{name}` defined before it; to write text that starts with `*`, put it in quotes"
            ),
        ));
    }
    if problem.contains("tab character") || here == Some('\t') {
        let column = r.text(r.line).find('\t').map_or(r.column, |i| i + 1);
        return Some((
            r.line,
            format!("tab character at column {column}: YAML indents with spaces only; replace the tab with spaces"),
        ));
    }
    None
}

/// An unclosed quote, an escape double quotes do not know.
fn quote_or_escape(r: &Report<'_>) -> Option<(usize, String)> {
    let problem = r.problem.as_str();

    if problem == "found unexpected end of stream"
        && let Some((line, column)) = r.context_is("quoted scalar")
    {
        let quote = r.char_at(line, column).unwrap_or('"');
        return Some((
            line,
            format!(
                "unclosed quote: the `{quote}` at column {column} is never closed, so YAML reads the rest of the file as text; end the text with `{quote}`"
            ),
        ));
    }
    if matches!(
        problem,
        "found unknown escape character"
            | "did not find expected hexadecimal number"
            | "found invalid Unicode character escape code"
    ) {
        // From the backslash (where the parser is, or before it) to where it gave up.
        let chars: Vec<char> = r.text(r.line).chars().collect();
        let upto = r.column.min(chars.len());
        let start = chars[..upto].iter().rposition(|c| *c == '\\').unwrap_or(upto.saturating_sub(1));
        let end = if problem == "found unknown escape character" { start + 2 } else { upto.max(start + 2) };
        let escape: String = chars.get(start..end.min(chars.len())).unwrap_or_default().iter().collect();
        let bare = escape.trim_start_matches('\\');
        return Some((
            r.line,
            format!(
                "`{escape}` is not an escape that double quotes know; write the text in single quotes (`'\\{bare}'`), or double the backslash (`\\\\{bare}`)"
            ),
        ));
    }
    None
}

/// An unclosed or interrupted `[`/`{`, a stray `]`/`}`.
fn bracket(r: &Report<'_>) -> Option<(usize, String)> {
    let problem = r.problem.as_str();
    let here = r.char_at(r.line, r.column);

    for (expected, kind, open, close, noun, parts) in [
        ("did not find expected ',' or ']'", "flow sequence", '[', ']', "list", "items"),
        ("did not find expected ',' or '}'", "flow mapping", '{', '}', "map", "entries"),
    ] {
        if problem != expected {
            continue;
        }
        let (line, column) = r.context_is(kind).unwrap_or((r.line, r.column));
        if line < r.line {
            return Some((line, unclosed(open, close, noun, parts, column)));
        }
        return Some((
            line,
            format!(
                "unexpected `{}` in the {noun} that starts with `{open}` at column {column}; separate its {parts} with `,` and end it with `{close}`",
                r.word_at(r.line, r.column)
            ),
        ));
    }
    if problem == "did not find expected node content"
        && r.context_is("flow node").is_some()
        && let Some((open, line, column)) = unclosed_bracket(&r.lines, r.line, r.column)
    {
        let (close, noun, parts) = if open == '[' { (']', "list", "items") } else { ('}', "map", "entries") };
        return Some((line, unclosed(open, close, noun, parts, column)));
    }
    if let Some(closer @ (']' | '}')) = here {
        let open = if closer == ']' { '[' } else { '{' };
        return Some((
            r.line,
            format!("stray `{closer}` at column {}: no `{open}` is open for it to close; remove it", r.column),
        ));
    }
    None
}

/// A value holding `: `, a line indented into the value above it, a list item after a key.
fn colon_in_value(r: &Report<'_>) -> Option<(usize, String)> {
    let problem = r.problem.as_str();

    if problem == "mapping values are not allowed in this context" {
        let text = r.text(r.line);
        let before: String = text.chars().take(r.column.saturating_sub(1)).collect();
        if let Some(value_at) = before.find(": ") {
            let value = text[value_at + 2..].split(" #").next().unwrap_or("").trim();
            return Some((
                r.line,
                format!("`{value}` holds `: `, which YAML reads as a key and its value; put the value in quotes"),
            ));
        }
        return Some((
            r.line,
            format!(
                "bad indentation: this line is indented by {}, deeper than the line before it, so YAML reads it as more of that line's value; indent it like the keys it belongs with",
                spaces(r.indent(r.line))
            ),
        ));
    }
    if problem == "block sequence entries are not allowed in this context" {
        return Some((r.line, "a list item (`- `) cannot follow a key on the same line; start the list on the next line, or write it as `[a, b]`".into()));
    }
    None
}

/// A line or `- ` item indented to no level above it, a `-` without its space, text after a value.
fn indentation(r: &Report<'_>) -> Option<(usize, String)> {
    let problem = r.problem.as_str();

    if problem == "did not find expected key" || problem == "did not find expected '-' indicator" {
        let trimmed = r.text(r.line).trim_start();
        if !r.is_at_line_start() {
            return after_value(r);
        }
        if problem.ends_with("indicator") {
            if trimmed.starts_with('-') && !trimmed.starts_with("- ") && trimmed != "-" {
                let item = r.word_at(r.line, r.column);
                return Some((
                    r.line,
                    format!("`{}` is not a list item: put a space after the `-`", item.trim_end_matches(':')),
                ));
            }
            if let Some((list_line, column)) = r.context_is("block collection")
                && r.indent(r.line) + 1 == column
            {
                return Some((
                    r.line,
                    format!(
                        "not a list item: this line lines up with the `- ` items of the list from line {list_line} but does not start with `- `; start it with `- `, or indent it under the item it belongs to"
                    ),
                ));
            }
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            return Some((
                r.line,
                format!(
                    "bad indentation: this `- ` item is indented by {}, which lines up with no list above it; indent it like the other items of its list",
                    spaces(r.indent(r.line))
                ),
            ));
        }
        return Some((
            r.line,
            format!(
                "bad indentation: this line is indented by {}, which lines up with no key above it; indent it like the keys it belongs with",
                spaces(r.indent(r.line))
            ),
        ));
    }
    None
}

/// A key without `: `, an anchor sign or other character that cannot start a value.
fn key_or_token(r: &Report<'_>) -> Option<(usize, String)> {
    let problem = r.problem.as_str();
    let here = r.char_at(r.line, r.column);

    if problem == "could not find expected ':'"
        && let Some((line, column)) = r.context_is("simple key")
    {
        let words: String = r.text(line).chars().skip(column.saturating_sub(1)).collect();
        let words = words.split(" #").next().unwrap_or("").trim_end();
        if let Some((key, value)) = words.split_once(':') {
            return Some((
                line,
                format!(
                    "`{words}` has no space after its `:`, so YAML reads it as one word, not a key and its value; write `{key}: {value}`"
                ),
            ));
        }
        return Some((line, format!("`{words}` has no `:`; write a key and its value as `key: value`")));
    }
    if problem == "found unexpected ':'" {
        let (line, column) = r.context_is("plain scalar").unwrap_or((r.line, r.column));
        let word = r.word_at(line, column);
        return Some((line, format!("`{word}`: put a space after the `:`, as in `key: value`")));
    }
    if problem == "did not find expected alphabetic or numeric character"
        && let Some((line, column)) = r.context_is("an anchor").or_else(|| r.context_is("an alias"))
    {
        let word = r.word_at(line, column);
        let sign = word.chars().next().unwrap_or('&');
        return Some((
            line,
            format!(
                "`{word}`: a value that starts with `{sign}` is read as an anchor (`&name`) or alias (`*name`); put the value in quotes"
            ),
        ));
    }
    if problem == "found character that cannot start any token" {
        let c = here.unwrap_or('?');
        return Some((r.line, format!("`{c}` cannot start a value; put the value in quotes")));
    }
    None
}

/// `1 space`, `5 spaces`.
fn spaces(n: usize) -> String {
    if n == 1 { "1 space".into() } else { format!("{n} spaces") }
}

/// The message for a `[` or `{` the file never closes.
fn unclosed(open: char, close: char, noun: &str, parts: &str, column: usize) -> String {
    format!(
        "unclosed `{open}`: the {noun} that starts at column {column} has no `{close}`; end it with `{close}`, and separate its {parts} with `,`"
    )
}

/// Text after a value that has ended on its line: a closing quote or bracket, then more.
fn after_value(r: &Report<'_>) -> Option<(usize, String)> {
    let before: Vec<char> = r.text(r.line).chars().take(r.column.saturating_sub(1)).collect();
    let (at, ended) = before.iter().enumerate().rev().find(|(_, c)| !c.is_whitespace())?;
    let word = r.word_at(r.line, r.column);
    let column = at + 1;
    match ended {
        '\'' | '"' => Some((
            r.line,
            format!(
                "unexpected `{word}` after the closing quote at column {column}; a quoted value ends at its closing quote (inside single quotes, write a quote as `''`)"
            ),
        )),
        ']' | '}' => Some((
            r.line,
            format!(
                "unexpected `{word}` after the `{ended}` at column {column}; put it inside the brackets, or remove it"
            ),
        )),
        _ => None,
    }
}

/// The line of the `---` that starts a second document: the first after any content.
fn second_document_line(lines: &[&str]) -> usize {
    let mut has_content = false;
    for (i, line) in lines.iter().enumerate() {
        if has_content && (line.starts_with("---") || line.starts_with("...")) {
            return i + 1;
        }
        let trimmed = line.trim();
        has_content |= !trimmed.is_empty()
            && !trimmed.starts_with('#')
            && !trimmed.starts_with('%')
            && !trimmed.starts_with("---");
    }
    1
}

/// The innermost `[` or `{` still open at a 1-based line and column, with its line and
/// column: a reading of the text as YAML's flow collections, quotes and comments are, enough
/// to find what a parser that ran out of text left open.
fn unclosed_bracket(lines: &[&str], to_line: usize, to_column: usize) -> Option<(char, usize, usize)> {
    let mut open: Vec<(char, usize, usize)> = Vec::new();
    let mut quote: Option<char> = None;
    for (i, line) in lines.iter().enumerate().take(to_line) {
        let chars: Vec<char> = line.chars().collect();
        // A bracket or quote opens only where a value may start; `[` inside `a[0]` is text.
        let mut is_value_start = true;
        let mut j = 0;
        while j < chars.len() && !(i + 1 == to_line && j + 1 >= to_column) {
            let c = chars[j];
            let next = chars.get(j + 1).copied();
            j += 1;
            if let Some(q) = quote {
                match (c, next) {
                    ('\\', _) if q == '"' => j += 1,
                    ('\'', Some('\'')) if q == '\'' => j += 1,
                    _ if c == q => quote = None,
                    _ => {}
                }
                continue;
            }
            match c {
                '#' if j == 1 || chars[j - 2].is_whitespace() => break,
                ' ' | '\t' => {}
                '[' | '{' if is_value_start || !open.is_empty() => {
                    open.push((c, i + 1, j));
                    is_value_start = true;
                }
                ']' | '}' if !open.is_empty() => {
                    open.pop();
                    is_value_start = false;
                }
                ',' if !open.is_empty() => is_value_start = true,
                '\'' | '"' if is_value_start => quote = Some(c),
                ':' | '-' if next.is_none_or(char::is_whitespace) => is_value_start = true,
                _ => is_value_start = false,
            }
        }
    }
    open.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The explanation of `text`, which must not parse, as `line: message`.
    fn explained(text: &str) -> String {
        let err = serde_yaml_ng::from_str::<serde::de::IgnoredAny>(text).unwrap_err();
        let (line, message) = explain(text, &err);
        format!("{line}: {message}")
    }

    #[test]
    fn unclosed_brackets_are_named_where_they_open() {
        assert_eq!(
            explained("rules:\n  - id: a\n    decision: [deny\n"),
            "3: unclosed `[`: the list that starts at column 15 has no `]`; end it with `]`, and separate its items with `,`"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    on: [callbackA, callbackB\n    decision: allow\n"),
            "3: unclosed `[`: the list that starts at column 9 has no `]`; end it with `]`, and separate its items with `,`"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    when: { x: { equals: 1 }\n    decision: allow\n"),
            "3: unclosed `{`: the map that starts at column 11 has no `}`; end it with `}`, and separate its entries with `,`"
        );
        // The parser names no place here: the bracket is found in the text.
        assert_eq!(
            explained("rules:\n  - id: a\n    decision: allow\n    on: [x,\n"),
            "4: unclosed `[`: the list that starts at column 9 has no `]`; end it with `]`, and separate its items with `,`"
        );
    }

    #[test]
    fn text_where_a_collection_expects_a_comma_or_its_end() {
        assert_eq!(
            explained("rules:\n  - id: a\n    when:\n      x: { regex: \"a\"b }\n"),
            "4: unexpected `b` in the map that starts with `{` at column 10; separate its entries with `,` and end it with `}`"
        );
    }

    #[test]
    fn tabs_quotes_and_escapes() {
        assert_eq!(
            explained("rules:\n  - id: a\n\tdecision: deny\n"),
            "3: tab character at column 1: YAML indents with spaces only; replace the tab with spaces"
        );
        assert_eq!(
            explained("rules:\n\t- id: a\n"),
            "2: tab character at column 1: YAML indents with spaces only; replace the tab with spaces"
        );
        assert_eq!(
            explained("rules:\n  - id: \"a\n    decision: deny\n"),
            "2: unclosed quote: the `\"` at column 9 is never closed, so YAML reads the rest of the file as text; end the text with `\"`"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    when:\n      x: { regex: \"\\d\" }\n"),
            "4: `\\d` is not an escape that double quotes know; write the text in single quotes (`'\\d'`), or double the backslash (`\\\\d`)"
        );
    }

    #[test]
    fn indentation() {
        assert_eq!(
            explained("rules:\n  - id: a\n     decision: deny\n"),
            "3: bad indentation: this line is indented by 5 spaces, deeper than the line before it, so YAML reads it as more of that line's value; indent it like the keys it belongs with"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    when:\n      x: {equals: 1}\n     y: {equals: 2}\n"),
            "5: bad indentation: this line is indented by 5 spaces, which lines up with no key above it; indent it like the keys it belongs with"
        );
        assert_eq!(
            explained("rules:\n- id: a\n  decision: allow\n  - id: b\n"),
            "4: bad indentation: this `- ` item is indented by 2 spaces, which lines up with no list above it; indent it like the other items of its list"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    decision: allow\n  id: b\n"),
            "4: not a list item: this line lines up with the `- ` items of the list from line 2 but does not start with `- `; start it with `- `, or indent it under the item it belongs to"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    decision: allow\n   on: [x]\n"),
            "4: bad indentation: this line is indented by 3 spaces, which lines up with no key above it; indent it like the keys it belongs with"
        );
        assert_eq!(
            explained("a: |\n  x\n b: 1\n"),
            "3: bad indentation: this line is indented by 1 space, which lines up with no key above it; indent it like the keys it belongs with"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    decision: allow\n  -id: b\n"),
            "4: `-id` is not a list item: put a space after the `-`"
        );
    }

    #[test]
    fn stray_and_trailing_text() {
        assert_eq!(
            explained("rules:\n  - id: a\n    on: [a, b]]\n"),
            "3: stray `]` at column 15: no `[` is open for it to close; remove it"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    on: ]x\n"),
            "3: stray `]` at column 9: no `[` is open for it to close; remove it"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    on: [x] y\n"),
            "3: unexpected `y` after the `]` at column 11; put it inside the brackets, or remove it"
        );
        assert_eq!(
            explained("rules:\n  - id: 'it's'\n"),
            "2: unexpected `s'` after the closing quote at column 12; a quoted value ends at its closing quote (inside single quotes, write a quote as `''`)"
        );
    }

    #[test]
    fn values_anchors_and_documents() {
        assert_eq!(
            explained("rules:\n  - id: a\n    on: callbackX: y\n"),
            "3: `callbackX: y` holds `: `, which YAML reads as a key and its value; put the value in quotes"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    when:\n      x: { equals: *foo }\n"),
            "4: `*foo` refers to no anchor `&foo` defined before it; to write text that starts with `*`, put it in quotes"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    decision: @allow\n"),
            "3: `@` cannot start a value; put the value in quotes"
        );
        assert_eq!(
            explained("# one\nrules: []\n---\nrules: []\n"),
            "3: a second YAML document starts here; a policy file is one document: remove the `---`, or move what follows to a file of its own"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    on: - x\n"),
            "3: a list item (`- `) cannot follow a key on the same line; start the list on the next line, or write it as `[a, b]`"
        );
    }

    #[test]
    fn colons_without_spaces_and_keys_without_colons() {
        assert_eq!(
            explained("rules:\n  - id: a\n    decision:allow\n    on: [x]\n"),
            "3: `decision:allow` has no space after its `:`, so YAML reads it as one word, not a key and its value; write `decision: allow`"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    decision allow\n    on: [x]\n"),
            "3: `decision allow` has no `:`; write a key and its value as `key: value`"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    when\n      x: {equals: 1}\n"),
            "3: `when` has no `:`; write a key and its value as `key: value`"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    when: { x:{ exists: true } }\n"),
            "3: `x:`: put a space after the `:`, as in `key: value`"
        );
    }

    #[test]
    fn anchors_and_escapes() {
        assert_eq!(
            explained("rules:\n  - id: a\n    error: { code: 100, message: *important* }\n"),
            "3: `*important*`: a value that starts with `*` is read as an anchor (`&name`) or alias (`*name`); put the value in quotes"
        );
        assert_eq!(
            explained("rules:\n  - id: a\n    on: \"\\xZZ\"\n"),
            "3: `\\xZ` is not an escape that double quotes know; write the text in single quotes (`'\\xZ'`), or double the backslash (`\\\\xZ`)"
        );
    }

    #[test]
    fn what_is_not_recognised_keeps_the_parsers_words() {
        assert_eq!(explained("%YAML 2.0\n---\nrules: []\n"), "1: not valid YAML: found incompatible YAML document");
    }
}
