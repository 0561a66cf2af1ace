#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! The indexed fast path (`decide`) must give exactly the answer of the full scan
//! (`explain`) — same outcome, same deciding rule, same dry-run hits — for any rules and
//! any callback. Checked on generated rule sets over every shared OpenIM sample.

use std::path::Path;

use callgate::event::Event;
use callgate::policy::load_dir;
use serde_json::{Map, Value};

/// A tiny deterministic generator, so a failure reproduces.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() as usize) % items.len()]
    }
}

fn samples() -> Vec<(String, Map<String, Value>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples/openim");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let body: Map<String, Value> = serde_json::from_str(&text).unwrap();
        let command = body["callbackCommand"].as_str().unwrap().to_string();
        out.push((command, body));
    }
    out
}

fn generated_policy(seed: u64, rules: usize, samples: &[(String, Map<String, Value>)]) -> String {
    let mut rng = Lcg(seed);
    // Field/value pairs that really occur, so that many conditions hold.
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (_, body) in samples {
        for (k, v) in body {
            match v {
                Value::String(s)
                    if !s.is_empty()
                        && s.len() < 40
                        && s.chars().all(|c| !c.is_control() && !matches!(c, '"' | '\\' | '\'')) =>
                {
                    pairs.push((k.clone(), s.clone()))
                }
                Value::Number(n) => pairs.push((k.clone(), n.to_string())),
                _ => {}
            }
        }
    }
    let commands: Vec<&str> = samples.iter().map(|(c, _)| c.as_str()).collect();
    let mut yaml = String::from("lists:\n  seen: [");
    for (_, v) in pairs.iter().step_by(3) {
        yaml.push_str(&format!("\"{v}\", "));
    }
    yaml.push_str("]\nrules:\n");
    for i in 0..rules {
        let (field, value) = rng.pick(&pairs).clone();
        let prefix: String = value.chars().take(3).collect();
        let prefix = regex_escape(&prefix);
        let cond = match rng.next() % 12 {
            0 => format!("{field}: {{ equals: \"{value}\" }}"),
            1 => format!("{field}: {{ in: [\"{value}\", \"zzz\"] }}"),
            2 => format!("{field}: {{ in_list: seen }}"),
            3 => format!("{field}: {{ regex: '^{prefix}' }}"),
            4 => format!("{field}: {{ not_equals: \"{value}\" }}"),
            5 => format!("{field}: {{ not_in_list: seen }}"),
            6 => format!("any: [ {{ {field}: {{ regex: '{prefix}' }} }}, {{ {field}: {{ exists: false }} }} ]"),
            7 => format!("not: {{ {field}: {{ equals: \"{value}\" }} }}"),
            9 => format!("{field}: {{ regex: '{prefix}' }}"),
            10 => format!("{field}: {{ regex: '(?i){prefix}|^zz\\d' }}"),
            // Every branch anchorable: the rule is filed under each branch's anchor.
            11 => format!(
                "any: [ {{ {field}: {{ equals: \"{value}\" }} }}, {{ {field}: {{ in_list: seen }} }}, {{ {field}: {{ regex: '^{prefix}' }} }} ]"
            ),
            _ => format!("{field}: {{ exists: true }}\n      /{field}: {{ not_regex: '^zzz' }}"),
        };
        let on = match rng.next() % 4 {
            0 => String::new(),
            1 => format!("    on: [{}]\n", rng.pick(&commands)),
            2 => "    on: [\"callbackBefore*\"]\n".to_string(),
            _ => format!("    on: [{}, {}]\n", rng.pick(&commands), rng.pick(&commands)),
        };
        let decision = if rng.next().is_multiple_of(3) {
            "decision: allow".to_string()
        } else {
            format!("decision: deny\n    error: {{ code: {}, message: r{i} }}", 100 + i)
        };
        let mode = if rng.next().is_multiple_of(5) { "    mode: dry_run\n" } else { "" };
        // Some rules carry a rate cap; with no counts yet, caps are never exceeded.
        let cap = if rng.next().is_multiple_of(6) {
            format!("    rate_cap: {{ key: [{field}], max: 3, per: 1m }}\n")
        } else {
            String::new()
        };
        yaml.push_str(&format!("  - id: r{i}\n{on}    when:\n      {cond}\n{cap}    {decision}\n{mode}"));
    }
    yaml
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_string() } else { format!("\\x{{{:x}}}", c as u32) })
        .collect()
}

#[test]
fn decide_agrees_with_a_full_scan() {
    let samples = samples();
    let mut compared = 0;
    let mut decided_by_rule = 0;
    for seed in 1..=12u64 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gen.yaml"), generated_policy(seed, 40 * seed as usize, &samples)).unwrap();
        let set = load_dir(dir.path()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (command, body) in &samples {
            // The sample as is, and with one field removed, for missing-field paths.
            let mut variants = vec![body.clone()];
            for key in body.keys().take(4) {
                let mut b = body.clone();
                b.remove(key);
                variants.push(b);
            }
            for b in variants {
                let event = Event::openim(command.clone(), b);
                let fast = set.decide(&event);
                let (full, _) = set.explain(&event, &Default::default());
                // Without a store `decide` knows no cap counts; everything else must agree.
                assert_eq!(
                    (&fast.outcome, &fast.rule, &fast.dry_run),
                    (&full.outcome, &full.rule, &full.dry_run),
                    "seed {seed}, command {command}"
                );
                compared += 1;
                decided_by_rule += usize::from(fast.rule.is_some());
            }
        }
    }
    assert!(compared > 2_000);
    // The generated rules must exercise real decisions, not only the default.
    assert!(decided_by_rule * 3 > compared, "only {decided_by_rule} of {compared} decided by a rule");
}
