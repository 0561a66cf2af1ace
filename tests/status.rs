#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! The status page over real HTTP: the document it polls (`GET /v1/live`) on its own, the
//! page's headers and token rule, and the page itself in headless Chromium driven over
//! WebDriver (chromedriver; the W3C protocol is plain HTTP, spoken here with reqwest).
//!
//! The browser test needs `chromium` and `chromium-driver` (.ci/run installs them). Without
//! them it fails, unless `CALLGATE_SKIP_BROWSER=1` says to skip it.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::*;

const POLICY: &str = "rules:
  - id: no-sys
    on: [callbackBeforeAddBlackCommand]
    when:
      blackUserID: { regex: '^sys_' }
    decision: deny
    error: { code: 150, message: no }
  - id: trial
    on: ['callbackBefore*Black*']
    when:
      blackUserID: { regex: '^guest_' }
    decision: deny
    error: { code: 151, message: trial }
    mode: dry_run
";

const BROKEN: &str = "rules:
  - id: no-sys
    on: [callbackBeforeAddBlackCommand]
    when:
      blackUserID: { regex: '^(sys' }
    decision: deny
    error: { code: 150, message: no }
";

const ADD_BLACK: &str = "/openim/callbackBeforeAddBlackCommand";

fn add_black(owner: &str, black: &str) -> String {
    format!(r#"{{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"{owner}","blackUserID":"{black}"}}"#)
}

async fn live(server: &impl Endpoint, token: Option<&str>) -> reqwest::Response {
    let mut req = server.client().get(format!("{}/v1/live", server.admin()));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

async fn live_json(server: &impl Endpoint) -> Value {
    let resp = live(server, None).await;
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

fn rule<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["policy"]["rules"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("{id}: {doc}"))
}

#[tokio::test]
async fn the_live_document_lists_the_rules_in_order_with_their_decisions_and_the_refusals() {
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = InProcess::start(dir.path(), Default::default()).await;
    assert_eq!(server.post(ADD_BLACK, &add_black("u_1", "sys_1")).await.1, refusal(150, "no", ""));
    assert_eq!(server.post(ADD_BLACK, &add_black("u_2", "guest_1")).await.1, ALLOW);
    assert_eq!(server.post(ADD_BLACK, &add_black("u_3", "u_4")).await.1, ALLOW);

    let doc = live_json(&server).await;
    let rules = doc["policy"]["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["no-sys", "trial", "(default)"]);
    assert_eq!(rules[0]["on"], json!(["callbackBeforeAddBlackCommand"]));
    assert_eq!(rules[0]["mode"], "enforce");
    assert_eq!(rules[0]["error_code"], 150);
    assert!(rules[0]["at"].as_str().unwrap().ends_with("10.yaml:2"), "{}", rules[0]);
    assert_eq!(rules[1]["mode"], "dry_run");
    assert_eq!(rules[1]["on"], json!(["callbackBefore*Black*"]));
    // The hour is exact; the last minute is a sliding estimate, never more than the hour.
    assert_eq!(rules[0]["hour"], json!({"allow": 0, "deny": 1, "would_deny": 0}));
    assert_eq!(rules[1]["hour"], json!({"allow": 0, "deny": 0, "would_deny": 1}));
    assert_eq!(rules[2]["hour"], json!({"allow": 2, "deny": 0, "would_deny": 0}));
    for r in rules {
        for outcome in ["allow", "deny", "would_deny"] {
            assert!(r["minute"][outcome].as_u64().unwrap() <= r["hour"][outcome].as_u64().unwrap(), "{r}");
        }
    }

    let refusals = doc["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 2, "{doc}");
    assert_eq!(doc["refusals_unlisted"], 0);
    assert_eq!(refusals[0]["kind"], "would_deny", "newest first: {doc}");
    assert_eq!(refusals[0]["rule"], "trial");
    assert_eq!(refusals[0]["error_code"], 151);
    assert_eq!(refusals[0]["ids"], json!([["blackUserID", "guest_1"]]), "only the fields the rules read");
    assert_eq!(refusals[1]["kind"], "deny");
    assert_eq!(refusals[1]["command"], "callbackBeforeAddBlackCommand");
    assert_eq!(refusals[1]["rule"], "no-sys");
    assert_eq!(refusals[1]["error_code"], 150);

    let series = &doc["series"];
    assert_eq!(series["step_seconds"], 10);
    let decisions = series["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 90, "15 minutes of 10-second points");
    assert_eq!(decisions.iter().map(|n| n.as_u64().unwrap()).sum::<u64>(), 3);
    assert!(series["p99_ms"].as_array().unwrap().iter().any(|p| p.as_f64().is_some_and(|p| p > 0.0)), "{series}");
    assert_eq!(doc["last_reload"]["ok"], true);
    assert_eq!(doc["health"]["redis"], json!({"configured": false}));
    assert_eq!(doc["health"]["records"]["on"], true);
    assert_eq!(doc["policy"]["dry_run"], false);
}

/// Under `serve --dry-run` a refusal is answered allow, and counted and listed as a would-deny.
#[tokio::test]
async fn under_serve_dry_run_refusals_are_would_denies() {
    let dir = PolicyDir::with("10.yaml", POLICY);
    let settings = callgate::config::Settings { dry_run: Some(true), ..Default::default() };
    let server = InProcess::start(dir.path(), settings).await;
    assert_eq!(server.post(ADD_BLACK, &add_black("u_1", "sys_1")).await.1, ALLOW);
    let doc = live_json(&server).await;
    assert_eq!(rule(&doc, "no-sys")["hour"], json!({"allow": 0, "deny": 0, "would_deny": 1}));
    assert_eq!(doc["refusals"][0]["kind"], "would_deny");
    assert_eq!(doc["policy"]["dry_run"], true);
}

#[tokio::test]
async fn a_failed_reload_is_in_the_document_with_its_file_and_line() {
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = InProcess::start(dir.path(), Default::default()).await;
    dir.write("10.yaml", BROKEN);
    // Reloaded on demand: an in-process server may start watching after the write.
    let reload = server.client.post(format!("{}/v1/reload", server.admin)).send().await.unwrap();
    assert_eq!(reload.status().as_u16(), 422);
    let doc = live_json(&server).await;
    assert_eq!(doc["last_reload"]["ok"], false, "{doc}");
    let error = doc["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("10.yaml:5:") && error.contains("^(sys"), "{error}");
    assert_eq!(rule(&doc, "no-sys")["mode"], "enforce", "the old set keeps serving: {doc}");
}

/// Health comes from the counters `/metrics` exports, so it needs the process (the recorder
/// of metrics is process-wide); Tencent acks are counted by command.
#[tokio::test]
async fn health_and_tencent_acks_come_from_a_real_server() {
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.post(ADD_BLACK, &add_black("u_1", "sys_1")).await.1, refusal(150, "no", ""));
    assert_eq!(server.post(ADD_BLACK, "not json").await.0, 400);
    let query = "SdkAppid=1&CallbackCommand=Sns.CallbackFriendDelete&contenttype=json&ClientIP=1.1.1.1&OptPlatform=Web";
    let body = wire(&sample("tencent/Sns.CallbackFriendDelete.json"));
    assert_eq!(server.post_tencent(query, &body).await.0, 200);
    server.wait_for_metric("callgate_records_written_total", 2.0, Duration::from_secs(10)).await;
    let doc = live_json(&server).await;
    let records = &doc["health"]["records"];
    assert_eq!(records["on"], true);
    assert_eq!(records["written"], 2, "{records}");
    assert_eq!(records["failed"], 0, "{records}");
    assert!(records["bytes"].as_u64().unwrap() > 100, "{records}");
    assert_eq!(doc["health"]["bad_requests"], 1);
    assert_eq!(doc["health"]["forbidden"], 0);
    assert_eq!(doc["tencent"]["acks"], json!({"Sns.CallbackFriendDelete": 1}));
    assert_eq!(doc["series"]["tencent_acks"].as_array().unwrap().iter().filter_map(Value::as_u64).sum::<u64>(), 1);

    let off = Server::start(dir.path(), &["--records", "false"]);
    assert_eq!(live_json(&off).await["health"]["records"], json!({"on": false}));
}

/// Tencent before-callbacks decided by the rules are counted and listed as OpenIM's are: a
/// refusal with its code, a discard without one.
#[tokio::test]
async fn tencent_refusals_and_discards_are_listed() {
    let policy = r#"rules:
  - id: c2c-muted
    on: C2C.CallbackBeforeSendMsg
    when:
      From_Account: { equals: u_banned }
    decision: deny
    error: { code: 120001, message: "you are muted" }
  - id: spam-dropped
    on: C2C.CallbackBeforeSendMsg
    when:
      From_Account: { regex: '^spam_' }
    decision: discard
"#;
    let dir = PolicyDir::with("10.yaml", policy);
    let server = Server::start(dir.path(), &["--tencent-app-id", TENCENT_APP, "--tencent-token", TENCENT_TOKEN]);
    let command = "C2C.CallbackBeforeSendMsg";
    for from in ["u_banned", "spam_1"] {
        let mut body: Value = serde_json::from_str(&sample("tencent/C2C.CallbackBeforeSendMsg.json")).unwrap();
        body["From_Account"] = from.into();
        let (status, answer) = server.post_tencent(&signed_query(command, unix_now()), &body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        assert_ne!(answer, TENCENT_OK, "{from} is refused");
    }
    let doc = live_json(&server).await;
    assert_eq!(rule(&doc, "c2c-muted")["hour"], json!({"allow": 0, "deny": 1, "would_deny": 0}));
    assert_eq!(rule(&doc, "spam-dropped")["hour"], json!({"allow": 0, "deny": 1, "would_deny": 0}));
    let refusals = &doc["refusals"];
    assert_eq!(refusals[0]["kind"], "discard", "{doc}");
    assert_eq!(refusals[0]["error_code"], Value::Null);
    assert_eq!(refusals[0]["command"], command);
    assert_eq!(refusals[1]["kind"], "deny");
    assert_eq!(refusals[1]["error_code"], 120001);
    assert!(refusals[1]["ids"].as_array().unwrap().contains(&json!(["From_Account", "u_banned"])), "{doc}");
    let decided: u64 = doc["series"]["decisions"].as_array().unwrap().iter().filter_map(Value::as_u64).sum();
    assert_eq!(decided, 2, "Tencent decisions are in the series");
}

/// A browser gets the page without a token (it holds no data); its data needs the token; any
/// other client still gets the JSON index at `/`.
#[tokio::test]
async fn the_page_is_served_to_browsers_and_its_data_needs_the_token() {
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = Server::start(dir.path(), &["--admin-token", "s3cret"]);
    let get = |accept: &'static str| server.client.get(format!("{}/", server.admin)).header("accept", accept).send();
    let page = get("text/html,application/xhtml+xml,*/*;q=0.8").await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("v1/live") && html.contains("sessionStorage"), "the page polls /v1/live");
    assert!(html.len() < 24 * 1024, "the page is {} bytes", html.len());
    for external in ["http://", "https://", "src=", "<link", "@import"] {
        assert!(!html.contains(external), "the page loads nothing from elsewhere, but has `{external}`");
    }

    let index = get("application/json").await.unwrap();
    assert_eq!(index.headers()["content-type"], "application/json");
    let index: Value = index.json().await.unwrap();
    assert!(index["endpoints"]["GET /v1/live"].is_string(), "{index}");

    assert_eq!(live(&server, None).await.status().as_u16(), 401);
    assert_eq!(live(&server, Some("wrong")).await.status().as_u16(), 401);
    let resp = live(&server, Some("s3cret")).await;
    assert_eq!(resp.status().as_u16(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["policy"]["version"], server.version.as_str());
}

// --- the page in a real browser -----------------------------------------------------------

/// A headless Chromium behind chromedriver, spoken to over W3C WebDriver. Only loopback.
struct Browser {
    driver: Child,
    url: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver and a session; `None` when `CALLGATE_SKIP_BROWSER=1`.
    async fn start() -> Option<Browser> {
        if std::env::var("CALLGATE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("\n!!!!! CALLGATE_SKIP_BROWSER=1: the status page was NOT tested in a browser !!!!!\n");
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): install chromium and chromium-driver \
                     (apt-get install chromium chromium-driver, as .ci/run does), or set CALLGATE_SKIP_BROWSER=1"
                )
            });
        let profile = tempfile::tempdir().unwrap();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let mut browser = Browser {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            client,
            _profile: profile,
        };
        let status = format!("{}/status", browser.url);
        wait_until(
            Duration::from_secs(20),
            async || {
                let resp = browser.client.get(&status).send().await;
                match resp {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            },
            || "chromedriver did not get ready".into(),
        )
        .await;
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium(), "args": args},
            "timeouts": {"pageLoad": 15000, "script": 5000},
        }}});
        let created = browser.send(reqwest::Method::POST, "/session", caps).await;
        browser.session = created["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        Some(browser)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.url);
        let req = self.client.request(method.clone(), &url);
        let req = if method == reqwest::Method::GET { req } else { req.json(&body) };
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v: Value = resp.json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "{method} {path}: {v}");
        v["value"].clone()
    }

    async fn session(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.send(method, &format!("/session/{}{path}", self.session), body).await
    }

    async fn goto(&self, url: &str) {
        self.session(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    /// The rendered text of the first element matching `css` ("" when none).
    async fn text(&self, css: &str) -> String {
        let script =
            "const e = document.querySelector(arguments[0]); return e && !e.closest('[hidden]') ? e.innerText : '';";
        let v = self.session(reqwest::Method::POST, "/execute/sync", json!({"script": script, "args": [css]})).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the text of `css` contains `needle`; returns how long it took.
    async fn wait_for_text(&self, css: &str, needle: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        let mut last = String::new();
        wait_until(
            limit,
            async || {
                last = self.text(css).await;
                last.contains(needle)
            },
            || format!("`{css}` does not show `{needle}`"),
        )
        .await;
        started.elapsed()
    }

    async fn element(&self, css: &str) -> String {
        let v = self.session(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.session(reqwest::Method::POST, &format!("/element/{id}/value"), json!({"text": text})).await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.session(reqwest::Method::POST, &format!("/element/{id}/click"), json!({})).await;
    }

    /// Saves a PNG of the window to the tests' output directory; returns its path.
    async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let v = self.session(reqwest::Method::GET, "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    async fn quit(mut self) {
        let _ = self.client.delete(format!("{}/session/{}", self.url, self.session)).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Debian's `chromium`, or what `CHROMIUM` names.
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

const ROOT: &str = "/";

#[tokio::test]
async fn the_page_shows_rules_refusals_and_a_broken_file_in_a_real_browser() {
    let Some(browser) = Browser::start().await else { return };
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = Server::start(dir.path(), &[]);
    // Some traffic for the plots and counts before the page opens.
    for i in 0..20 {
        assert_eq!(server.post(ADD_BLACK, &add_black("u_1", &format!("u_{i}"))).await.1, ALLOW);
    }
    assert_eq!(server.post(ADD_BLACK, &add_black("u_7", "guest_3")).await.1, ALLOW);
    browser.goto(&format!("{}{ROOT}", server.admin)).await;
    browser.wait_for_text("#rules tbody", "no-sys", Duration::from_secs(10)).await;
    let rules = browser.text("#rules tbody").await;
    assert!(rules.contains("trial") && rules.contains("dry run") && rules.contains("callbackBefore*Black*"), "{rules}");
    assert!(rules.find("no-sys") < rules.find("trial"), "in order: {rules}");

    // A refusal sent over HTTP shows within 2 s (the page polls each second).
    assert_eq!(server.post(ADD_BLACK, &add_black("u_9", "sys_42")).await.1, refusal(150, "no", ""));
    let took = browser.wait_for_text("#refusals tbody", "sys_42", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "the refusal took {took:?} to show");
    let refusals = browser.text("#refusals tbody").await;
    assert!(refusals.contains("no-sys") && refusals.contains("150") && refusals.contains("would deny"), "{refusals}");
    browser.screenshot("status-page.png").await;
    // The filter box keeps only the matching rows.
    browser.type_into("#filter", "guest_3").await;
    browser.wait_for_text("#refusals-count", "1 of 2", Duration::from_secs(5)).await;
    assert!(!browser.text("#refusals tbody").await.contains("sys_42"));

    // A broken file: its error, with file:line, shows prominently; the old rules stay listed.
    dir.write("10.yaml", BROKEN);
    browser.wait_for_text("#reload-error", "10.yaml:5:", Duration::from_secs(10)).await;
    assert!(browser.text("#reload-text").await.contains("FAILED"));
    browser.screenshot("status-page-reload-error.png").await;
    browser.quit().await;
}

#[tokio::test]
async fn the_page_asks_for_the_token_once_and_keeps_it_for_the_tab() {
    let Some(browser) = Browser::start().await else { return };
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = Server::start(dir.path(), &["--admin-token", "s3cret"]);
    browser.goto(&format!("{}{ROOT}", server.admin)).await;
    browser.wait_for_text("#auth", "admin token", Duration::from_secs(10)).await;
    assert_eq!(browser.text("#rules tbody").await.trim(), "", "no data without the token");

    browser.type_into("#token", "wrong").await;
    browser.click("#token-submit").await;
    browser.wait_for_text("#auth-why", "refused", Duration::from_secs(10)).await;

    browser.type_into("#token", "s3cret").await;
    browser.click("#token-submit").await;
    browser.wait_for_text("#rules tbody", "no-sys", Duration::from_secs(10)).await;
    assert_eq!(browser.text("#auth").await, "", "the prompt is gone");

    // Loaded again in the same tab, the page does not ask again.
    browser.goto(&format!("{}{ROOT}", server.admin)).await;
    browser.wait_for_text("#rules tbody", "no-sys", Duration::from_secs(10)).await;
    assert_eq!(browser.text("#auth").await, "");
    browser.quit().await;
}
