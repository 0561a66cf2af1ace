//! OpenIM callbacks over real HTTP against a real `callgate serve`: every URL form of SPEC
//! 1.1, the exact answer bytes, every condition operator, `on` and rule order, dry run, bad
//! input, and every shared OpenIM sample. One server per policy set, many requests each.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]

mod common;
use common::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The refusal a rule of these tests sends: its message is the command it is `on`.
fn denied(code: i32, command: &str) -> String {
    refusal(code, command, "")
}

/// The same refusal to OpenIM 2.x (a POST to the bare URL), which refuses only on a non-zero
/// actionCode.
fn denied_v2(code: i32, command: &str) -> String {
    denied(code, command).replacen(r#""actionCode":0"#, r#""actionCode":1"#, 1)
}

/// The exact answer to a request that could not be decoded (or routed): "go on" in every
/// OpenIM version, the reason in errMsg and its name in errDlt.
fn bad(reason: &str, message: &str) -> String {
    format!(
        r#"{{"actionCode":0,"errCode":0,"errMsg":{},"errDlt":"{reason}","nextCode":0}}"#,
        serde_json::to_string(message).unwrap()
    )
}

/// The refusal of a body over the limit (3.x form).
fn too_large(limit: usize) -> String {
    refusal(
        1003,
        &format!("callback body is larger than callgate's limit of {limit} bytes (--max-body-bytes)"),
        "too_large",
    )
}

/// Sends any method; returns status, `content-type`, `allow` (empty when absent) and body.
async fn send(
    server: &impl Endpoint,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> (u16, String, String, String) {
    let resp = request(server, method, path, body).await;
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let (content_type, allow) = (header("content-type"), header("allow"));
    (resp.status().as_u16(), content_type, allow, resp.text().await.unwrap())
}

/// Writes `request` as raw bytes on a new connection and reads until the server closes it.
/// Returns the status code and the response body.
async fn raw_http(server: &impl Endpoint, request: &[u8]) -> (u16, String) {
    let addr = server.base().strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything; that is its right.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    (status, body.to_string())
}

/// The server log without terminal colour codes, one entry per line.
fn plain_logs(server: &Server) -> Vec<String> {
    let mut out = String::new();
    let mut chars = server.logs().chars().collect::<Vec<_>>().into_iter();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out.lines().map(str::to_string).collect()
}

/// POSTs each `(path, body, expected answer)` and asserts HTTP 200 with exactly that answer.
async fn expect_answers(server: &impl Endpoint, cases: &[(&str, &str, String)]) {
    for (path, body, want) in cases {
        let (status, got) = post(server, path, body).await;
        assert_eq!((status, got.as_str()), (200, want.as_str()), "POST {path} {body}");
    }
}

const URL_FORMS_POLICY: &str = r#"
rules:
  - id: refuse-add-black
    on: [callbackBeforeAddBlackCommand]
    decision: deny
    error: { code: 10001, message: callbackBeforeAddBlackCommand }
  - id: refuse-remove-black
    on: [callbackAfterRemoveBlackCommand]
    decision: deny
    error: { code: 10002, message: callbackAfterRemoveBlackCommand }
"#;

#[tokio::test]
async fn every_url_form_takes_the_command_from_path_query_or_body() {
    let dir = PolicyDir::with("policy.yaml", URL_FORMS_POLICY);
    let server = InProcess::start(dir.path(), Default::default()).await;
    const ADD: &str = "callbackBeforeAddBlackCommand";
    const REMOVE: &str = "callbackAfterRemoveBlackCommand";
    let add = || denied(10001, ADD);
    let remove = || denied(10002, REMOVE);
    let add_v2 = || denied_v2(10001, ADD);
    let remove_v2 = || denied_v2(10002, REMOVE);
    let with_add =
        r#"{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_1001","blackUserID":"u_1002"}"#;
    let with_remove =
        r#"{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_1001","blackUserID":"u_1002"}"#;
    let with_friend =
        r#"{"callbackCommand":"callbackBeforeAddFriendCommand","fromUserID":"u_1001","toUserID":"u_1002"}"#;
    let bare = r#"{"ownerUserID":"u_1001","blackUserID":"u_1002"}"#;
    // The `?key=` OpenIM adds on some after-commands: base64 of a JSON object, raw (with
    // `+`, `/`, `?`, `=`) and percent-encoded.
    let key_raw = "key=eyJzZW5kSUQiOiJ1XzEwMDE+IiwicmVjdklEIjoiIiwiZ3JvdXBJRCI6IjMyNTkwMTg3MjU/In0=";
    let key_enc = "key=eyJzZW5kSUQiOiJ1XzEwMDE%2BIiwicmVjdklEIjoiIiwiZ3JvdXBJRCI6IjMyNTkwMTg3MjU%2FIn0%3D";
    let p = |tail: &str| format!("/openim/{tail}");
    let cases: Vec<(String, &str, String)> = vec![
        // POST /openim/{command}: body with and without callbackCommand.
        (p(ADD), with_add, add()),
        (p(ADD), bare, add()),
        (p(REMOVE), with_remove, remove()),
        (p(REMOVE), bare, remove()),
        (p("callbackBeforeAddFriendCommand"), with_friend, ALLOW.into()),
        (p("callbackBeforeAddFriendCommand"), bare, ALLOW.into()),
        (p(&format!("{ADD}?contenttype=json")), with_add, add()),
        (p(&format!("{ADD}?contenttype=json")), bare, add()),
        (p(&format!("{REMOVE}?{key_raw}")), with_remove, remove()),
        (p(&format!("{REMOVE}?{key_enc}")), bare, remove()),
        (p(&format!("{REMOVE}?contenttype=json&{key_enc}&x=")), bare, remove()),
        // The path wins over `?command=`.
        (p(&format!("{ADD}?command={REMOVE}")), bare, add()),
        (p(&format!("{ADD}?command={REMOVE}")), with_add, add()),
        (p(&format!("callbackBeforeAddFriendCommand?command={ADD}")), bare, ALLOW.into()),
        // POST /openim?command={command}.
        (format!("/openim?command={ADD}"), with_add, add()),
        (format!("/openim?command={ADD}"), bare, add()),
        (format!("/openim?command={REMOVE}&contenttype=json"), bare, remove()),
        (format!("/openim?contenttype=json&command={REMOVE}"), with_remove, remove()),
        (format!("/openim?{key_raw}&command={ADD}"), bare, add()),
        (format!("/openim?command={ADD}&{key_enc}"), with_add, add()),
        ("/openim?command=callbackBeforeAddFriendCommand".into(), bare, ALLOW.into()),
        // POST /openim with the command only in the body: OpenIM 2.x, answered in its form.
        ("/openim".into(), with_add, add_v2()),
        ("/openim".into(), with_remove, remove_v2()),
        ("/openim".into(), with_friend, ALLOW.into()),
        ("/openim?contenttype=json".into(), with_add, add_v2()),
        (format!("/openim?{key_raw}"), with_remove, remove_v2()),
        (format!("/openim?contenttype=json&{key_enc}&unknown=1"), with_add, add_v2()),
        ("/openim/".into(), with_remove, remove_v2()),
    ];
    for (path, body, want) in &cases {
        let (status, content_type, _, got) = send(&server, reqwest::Method::POST, path, body).await;
        assert_eq!(
            (status, content_type.as_str(), got.as_str()),
            (200, "application/json", want.as_str()),
            "POST {path} {body}"
        );
    }
    // OpenIM's own wire form: a compacted sample with its trailing newline.
    let sample_body = wire(&sample("openim/callbackAfterRemoveBlackCommand.json"));
    expect_answers(
        &server,
        &[
            (&p(REMOVE), &sample_body, remove()),
            (&format!("/openim?command={REMOVE}"), &sample_body, remove()),
            ("/openim", &sample_body, remove_v2()),
        ],
    )
    .await;
}

/// Where a proxy rewrites OpenIM's URLs, `--openim-version` says which form of answer it
/// reads, whatever the URL; 3.6 is warned about at start, since it never enforces a refusal.
#[tokio::test]
async fn the_openim_version_setting_overrides_the_url_form() {
    let dir = PolicyDir::with("policy.yaml", URL_FORMS_POLICY);
    const ADD: &str = "callbackBeforeAddBlackCommand";
    let body = r#"{"callbackCommand":"callbackBeforeAddBlackCommand"}"#;
    let v3 = Server::start(dir.path(), &["--openim-version", "3.8.3"]);
    for path in ["/openim".to_string(), format!("/openim/{ADD}")] {
        let (status, got) = v3.post(&path, body).await;
        assert_eq!((status, got), (200, denied(10001, ADD)), "{path}");
    }
    let v2 = Server::start_with_env(dir.path(), &[], &[("CALLGATE_OPENIM_VERSION", "2.3.3")]);
    let (status, got) = v2.post(&format!("/openim/{ADD}"), body).await;
    assert_eq!((status, got), (200, denied_v2(10001, ADD)));
    assert!(!v3.logs().contains("never enforces"), "{}", v3.logs());
    let v36 = Server::start(dir.path(), &["--openim-version", "3.6.0"]);
    assert!(v36.logs().contains("OpenIM 3.6 never enforces a callback's refusal"), "{}", v36.logs());
    let err = Server::try_start(dir.path(), &["--openim-version", "three"]).err().unwrap_or_default();
    assert!(err.contains("`openim_version`: `three` is not an OpenIM version"), "{err}");
}

const ANSWERS_POLICY: &str = r#"
rules:
  - id: with-detail
    on: [cmdDetail]
    decision: deny
    error: { code: 20001, message: "system accounts cannot be unblocked", detail: "contact support" }
  - id: without-detail
    on: [cmdNoDetail]
    decision: deny
    error: { code: 100, message: "refused" }
  - id: needs-escaping
    on: [cmdEscape]
    decision: deny
    error:
      code: 2147483647
      message: "say \"no\" \\ C:\\path\ttab\nline2 \u0001 é 中文 🚫 </script>"
      detail: 'single ''quoted'', "double" and \backslash'
"#;

#[tokio::test]
async fn answers_are_exact_bytes_with_json_content_type() {
    let dir = PolicyDir::with("answers.yaml", ANSWERS_POLICY);
    let server = InProcess::start(dir.path(), Default::default()).await;
    let cases = [
        ("cmdAllowed", ALLOW),
        (
            "cmdDetail",
            r#"{"actionCode":0,"errCode":20001,"errMsg":"system accounts cannot be unblocked","errDlt":"contact support","nextCode":1}"#,
        ),
        ("cmdNoDetail", r#"{"actionCode":0,"errCode":100,"errMsg":"refused","errDlt":"","nextCode":1}"#),
        (
            "cmdEscape",
            r#"{"actionCode":0,"errCode":2147483647,"errMsg":"say \"no\" \\ C:\\path\ttab\nline2 \u0001 é 中文 🚫 </script>","errDlt":"single 'quoted', \"double\" and \\backslash","nextCode":1}"#,
        ),
    ];
    for (command, want) in cases {
        let (status, content_type, _, got) =
            send(&server, reqwest::Method::POST, &format!("/openim/{command}"), "{}\n").await;
        assert_eq!((status, content_type.as_str(), got.as_str()), (200, "application/json", want), "{command}");
    }
    // The literal bytes above agree with the harness's own encoding of a refusal.
    assert_eq!(cases[1].1, refusal(20001, "system accounts cannot be unblocked", "contact support"));
    assert_eq!(
        cases[3].1,
        refusal(
            i32::MAX,
            "say \"no\" \\ C:\\path\ttab\nline2 \u{1} é 中文 🚫 </script>",
            "single 'quoted', \"double\" and \\backslash"
        )
    );
}

const OPERATORS_POLICY: &str = r#"
lists:
  staff: [admin_1, admin_2, 1001]
  vip: { file: lists/vip.txt }

rules:
  - id: equals
    on: [opEquals]
    when: { userID: { equals: u_1 } }
    decision: deny
    error: { code: 20101, message: opEquals }
  - id: equals-number
    on: [opEqualsNumber]
    when: { sessionType: { equals: 3 } }
    decision: deny
    error: { code: 20102, message: opEqualsNumber }
  - id: equals-number-as-text
    on: [opEqualsNumberText]
    when: { sessionType: { equals: "3" } }
    decision: deny
    error: { code: 20103, message: opEqualsNumberText }
  - id: equals-bool
    on: [opEqualsBool]
    when: { isAtSelf: { equals: true } }
    decision: deny
    error: { code: 20104, message: opEqualsBool }
  - id: not-equals
    on: [opNotEquals]
    when: { userID: { not_equals: u_1 } }
    decision: deny
    error: { code: 20105, message: opNotEquals }
  - id: in
    on: [opIn]
    when: { userID: { in: [u_1, u_2, 7] } }
    decision: deny
    error: { code: 20106, message: opIn }
  - id: not-in
    on: [opNotIn]
    when: { userID: { not_in: [u_1, u_2] } }
    decision: deny
    error: { code: 20107, message: opNotIn }
  - id: in-list-inline
    on: [opInList]
    when: { userID: { in_list: staff } }
    decision: deny
    error: { code: 20108, message: opInList }
  - id: in-list-file
    on: [opInListFile]
    when: { userID: { in_list: vip } }
    decision: deny
    error: { code: 20109, message: opInListFile }
  - id: not-in-list
    on: [opNotInList]
    when: { userID: { not_in_list: staff } }
    decision: deny
    error: { code: 20110, message: opNotInList }
  - id: regex-searches
    on: [opRegex]
    when: { userID: { regex: 'sys_' } }
    decision: deny
    error: { code: 20111, message: opRegex }
  - id: regex-anchored
    on: [opRegexAnchored]
    when: { userID: { regex: '^sys_\d+$' } }
    decision: deny
    error: { code: 20112, message: opRegexAnchored }
  - id: regex-on-a-number
    on: [opRegexNumber]
    when: { seq: { regex: '^\d{3}$' } }
    decision: deny
    error: { code: 20113, message: opRegexNumber }
  - id: not-regex
    on: [opNotRegex]
    when: { userID: { not_regex: '^u_\d+$' } }
    decision: deny
    error: { code: 20114, message: opNotRegex }
  - id: exists
    on: [opExists]
    when: { ex: { exists: true } }
    decision: deny
    error: { code: 20115, message: opExists }
  - id: exists-false
    on: [opExistsFalse]
    when: { ex: { exists: false } }
    decision: deny
    error: { code: 20116, message: opExistsFalse }
  - id: dotted
    on: [opDotted]
    when: { offlinePushInfo.title: { equals: hello } }
    decision: deny
    error: { code: 20117, message: opDotted }
  - id: dotted-index
    on: [opDottedIndex]
    when: { users.1.nickname: { equals: Grace } }
    decision: deny
    error: { code: 20118, message: opDottedIndex }
  - id: pointer
    on: [opPointer]
    when: { "/atUserList/0": { equals: u_1002 } }
    decision: deny
    error: { code: 20119, message: opPointer }
  - id: pointer-escaped
    on: [opPointerEscaped]
    when: { "/a~1b/c~0d": { equals: x } }
    decision: deny
    error: { code: 20120, message: opPointerEscaped }
  - id: operators-on-one-field
    on: [opSameField]
    when: { userID: { regex: '^u_', not_in: [u_1] } }
    decision: deny
    error: { code: 20121, message: opSameField }
  - id: every-entry
    on: [opEntries]
    when:
      userID: { equals: u_1 }
      groupID: { equals: g_1 }
    decision: deny
    error: { code: 20122, message: opEntries }
  - id: any
    on: [opAny]
    when:
      any:
        - { userID: { equals: u_1 } }
        - { groupID: { equals: g_1 } }
    decision: deny
    error: { code: 20123, message: opAny }
  - id: all
    on: [opAll]
    when:
      all:
        - { userID: { regex: '^u_' } }
        - { groupID: { exists: true } }
    decision: deny
    error: { code: 20124, message: opAll }
  - id: not
    on: [opNot]
    when:
      not: { userID: { in: [u_1, u_2] } }
    decision: deny
    error: { code: 20125, message: opNot }
  - id: nested
    on: [opNested]
    when:
      sessionType: { equals: 3 }
      any:
        - all:
            - { userID: { in_list: staff } }
            - not: { groupID: { equals: g_open } }
        - not:
            any:
              - { contentType: { equals: 101 } }
              - { contentType: { equals: 106 } }
    decision: deny
    error: { code: 20126, message: opNested }
"#;

const VIP_LIST: &str = "# VIP accounts, one a line\n\nvip_1\n  vip_2  \n# vip_3\n\n\n4242\n";

#[tokio::test]
async fn every_condition_operator_decides_over_http() {
    let dir = PolicyDir::with("operators.yaml", OPERATORS_POLICY);
    dir.write("lists/vip.txt", VIP_LIST);
    let server = InProcess::start(dir.path(), Default::default()).await;
    // (command, body, refusal code or 0 for allow); each rule's message is its command.
    let cases: &[(&str, &str, i32)] = &[
        // equals: strings by text; arrays, objects and other types never equal.
        ("opEquals", r#"{"userID":"u_1"}"#, 20101),
        ("opEquals", r#"{"userID":"u_2"}"#, 0),
        ("opEquals", r#"{"userID":"u_10"}"#, 0),
        ("opEquals", r#"{}"#, 0),
        ("opEquals", r#"{"userID":null}"#, 0),
        ("opEquals", r#"{"userID":["u_1"]}"#, 0),
        ("opEquals", r#"{"userID":{"u_1":"u_1"}}"#, 0),
        // Numbers by their text: YAML 3 and "3" both match JSON 3 and JSON "3".
        ("opEqualsNumber", r#"{"sessionType":3}"#, 20102),
        ("opEqualsNumber", r#"{"sessionType":"3"}"#, 20102),
        ("opEqualsNumber", r#"{"sessionType":1}"#, 0),
        ("opEqualsNumber", r#"{"sessionType":33}"#, 0),
        ("opEqualsNumber", r#"{"sessionType":[3]}"#, 0),
        ("opEqualsNumberText", r#"{"sessionType":3}"#, 20103),
        ("opEqualsNumberText", r#"{"sessionType":"3"}"#, 20103),
        ("opEqualsNumberText", r#"{"sessionType":4}"#, 0),
        // Booleans.
        ("opEqualsBool", r#"{"isAtSelf":true}"#, 20104),
        ("opEqualsBool", r#"{"isAtSelf":false}"#, 0),
        ("opEqualsBool", r#"{}"#, 0),
        // not_equals: a missing field passes the negation.
        ("opNotEquals", r#"{"userID":"u_2"}"#, 20105),
        ("opNotEquals", r#"{"userID":"u_1"}"#, 0),
        ("opNotEquals", r#"{}"#, 20105),
        // in: inline values, numbers by text.
        ("opIn", r#"{"userID":"u_2"}"#, 20106),
        ("opIn", r#"{"userID":7}"#, 20106),
        ("opIn", r#"{"userID":"7"}"#, 20106),
        ("opIn", r#"{"userID":"u_3"}"#, 0),
        ("opIn", r#"{}"#, 0),
        ("opIn", r#"{"userID":["u_1"]}"#, 0),
        ("opIn", r#"{"userID":{"id":"u_1"}}"#, 0),
        // not_in.
        ("opNotIn", r#"{"userID":"u_3"}"#, 20107),
        ("opNotIn", r#"{"userID":"u_1"}"#, 0),
        ("opNotIn", r#"{}"#, 20107),
        // in_list, inline list (a YAML number is an ID by its text).
        ("opInList", r#"{"userID":"admin_2"}"#, 20108),
        ("opInList", r#"{"userID":1001}"#, 20108),
        ("opInList", r#"{"userID":"1001"}"#, 20108),
        ("opInList", r#"{"userID":"admin_3"}"#, 0),
        ("opInList", r#"{}"#, 0),
        ("opInList", r#"{"userID":["admin_1"]}"#, 0),
        ("opInList", r#"{"userID":{"admin_1":true}}"#, 0),
        // in_list, file list: '#' comments and blank lines skipped, spaces trimmed.
        ("opInListFile", r#"{"userID":"vip_1"}"#, 20109),
        ("opInListFile", r#"{"userID":"vip_2"}"#, 20109),
        ("opInListFile", r#"{"userID":4242}"#, 20109),
        ("opInListFile", r#"{"userID":"vip_3"}"#, 0),
        ("opInListFile", r##"{"userID":"# vip_3"}"##, 0),
        ("opInListFile", r#"{"userID":""}"#, 0),
        ("opInListFile", r#"{"userID":"  vip_2  "}"#, 0),
        // not_in_list: arrays never match a list, so the negation holds.
        ("opNotInList", r#"{"userID":"u_9"}"#, 20110),
        ("opNotInList", r#"{"userID":"admin_1"}"#, 0),
        ("opNotInList", r#"{}"#, 20110),
        ("opNotInList", r#"{"userID":["admin_1"]}"#, 20110),
        // regex is an unanchored search...
        ("opRegex", r#"{"userID":"x_sys_1"}"#, 20111),
        ("opRegex", r#"{"userID":"sys_"}"#, 20111),
        ("opRegex", r#"{"userID":"sys"}"#, 0),
        ("opRegex", r#"{}"#, 0),
        ("opRegex", r#"{"userID":["sys_1"]}"#, 0),
        ("opRegex", r#"{"userID":{"sys_1":"sys_1"}}"#, 0),
        ("opRegex", r#"{"userID":null}"#, 0),
        ("opRegex", r#"{"userID":true}"#, 0),
        // ...and `^…$` anchors it.
        ("opRegexAnchored", r#"{"userID":"sys_12"}"#, 20112),
        ("opRegexAnchored", r#"{"userID":"x_sys_12"}"#, 0),
        ("opRegexAnchored", r#"{"userID":"sys_12x"}"#, 0),
        // A number is matched by its text.
        ("opRegexNumber", r#"{"seq":123}"#, 20113),
        ("opRegexNumber", r#"{"seq":"123"}"#, 20113),
        ("opRegexNumber", r#"{"seq":1234}"#, 0),
        // not_regex: missing passes; arrays and objects never match, so the negation holds.
        ("opNotRegex", r#"{"userID":"Bob"}"#, 20114),
        ("opNotRegex", r#"{"userID":"u_1"}"#, 0),
        ("opNotRegex", r#"{}"#, 20114),
        ("opNotRegex", r#"{"userID":["u_1"]}"#, 20114),
        ("opNotRegex", r#"{"userID":{"u_1":"u_1"}}"#, 20114),
        // exists: a present key exists whatever its value.
        ("opExists", r#"{"ex":""}"#, 20115),
        ("opExists", r#"{"ex":null}"#, 20115),
        ("opExists", r#"{"ex":{}}"#, 20115),
        ("opExists", r#"{}"#, 0),
        ("opExists", r#"{"exx":""}"#, 0),
        ("opExistsFalse", r#"{}"#, 20116),
        ("opExistsFalse", r#"{"ex":""}"#, 0),
        // Dotted paths, into objects and (by index) arrays.
        ("opDotted", r#"{"offlinePushInfo":{"title":"hello","desc":""}}"#, 20117),
        ("opDotted", r#"{"offlinePushInfo":{"title":"hello world"}}"#, 0),
        ("opDotted", r#"{"offlinePushInfo":{"title":["hello"]}}"#, 0),
        ("opDotted", r#"{"offlinePushInfo":null}"#, 0),
        ("opDotted", r#"{"offlinePushInfo":"hello"}"#, 0),
        ("opDotted", r#"{"title":"hello"}"#, 0),
        ("opDottedIndex", r#"{"users":[{"nickname":"Frank"},{"nickname":"Grace"}]}"#, 20118),
        ("opDottedIndex", r#"{"users":[{"nickname":"Grace"},{"nickname":"Frank"}]}"#, 0),
        ("opDottedIndex", r#"{"users":[{"nickname":"Grace"}]}"#, 0),
        ("opDottedIndex", r#"{"users":null}"#, 0),
        // JSON pointers, with `~1` for `/` and `~0` for `~`.
        ("opPointer", r#"{"atUserList":["u_1002","u_1003"]}"#, 20119),
        ("opPointer", r#"{"atUserList":["u_1003","u_1002"]}"#, 0),
        ("opPointer", r#"{"atUserList":[]}"#, 0),
        ("opPointer", r#"{"atUserList":null}"#, 0),
        ("opPointer", r#"{"atUserList":"u_1002"}"#, 0),
        ("opPointerEscaped", r#"{"a/b":{"c~d":"x"}}"#, 20120),
        ("opPointerEscaped", r#"{"a":{"b":{"c~d":"x"}}}"#, 0),
        // Every operator given for one field must hold.
        ("opSameField", r#"{"userID":"u_2"}"#, 20121),
        ("opSameField", r#"{"userID":"u_1"}"#, 0),
        ("opSameField", r#"{"userID":"x_2"}"#, 0),
        // Every entry of `when` must hold.
        ("opEntries", r#"{"userID":"u_1","groupID":"g_1"}"#, 20122),
        ("opEntries", r#"{"userID":"u_1","groupID":"g_2"}"#, 0),
        ("opEntries", r#"{"userID":"u_1"}"#, 0),
        // any / all / not.
        ("opAny", r#"{"userID":"u_1","groupID":"g_9"}"#, 20123),
        ("opAny", r#"{"userID":"u_9","groupID":"g_1"}"#, 20123),
        ("opAny", r#"{"userID":"u_9","groupID":"g_9"}"#, 0),
        ("opAny", r#"{}"#, 0),
        ("opAll", r#"{"userID":"u_9","groupID":""}"#, 20124),
        ("opAll", r#"{"userID":"u_9"}"#, 0),
        ("opAll", r#"{"userID":"x_9","groupID":""}"#, 0),
        ("opNot", r#"{"userID":"u_3"}"#, 20125),
        ("opNot", r#"{}"#, 20125),
        ("opNot", r#"{"userID":"u_2"}"#, 0),
        // Nested: sessionType 3 and ((staff and not g_open) or contentType not 101/106).
        ("opNested", r#"{"sessionType":3,"userID":"admin_1","groupID":"g_x","contentType":101}"#, 20126),
        ("opNested", r#"{"sessionType":3,"userID":"admin_1","contentType":101}"#, 20126),
        ("opNested", r#"{"sessionType":3,"userID":"admin_1","groupID":"g_open","contentType":101}"#, 0),
        ("opNested", r#"{"sessionType":3,"userID":"u_9","groupID":"g_x","contentType":102}"#, 20126),
        ("opNested", r#"{"sessionType":3,"userID":"u_9","groupID":"g_x","contentType":106}"#, 0),
        ("opNested", r#"{"sessionType":1,"userID":"admin_1","groupID":"g_x","contentType":102}"#, 0),
    ];
    for (command, body, code) in cases {
        let want = if *code == 0 { ALLOW.to_string() } else { denied(*code, command) };
        let (status, got) = server.post(&format!("/openim/{command}"), body).await;
        assert_eq!((status, got.as_str()), (200, want.as_str()), "{command} {body}");
    }
}

const ORDER_POLICY_A: &str = r#"
rules:
  - id: a-exact
    on: [cmdExact]
    decision: deny
    error: { code: 30001, message: cmdExact }
  - id: a-glob
    on: ["callbackBefore*Black*"]
    decision: deny
    error: { code: 30002, message: glob }
  - id: a-first
    on: [cmdOrder]
    when: { userID: { equals: u_1 } }
    decision: allow
  - id: a-single-on
    on: cmdSingle
    decision: deny
    error: { code: 30005, message: cmdSingle }
"#;

const ORDER_POLICY_B: &str = r#"
default: deny
error: { code: 30099, message: "no rule allows this", detail: "default" }
rules:
  - id: b-order
    on: [cmdOrder, cmdOrder2]
    decision: deny
    error: { code: 30003, message: order }
  - id: b-every-command
    when: { userID: { equals: everyone } }
    decision: allow
  - id: b-star
    on: ["*"]
    when: { userID: { equals: star } }
    decision: deny
    error: { code: 30004, message: star }
"#;

const ORDER_POLICY_C: &str = r#"
rules:
  - id: c-yml-counts
    on: [cmdYml]
    decision: allow
"#;

#[tokio::test]
async fn on_globs_file_order_and_default_deny() {
    // Written out of order: the file name, not the creation order, decides.
    let dir = PolicyDir::with("20-b.yaml", ORDER_POLICY_B);
    dir.write("10-a.yaml", ORDER_POLICY_A);
    dir.write("30-c.yml", ORDER_POLICY_C);
    // Not policy files: the server would refuse to start if it read any of them.
    for junk in ["notes.txt", ".hidden.yaml", "40-d.yaml.bak", "sub/50-e.yaml"] {
        dir.write(junk, "rules: [this is: not a policy\n");
    }
    let server = InProcess::start(dir.path(), Default::default()).await;
    let default = || refusal(30099, "no rule allows this", "default");
    let cases: &[(&str, &str, String)] = &[
        // Exact names.
        ("/openim/cmdExact", "{}", denied(30001, "cmdExact")),
        ("/openim/cmdExactly", "{}", default()),
        ("/openim/cmdExac", "{}", default()),
        ("/openim/cmdSingle", "{}", denied(30005, "cmdSingle")),
        // Globs.
        ("/openim/callbackBeforeAddBlackCommand", "{}", refusal(30002, "glob", "")),
        ("/openim/callbackBeforeBlack", "{}", refusal(30002, "glob", "")),
        ("/openim/callbackAfterRemoveBlackCommand", "{}", default()),
        // First match across files: 10-a allows u_1 before 20-b's deny is reached.
        ("/openim/cmdOrder", r#"{"userID":"u_1"}"#, ALLOW.into()),
        ("/openim/cmdOrder", r#"{"userID":"u_2"}"#, refusal(30003, "order", "")),
        // First match within a file: b-order comes before b-every-command.
        ("/openim/cmdOrder2", r#"{"userID":"everyone"}"#, refusal(30003, "order", "")),
        // `on` omitted applies to every command, unknown ones included.
        ("/openim/someCommandNobodyDefined", r#"{"userID":"everyone"}"#, ALLOW.into()),
        ("/openim/callbackBeforeAddFriendCommand", r#"{"userID":"everyone"}"#, ALLOW.into()),
        // `*` matches every command.
        ("/openim/anything.at_all", r#"{"userID":"star"}"#, refusal(30004, "star", "")),
        // A `.yml` file belongs to the set.
        ("/openim/cmdYml", "{}", ALLOW.into()),
        // No rule holds: the default (deny with the top-level error) decides, unknown
        // commands included.
        ("/openim/someCommandNobodyDefined", "{}", default()),
        ("/openim/callbackBeforeAddFriendCommand", "{}", default()),
    ];
    expect_answers(&server, cases).await;
}

const DRY_RUN_POLICY: &str = r#"
default: deny
error: { code: 40099, message: "not allowed by any rule" }
rules:
  - id: vip-allow
    on: [cmdDry]
    when: { userID: { equals: vip_1 } }
    decision: allow
  - id: trial-deny-guests
    on: [cmdDry]
    when: { userID: { regex: '^guest_' } }
    decision: deny
    error: { code: 40001, message: "guests are refused (trial)" }
    mode: dry_run
  - id: trial-allow-members
    on: [cmdDry]
    when: { userID: { regex: '^(guest|member)_' } }
    decision: allow
    mode: dry_run
  - id: refuse-guest-2
    on: [cmdDry]
    when: { userID: { equals: guest_2 } }
    decision: deny
    error: { code: 40002, message: "guest_2 is refused" }
"#;

#[tokio::test]
async fn dry_run_rules_do_not_decide_and_serve_dry_run_always_allows() {
    let dir = PolicyDir::with("dry.yaml", DRY_RUN_POLICY);
    let default = || refusal(40099, "not allowed by any rule", "");
    let bodies =
        [r#"{"userID":"vip_1"}"#, r#"{"userID":"guest_1"}"#, r#"{"userID":"guest_2"}"#, r#"{"userID":"member_1"}"#];

    // Enforcing: a dry-run rule that holds (deny or allow) lets evaluation go on.
    let server = Server::start(dir.path(), &[]);
    let want = [ALLOW.to_string(), default(), refusal(40002, "guest_2 is refused", ""), default()];
    for (body, want) in bodies.iter().zip(&want) {
        let (status, got) = server.post("/openim/cmdDry", body).await;
        assert_eq!((status, got.as_str()), (200, want.as_str()), "{body}");
    }
    let logs = plain_logs(&server);
    let held: Vec<&String> = logs.iter().filter(|l| l.contains("dry-run rule held")).collect();
    assert_eq!(held.len(), 5, "{logs:#?}");
    assert_eq!(held.iter().filter(|l| l.contains("trial-deny-guests")).count(), 2, "{logs:#?}");
    assert!(
        !logs.iter().any(|l| l.contains("dry run: would deny")),
        "an enforcing server logged a dry-run answer: {logs:#?}"
    );
    drop(server);

    // `serve --dry-run`: every answer is allow; the log says what enforcement would answer.
    let server = Server::start(dir.path(), &["--dry-run"]);
    for body in bodies {
        let (status, got) = server.post("/openim/cmdDry", body).await;
        assert_eq!((status, got.as_str()), (200, ALLOW), "{body}");
    }
    let (status, got) = server.post("/openim/someOtherCommand", "{}").await;
    assert_eq!((status, got.as_str()), (200, ALLOW));
    let logs = plain_logs(&server);
    let would: Vec<&String> = logs.iter().filter(|l| l.contains("dry run: would deny")).collect();
    assert_eq!(would.len(), 4, "{logs:#?}");
    for (line, rule) in would.iter().zip(["(default)", "refuse-guest-2", "(default)", "(default)"]) {
        assert!(line.contains(rule), "expected {rule} in {line}");
    }
    assert!(would[3].contains("someOtherCommand"), "{}", would[3]);
}

const BAD_INPUT_POLICY: &str = r#"
rules:
  - id: refuse-x
    on: [cmdX]
    decision: deny
    error: { code: 50001, message: cmdX }
"#;

/// A JSON object for `/openim/cmdX` of exactly `len` bytes.
#[tokio::test]
async fn bad_input_gets_400_in_openim_shape_and_the_server_goes_on() {
    let dir = PolicyDir::with("policy.yaml", BAD_INPUT_POLICY);
    let server = Server::start(dir.path(), &["--max-body-bytes", "1024"]);
    let good = || async {
        let (status, got) = server.post("/openim/cmdX", "{}").await;
        assert_eq!((status, got), (200, denied(50001, "cmdX")));
    };
    let long = "a".repeat(129);
    let too_long_path = format!("/openim/{long}");
    let not_json = |why: &str| format!("body is not valid JSON: {why}");
    let not_object = |got: &str| format!("body must be a JSON object, got {got}");
    let no_command =
        || "no callback command: POST to /openim/{command} or send `callbackCommand` in the body".to_string();
    let mismatch = |url: &str, body: &str| {
        format!("callback command in the URL is `{url}` but the body's `callbackCommand` is `{body}`")
    };
    let bad_command =
        |c: &str| format!("callback command `{c}` is not valid: use letters, digits, `_` and `.`, at most 128");
    let not_string = || "`callbackCommand` must be a string".to_string();
    let cases: Vec<(&str, &str, &str, String)> = vec![
        ("/openim/cmdX", "nope", "not_json", not_json("expected ident at line 1 column 2")),
        ("/openim/cmdX", "", "not_json", not_json("EOF while parsing a value at line 1 column 0")),
        ("/openim/cmdX", "\n", "not_json", not_json("EOF while parsing a value at line 2 column 0")),
        ("/openim/cmdX", r#"{"a":"#, "not_json", not_json("EOF while parsing a value at line 1 column 5")),
        ("/openim/cmdX", "{} {}", "not_json", not_json("trailing characters at line 1 column 4")),
        ("/openim/cmdX", "[1]", "not_object", not_object("an array")),
        ("/openim/cmdX", r#""cmdX""#, "not_object", not_object("a string")),
        ("/openim/cmdX", "42\n", "not_object", not_object("a number")),
        ("/openim/cmdX", "null", "not_object", not_object("null")),
        ("/openim/cmdX", "true", "not_object", not_object("a boolean")),
        ("/openim", r#"{"userID":"u_1"}"#, "no_command", no_command()),
        ("/openim?contenttype=json", "{}", "no_command", no_command()),
        ("/openim/cmdX", r#"{"callbackCommand":"cmdY"}"#, "command_mismatch", mismatch("cmdX", "cmdY")),
        ("/openim?command=cmdX", r#"{"callbackCommand":"cmdY"}"#, "command_mismatch", mismatch("cmdX", "cmdY")),
        ("/openim/cmdX", r#"{"callbackCommand":"cmdx"}"#, "command_mismatch", mismatch("cmdX", "cmdx")),
        ("/openim/cmd-X", "{}", "bad_command", bad_command("cmd-X")),
        ("/openim/cmd%20X", "{}", "bad_command", bad_command("cmd%20X")),
        ("/openim/cmd/X", "{}", "bad_command", bad_command("cmd/X")),
        ("/openim?command=cmd%3BX", "{}", "bad_command", bad_command("cmd;X")),
        ("/openim", r#"{"callbackCommand":"cmd X"}"#, "bad_command", bad_command("cmd X")),
        ("/openim", r#"{"callbackCommand":"café"}"#, "bad_command", bad_command("café")),
        (&too_long_path, "{}", "bad_command", bad_command(&long[..128])),
        ("/openim", r#"{"callbackCommand":7}"#, "command_not_string", not_string()),
        ("/openim/cmdX", r#"{"callbackCommand":["cmdX"]}"#, "command_not_string", not_string()),
        ("/openim/cmdX", r#"{"callbackCommand":null}"#, "command_not_string", not_string()),
    ];
    for (path, body, code, message) in &cases {
        let (status, content_type, _, got) = send(&server, reqwest::Method::POST, path, body).await;
        assert_eq!(
            (status, content_type.as_str(), got.as_str()),
            (400, "application/json", bad(code, message).as_str()),
            "POST {path} {body:.80}"
        );
        good().await;
    }

    // The limit is inclusive; 128 characters is a valid command.
    let (status, got) = server.post("/openim/cmdX", &body_of_len(1024)).await;
    assert_eq!((status, got), (200, denied(50001, "cmdX")));
    let (status, got) = server.post("/openim/cmdX", &body_of_len(1025)).await;
    assert_eq!((status, got), (413, too_large(1024)));
    let (status, got) = server.post(&format!("/openim/{}", &long[..128]), "{}").await;
    assert_eq!((status, got.as_str()), (200, ALLOW));

    // Chunked bodies, no Content-Length: under the limit decided, over it refused.
    let chunked = |chunks: &[&str]| {
        let mut req = String::from(
            "POST /openim/cmdX HTTP/1.1\r\nHost: callgate\r\nContent-Type: application/json; charset=utf-8\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        for c in chunks {
            req.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
        }
        req.push_str("0\r\n\r\n");
        req
    };
    let (status, got) = raw_http(&server, chunked(&[r#"{"user"#, r#"ID":"u_1"}"#, "\n"]).as_bytes()).await;
    assert_eq!((status, got), (200, denied(50001, "cmdX")));
    let big = body_of_len(2048);
    let parts: Vec<&str> = vec![&big[..512], &big[512..1024], &big[1024..1536], &big[1536..]];
    let (status, got) = raw_http(&server, chunked(&parts).as_bytes()).await;
    assert_eq!((status, got), (413, too_large(1024)));
    good().await;

    // One warn line per bad request, saying what was wrong.
    let logs = plain_logs(&server);
    let warned: Vec<&String> = logs.iter().filter(|l| l.contains("bad OpenIM callback")).collect();
    assert_eq!(warned.len(), cases.len() + 2, "{logs:#?}");
    assert_eq!(warned.iter().filter(|l| l.contains("body is larger than the limit of 1024 bytes")).count(), 2);
    assert!(warned.iter().all(|l| l.contains(" WARN ")), "{warned:#?}");
    for (_, _, _, message) in &cases {
        assert!(
            warned.iter().any(|l| l.contains(&format!("bad OpenIM callback: {message}"))),
            "no warn line for {message}: {warned:#?}"
        );
    }
}

#[tokio::test]
async fn wrong_methods_and_unknown_paths_answer_in_openim_shape() {
    let dir = PolicyDir::with("policy.yaml", BAD_INPUT_POLICY);
    let server = InProcess::start(dir.path(), Default::default()).await;
    let not_post = bad("method_not_allowed", "callbacks must be POSTed");
    let not_found = bad("not_found", "no such endpoint: OpenIM callbacks go to /openim/{command}");
    use reqwest::Method;
    // (method, path, status, `Allow` header, answer). RFC 9110 §15.5.6: a 405 MUST carry
    // `Allow` with the methods the resource supports.
    let cases = [
        (Method::GET, "/openim/cmdX", 405, "POST", &not_post),
        (Method::PUT, "/openim/cmdX", 405, "POST", &not_post),
        (Method::DELETE, "/openim", 405, "POST", &not_post),
        (Method::PATCH, "/openim?command=cmdX", 405, "POST", &not_post),
        (Method::POST, "/", 404, "", &not_found),
        (Method::GET, "/", 404, "", &not_found),
        (Method::POST, "/other", 404, "", &not_found),
        (Method::POST, "/openimx/cmdX", 404, "", &not_found),
        (Method::POST, "/v1/status", 404, "", &not_found),
    ];
    for (method, path, want_status, want_allow, want) in cases {
        let (status, content_type, allow, got) = send(&server, method.clone(), path, "{}").await;
        assert_eq!(
            (status, content_type.as_str(), allow.as_str(), got.as_str()),
            (want_status, "application/json", want_allow, want.as_str()),
            "{method} {path}"
        );
        let (status, got) = server.post("/openim/cmdX", "{}").await;
        assert_eq!((status, got), (200, denied(50001, "cmdX")));
    }
}

#[tokio::test]
async fn every_openim_sample_is_decided() {
    let samples_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples/openim");
    let mut names: Vec<String> = std::fs::read_dir(&samples_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 52, "{names:?}");
    let bodies: Vec<(String, String)> = names
        .iter()
        .map(|name| {
            let body = wire(&sample(&format!("openim/{name}")));
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let command = v["callbackCommand"].as_str().unwrap().to_string();
            assert_eq!(format!("{command}.json"), *name);
            (command, body)
        })
        .collect();

    // A catch-all deny whose regex matches none of them: every one is allowed.
    let none = PolicyDir::with(
        "none.yaml",
        r#"
rules:
  - id: matches-no-sample
    when: { callbackCommand: { regex: '^nothing$' } }
    decision: deny
    error: { code: 60001, message: "matched" }
"#,
    );
    // A catch-all deny on a field every one has: every one is refused.
    let all = PolicyDir::with(
        "all.yaml",
        r#"
rules:
  - id: matches-every-sample
    when: { callbackCommand: { regex: '^callback[A-Za-z]+Command$' } }
    decision: deny
    error: { code: 60002, message: "matched", detail: "every sample" }
"#,
    );
    let none = InProcess::start(none.path(), Default::default()).await;
    let all = InProcess::start(all.path(), Default::default()).await;
    let refused = refusal(60002, "matched", "every sample");
    for (command, body) in &bodies {
        let path = format!("/openim/{command}");
        let (status, got) = none.post(&path, body).await;
        assert_eq!((status, got.as_str()), (200, ALLOW), "{command}");
        let (status, got) = all.post(&path, body).await;
        assert_eq!((status, got.as_str()), (200, refused.as_str()), "{command}");
    }
}

/// Regression: a `webhooks.yml` url ending in `/` makes OpenIM post to `/openim//{command}`;
/// that used to be a bad request (actionCode 1, which OpenIM reads as "continue"), so every
/// callback went through undecided. An empty `?command=` is no command, like an empty path.
#[tokio::test]
async fn trailing_slash_in_the_webhook_url_is_still_decided() {
    let dir = PolicyDir::with("policy.yaml", BAD_INPUT_POLICY);
    let server = InProcess::start(dir.path(), Default::default()).await;
    for path in ["/openim//cmdX", "/openim/cmdX/"] {
        let (status, got) = server.post(path, r#"{"callbackCommand":"cmdX"}"#).await;
        assert_eq!((status, got), (200, denied(50001, "cmdX")), "{path}");
    }
    // No command in the URL at all: the bare form of OpenIM 2.x.
    let (status, got) = server.post("/openim?command=", r#"{"callbackCommand":"cmdX"}"#).await;
    assert_eq!((status, got), (200, denied_v2(50001, "cmdX")));
}

/// An operationID that is not visible ASCII (UTF-8 text, or bytes that are not even that) is
/// still decided, and recorded as text with invalid bytes replaced.
#[tokio::test]
async fn an_operation_id_that_is_not_ascii_is_decided_and_recorded() {
    let dir = PolicyDir::with("policy.yaml", BAD_INPUT_POLICY);
    let mut server = Server::start(dir.path(), &[]);
    for id in ["op-\u{4f60}\u{597d}".as_bytes(), b"op-\xff"] {
        let resp = server
            .client
            .post(format!("{}/openim/cmdX", server.base))
            .header("operationID", reqwest::header::HeaderValue::from_bytes(id).unwrap())
            .body(r#"{"callbackCommand":"cmdX"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.unwrap(), denied(50001, "cmdX"));
    }
    assert_eq!(server.terminate(), Some(0));
    let ids: Vec<_> = events(server.data_dir(), &[]).iter().map(|r| r["operation_id"].clone()).collect();
    assert_eq!(ids, ["op-\u{4f60}\u{597d}", "op-\u{fffd}"]);
}
