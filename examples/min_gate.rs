//! The least a hand-written gate must do for the callbacks `bench/load.sh` sends: the
//! yardstick of issue 19, beside `bare_warp` (which does less than any real gate can).
//!
//! For each `POST /openim/{command}` it reads the body, parses it into a struct, checks an
//! allowlist (the shipped policies' staff list) and a regex (`^(sys|bot)_`, as the shipped
//! rule), answers in OpenIM's format, and — unless records are off — hands a record line of
//! the same information (time, command, operation ID, decision, rule, the body) to a writer
//! thread that appends it to a file. No policy language, no index, no metrics, no hot
//! reload: what callgate adds over this is what its features cost.
//!
//! With `--cap` it does instead what `bench/policies/cap` asks of callgate, the yardstick
//! for a rate cap on every callback: one rolling-window cap keyed on `ownerUserID` (at most
//! 1,000,000 allowed callbacks an hour, refused with 20002), its times kept in a
//! `HashMap<String, VecDeque<u64>>` behind one mutex. Exact, but with no bound on keys and
//! no sweeping of idle ones, which callgate's store has.
//!
//! Usage: `min_gate [ADDR] [RECORDS_FILE|-] [--cap]` (default `127.0.0.1:0`, `-`: records
//! off). Prints `min_gate listening on http://ADDR` once bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use regex::Regex;
use serde::Deserialize;
use warp::Filter;
use warp::http::header;

const ALLOW: &[u8] = br#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;
const DENY: &[u8] =
    br#"{"actionCode":0,"errCode":20001,"errMsg":"system accounts cannot be unblocked","errDlt":"","nextCode":1}"#;
const CAPPED: &[u8] =
    br#"{"actionCode":0,"errCode":20002,"errMsg":"too many unblocks, try later","errDlt":"","nextCode":1}"#;
const MAX_BODY_BYTES: u64 = 1 << 20;
/// bench/policies/cap's rule: `rate_cap: { key: [ownerUserID], max: 1000000, per: 1h }`.
const CAP_MAX: usize = 1_000_000;
const CAP_PER_MS: u64 = 3_600_000;

/// The fields the checks read; the rest of the body is skipped while parsing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Callback {
    #[serde(default, rename = "ownerUserID")]
    owner_user_id: String,
    #[serde(default, rename = "blackUserID")]
    black_user_id: String,
}

struct Gate {
    staff: HashSet<String>,
    system: Regex,
    records: Option<mpsc::Sender<Vec<u8>>>,
    /// With `--cap`: the cap instead of the list and the regex.
    cap: Option<Cap>,
}

/// A rolling-window cap: per owner, the times (ms since start) of the allowed callbacks
/// still in the window, oldest first. One std mutex: a check holds it for one lookup.
struct Cap {
    started: Instant,
    times: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl Cap {
    /// Whether one more callback of `owner` is within the cap; if so, it is counted.
    fn allows(&self, owner: &str) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let mut times = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(window) = times.get_mut(owner) {
            return admit(window, now);
        }
        let mut window = VecDeque::new();
        let is_allowed = admit(&mut window, now);
        times.insert(owner.to_string(), window);
        is_allowed
    }
}

/// Drops the times that left the window `(now - per, now]`; counts `now` if the rest leave
/// room for it.
fn admit(window: &mut VecDeque<u64>, now: u64) -> bool {
    while window.front().is_some_and(|&t| t + CAP_PER_MS <= now) {
        window.pop_front();
    }
    if window.len() >= CAP_MAX {
        return false;
    }
    window.push_back(now);
    true
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let is_capped = args.iter().any(|a| a == "--cap");
    args.retain(|a| a != "--cap");
    let mut args = args.into_iter();
    let addr_text = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let Ok(addr) = addr_text.parse::<SocketAddr>() else {
        eprintln!("min_gate: `{addr_text}` is not an address; write IP:PORT");
        return ExitCode::FAILURE;
    };
    let records = match args.next().filter(|f| f != "-") {
        None => None,
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => Some(start_writer(file)),
            Err(e) => {
                eprintln!("min_gate: cannot open {path}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let Ok(system) = Regex::new("^(sys|bot)_") else { return ExitCode::FAILURE };
    let staff = ["admin_1", "admin_2"].into_iter().map(String::from).collect();
    let cap = is_capped.then(|| Cap { started: Instant::now(), times: Mutex::new(HashMap::new()) });
    let gate = Arc::new(Gate { staff, system, records, cap });
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        eprintln!("min_gate: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    runtime.block_on(serve(addr, gate))
}

/// The writer thread: appends each line as it comes, flushing when the channel is empty.
fn start_writer(file: std::fs::File) -> mpsc::Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        while let Ok(line) = rx.recv() {
            let _ = out.write_all(&line);
            while let Ok(line) = rx.try_recv() {
                let _ = out.write_all(&line);
            }
            let _ = out.flush();
        }
    });
    tx
}

async fn serve(addr: SocketAddr, gate: Arc<Gate>) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("min_gate: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let routes = warp::post()
        .and(warp::path("openim"))
        .and(warp::path::param::<String>())
        .and(warp::header::optional::<String>("operationid"))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .map(move |command: String, operation_id: Option<String>, body: Bytes| {
            let answer = decide(&gate, &command, operation_id.as_deref().unwrap_or(""), &body);
            let mut response = warp::reply::Response::new(Bytes::from_static(answer).into());
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            response
        });
    println!("min_gate listening on http://{bound}");
    warp::serve(routes).incoming(listener).run().await;
    ExitCode::SUCCESS
}

/// Parse, check, record, answer.
fn decide(gate: &Gate, command: &str, operation_id: &str, body: &[u8]) -> &'static [u8] {
    let Ok(callback) = serde_json::from_slice::<Callback>(body) else { return ALLOW };
    let (rule, answer) = if let Some(cap) = &gate.cap {
        if cap.allows(&callback.owner_user_id) { ("", ALLOW) } else { ("unblock-rate", CAPPED) }
    } else if command == "callbackAfterRemoveBlackCommand" && gate.staff.contains(&callback.owner_user_id) {
        ("staff", ALLOW)
    } else if gate.system.is_match(&callback.black_user_id) {
        ("system", DENY)
    } else {
        ("", ALLOW)
    };
    if let Some(records) = &gate.records {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        let decision = if answer == ALLOW { "allow" } else { "deny" };
        let mut line = format!(
            r#"{{"time":"{time}","command":"{command}","operation_id":"{operation_id}","decision":"{decision}","rule":"{rule}","body":"#
        )
        .into_bytes();
        line.extend_from_slice(body.trim_ascii_end());
        line.extend_from_slice(b"}\n");
        let _ = records.send(line);
    }
    answer
}
