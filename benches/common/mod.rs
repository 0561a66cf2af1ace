//! Generated policy sets and the shared OpenIM samples, for the benchmarks (`eval`, `replay`).
//!
//! A set of `n` rules: about a third `equals`/`in` on ID fields, a third `in_list` over four
//! shared lists of 1,000 IDs, a third `regex` on ID fields; exact and glob `on` commands; a
//! few `any`/`not` combinators; then three planted rules that decide known events. Seeded,
//! so every run measures the same sets.
#![allow(dead_code, reason = "each benchmark uses a different part of the generator")]
#![allow(clippy::unwrap_used, reason = "benchmark harness")]

use std::fmt::Write as _;
use std::path::Path;

use callgate::event::Event;
use serde_json::{Map, Value};

// The shared samples (tests/fixtures/samples/openim), compacted to one line as OpenIM sends them.
pub const REMOVE_BLACK: &str =
    r#"{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_1001","blackUserID":"u_1005"}"#;
pub const ADD_BLACK: &str =
    r#"{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_1001","blackUserID":"u_1005"}"#;
pub const SEND_SINGLE: &str = r#"{"sendID":"u_1001","callbackCommand":"callbackBeforeSendSingleMsgCommand","serverMsgID":"d47dfdf26ef2fd1573ec334d38ab624e","clientMsgID":"7167155c52d1b1346ca3714096c01a18","operationID":"1749539999871294650","senderPlatformID":2,"senderNickname":"Alice","sessionType":1,"msgFrom":100,"contentType":101,"status":1,"sendTime":1749540000000,"createTime":1749539999888,"content":"{\"content\":\"Hi Bob, are we still on for the 3pm review?\"}","seq":0,"atUserList":null,"faceURL":"https://cdn.example.com/avatar/u_1001.jpg","ex":"","recvID":"u_1002"}"#;
pub const SEND_GROUP: &str = r#"{"sendID":"u_1001","callbackCommand":"callbackBeforeSendGroupMsgCommand","serverMsgID":"0c6853cc31e96d8c1350368e320c6fe5","clientMsgID":"08d17a1bdeddbc3b8d0237440e352b2e","operationID":"1749540059912044817","senderPlatformID":2,"senderNickname":"Alice","sessionType":3,"msgFrom":100,"contentType":106,"status":1,"sendTime":1749540060000,"createTime":1749540059888,"content":"{\"text\":\"@Bob please upload the Q3 draft before 5pm\",\"atUserList\":[\"u_1002\"],\"atUsersInfo\":[{\"atUserID\":\"u_1002\",\"groupNickname\":\"Bob\"}],\"isAtSelf\":false}","seq":0,"atUserList":["u_1002"],"faceURL":"https://cdn.example.com/avatar/u_1001.jpg","ex":"","groupID":"3259018725"}"#;

/// The shared named lists, and how many IDs each holds.
pub const LISTS: [&str; 4] = ["banned", "vip", "partners", "staff"];
pub const LIST_LEN: usize = 1_000;
/// Rules per generated policy file.
pub const RULES_PER_FILE: usize = 1_000;
/// An ID the planted equals rule names; generated IDs are 6 digits from 200000, so never this.
pub const PLANTED_SENDER: &str = "u_100777";

/// xorshift64*: deterministic, so every run measures the same sets.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A user ID that no sample uses: `u_` and six digits from 200000.
    pub fn user(&mut self) -> String {
        format!("u_{}", 200_000 + self.below(800_000))
    }

    /// A group ID like OpenIM's: ten decimal digits, never the samples' 3259018725.
    pub fn group(&mut self) -> String {
        format!("{}", 4_000_000_000u64 + self.next() % 5_000_000_000)
    }
}

/// One family of commands and the ID fields their bodies carry.
pub struct Family {
    pub commands: &'static [&'static str],
    pub globs: &'static [&'static str],
    pub user_fields: &'static [&'static str],
    pub has_group: bool,
}

pub const FAMILIES: [Family; 4] = [
    Family {
        commands: &["callbackAfterRemoveBlackCommand", "callbackBeforeAddBlackCommand"],
        globs: &["callbackAfter*Black*", "*BlackCommand"],
        user_fields: &["ownerUserID", "blackUserID"],
        has_group: false,
    },
    Family {
        commands: &["callbackBeforeSendSingleMsgCommand", "callbackAfterSendSingleMsgCommand"],
        globs: &["callbackBeforeSend*", "*SingleMsgCommand"],
        user_fields: &["sendID", "recvID"],
        has_group: false,
    },
    Family {
        commands: &["callbackBeforeSendGroupMsgCommand", "callbackAfterSendGroupMsgCommand"],
        globs: &["*GroupMsgCommand", "callbackBefore*"],
        user_fields: &["sendID"],
        has_group: true,
    },
    Family {
        commands: &[
            "callbackBeforeAddFriendCommand",
            "callbackBeforeAddFriendAgreeCommand",
            "callbackAfterDeleteFriendCommand",
        ],
        globs: &["*FriendCommand", "callbackBeforeAddFriend*"],
        user_fields: &["fromUserID", "toUserID", "ownerUserID"],
        has_group: false,
    },
];

/// Words for `^(bot|sys)_word` patterns; none starts with `planted`.
pub const WORDS: [&str; 8] = ["relay", "notify", "ops", "billing", "audit", "sync", "report", "push"];

/// What the generator put into a set, so the report can say where rules landed.
#[derive(Default)]
pub struct Mix {
    pub equals: usize,
    pub in_list: usize,
    pub regex: usize,
    pub anyless_any: usize,
    pub combinators: usize,
    pub globs: usize,
    pub no_on: usize,
}

/// Writes a set of `n` rules (plus three planted rules at the very end) into `dir`.
pub fn write_set(dir: &Path, n: usize, seed: u64) -> Mix {
    let mut rng = Rng(seed);
    let mut mix = Mix::default();
    std::fs::create_dir_all(dir.join("lists")).unwrap();

    // Lists: two from files, two inline, as operators mix both.
    let mut lists_yaml = String::from("lists:\n");
    let mut first_ids = Vec::new();
    for (k, name) in LISTS.iter().enumerate() {
        let ids: Vec<String> = (0..LIST_LEN).map(|_| rng.user()).collect();
        first_ids.push(ids[0].clone());
        if k % 2 == 0 {
            let mut text = format!("# {name}: one user ID a line\n");
            for id in &ids {
                text.push_str(id);
                text.push('\n');
            }
            std::fs::write(dir.join(format!("lists/{name}.txt")), text).unwrap();
            writeln!(lists_yaml, "  {name}: {{ file: lists/{name}.txt }}").unwrap();
        } else {
            writeln!(lists_yaml, "  {name}:").unwrap();
            for id in &ids {
                writeln!(lists_yaml, "    - \"{id}\"").unwrap();
            }
        }
    }
    std::fs::write(dir.join("00-lists.yaml"), lists_yaml).unwrap();

    let mut file = String::new();
    let mut file_no = 1;
    for i in 0..n {
        if i > 0 && i % RULES_PER_FILE == 0 {
            flush(dir, &mut file, &mut file_no);
        }
        write_rule(&mut file, &mut rng, &mut mix, i);
    }
    // Planted rules, last in the set: each decides one of the "hit" events unless an
    // earlier generated rule already holds for it.
    file.push_str(&format!(
        r#"  - id: plant-list-hit
    on: [callbackBeforeAddBlackCommand]
    when:
      blackUserID: {{ in_list: banned }}
    decision: deny
    error: {{ code: 21001, message: "banned users cannot be blocked" }}
  - id: plant-regex-hit
    on: [callbackAfterRemoveBlackCommand]
    when:
      blackUserID: {{ regex: '^sys_planted_' }}
    decision: deny
    error: {{ code: 21002, message: "system accounts cannot be unblocked" }}
  - id: plant-equals-hit
    on: [callbackBeforeSendSingleMsgCommand]
    when:
      sendID: {{ equals: "{PLANTED_SENDER}" }}
    decision: deny
    error: {{ code: 21003, message: "sender muted" }}
"#
    ));
    flush(dir, &mut file, &mut file_no);
    mix
}

pub fn flush(dir: &Path, file: &mut String, file_no: &mut usize) {
    let text = format!("rules:\n{file}");
    std::fs::write(dir.join(format!("{:02}-rules.yaml", *file_no)), text).unwrap();
    file.clear();
    *file_no += 1;
}

/// Appends one generated rule (YAML, indented for a `rules:` list) to `out`.
pub fn write_rule(out: &mut String, rng: &mut Rng, mix: &mut Mix, i: usize) {
    let family = &FAMILIES[rng.below(FAMILIES.len())];
    writeln!(out, "  - id: r{i:05}").unwrap();

    // on: mostly exact names, some globs, a few omitted (every command).
    match rng.below(20) {
        0 => mix.no_on += 1,
        1..=3 => {
            mix.globs += 1;
            writeln!(out, "    on: [\"{}\"]", rng.pick(family.globs)).unwrap();
        }
        4 => {
            mix.globs += 1;
            writeln!(out, "    on: [{}, \"{}\"]", rng.pick(family.commands), rng.pick(family.globs)).unwrap();
        }
        5..=7 => {
            let a = rng.pick(family.commands);
            let b = rng.pick(family.commands);
            writeln!(out, "    on: [{a}, {b}]").unwrap();
        }
        _ => writeln!(out, "    on: [{}]", rng.pick(family.commands)).unwrap(),
    }

    let mut fields: Vec<&str> = family.user_fields.to_vec();
    if family.has_group {
        fields.push("groupID");
    }
    let field = rng.pick(&fields);
    let other = rng.pick(family.user_fields);
    writeln!(out, "    when:").unwrap();

    // One rule in 200 is a bare `any` with no positive top-level field: the index cannot
    // anchor it and checks it on every callback of its commands.
    if rng.below(200) == 0 {
        mix.anyless_any += 1;
        writeln!(
            out,
            "      any:\n        - {{ {field}: {{ equals: \"{}\" }} }}\n        - {{ {other}: {{ in_list: {} }} }}",
            id_for(rng, field),
            rng.pick(&LISTS)
        )
        .unwrap();
    } else {
        match i % 3 {
            0 => {
                mix.equals += 1;
                if rng.below(10) < 7 {
                    writeln!(out, "      {field}: {{ equals: \"{}\" }}", id_for(rng, field)).unwrap();
                } else {
                    let ids: Vec<String> =
                        (0..2 + rng.below(4)).map(|_| format!("\"{}\"", id_for(rng, field))).collect();
                    writeln!(out, "      {field}: {{ in: [{}] }}", ids.join(", ")).unwrap();
                }
            }
            1 => {
                mix.in_list += 1;
                let list = rng.pick(&LISTS[..3]);
                let field = if field == "groupID" { other } else { field };
                writeln!(out, "      {field}: {{ in_list: {list} }}").unwrap();
                if rng.below(3) == 0 && other != field {
                    writeln!(out, "      {other}: {{ not_in_list: staff }}").unwrap();
                }
            }
            _ => {
                mix.regex += 1;
                writeln!(out, "      {field}: {{ regex: '{}' }}", regex_for(rng, field)).unwrap();
            }
        }
        // A few rules carry an extra combinator beside their anchor.
        match rng.below(25) {
            0 => {
                mix.combinators += 1;
                writeln!(out, "      not: {{ {other}: {{ in_list: staff }} }}").unwrap();
            }
            1 => {
                mix.combinators += 1;
                writeln!(
                    out,
                    "      any:\n        - {{ {other}: {{ in_list: vip }} }}\n        - {{ {other}: {{ regex: '^u_9' }} }}"
                )
                .unwrap();
            }
            _ => {}
        }
    }

    match rng.below(20) {
        0 => writeln!(
            out,
            "    decision: deny\n    error: {{ code: {}, message: \"would refuse\" }}\n    mode: dry_run",
            20_000 + i % 1000
        )
        .unwrap(),
        1..=9 => writeln!(out, "    decision: allow").unwrap(),
        _ => writeln!(
            out,
            "    decision: deny\n    error: {{ code: {}, message: \"refused by policy\", detail: \"rule r{i:05}\" }}",
            20_000 + i % 1000
        )
        .unwrap(),
    }
}

pub fn id_for(rng: &mut Rng, field: &str) -> String {
    if field == "groupID" { rng.group() } else { rng.user() }
}

pub fn regex_for(rng: &mut Rng, field: &str) -> String {
    if field == "groupID" {
        return match rng.below(2) {
            0 => format!("^{}[0-9]{{5}}$", 40_000 + rng.below(50_000)),
            _ => format!("^9{}", rng.below(1000)),
        };
    }
    match rng.below(6) {
        0 | 1 => format!("^u_{}[0-9]{{2}}$", 2000 + rng.below(8000)),
        2 => format!("^u_{}\\d{{3}}$", 200 + rng.below(800)),
        3 => format!("^(bot|sys)_{}", rng.pick(&WORDS)),
        4 => format!("_{}\\d+$", rng.pick(&WORDS)),
        _ => format!("^(test|qa)_{}", 1000 + rng.below(9000)),
    }
}

/// An OpenIM event from a sample body, with the string fields in `edits` replaced.
pub fn event(sample: &str, edits: &[(&str, &str)]) -> Event {
    let mut body: Map<String, Value> = serde_json::from_str(sample).unwrap();
    for (k, v) in edits {
        body.insert((*k).to_string(), Value::String((*v).to_string()));
    }
    let command = body["callbackCommand"].as_str().unwrap().to_string();
    Event::openim(command, body)
}
