//! Measures the resident memory of the in-memory rate-cap store holding 1,000,000 distinct
//! keys (one allowed callback each, as keys look in `rate_cap: { key: [ownerUserID] }`),
//! and the cost of a check. Run: `cargo run --release --example cap_memory`.

use std::time::{Duration, Instant};

use callgate::ratecap::{CapCheck, MemoryCaps, cap_key};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kb * 1024
}

fn main() {
    const KEYS: usize = 1_000_000;
    let per = Duration::from_secs(60);
    let store = MemoryCaps::new(KEYS);
    let before = rss_bytes();
    let started = Instant::now();
    for i in 0..KEYS {
        let user = format!("u_{i:08}");
        let check = CapCheck {
            rule: "unblock-rate".into(),
            key: cap_key("unblock-rate", per, "ownerUserID", [&user]),
            max: 10,
            per,
            is_dry_run: false,
            is_allow_when_exceeded: false,
        };
        if store.check(std::slice::from_ref(&check), true).map(|o| o.decided_by.is_some()).unwrap_or(true) {
            eprintln!("unexpected refusal at key {i}");
            return;
        }
    }
    let took = started.elapsed();
    let after = rss_bytes();
    let grown = after.saturating_sub(before);
    println!("keys tracked: {}", store.key_count());
    println!(
        "resident memory: {:.1} MB before, {:.1} MB after ({:.1} MB for the keys)",
        before as f64 / 1e6,
        after as f64 / 1e6,
        grown as f64 / 1e6
    );
    println!("bytes per key: {:.0}", grown as f64 / KEYS as f64);
    println!("check + count of a new key: {:.0} ns on average", took.as_nanos() as f64 / KEYS as f64);
    println!("target: 1,000,000 keys under 200 MB resident: {}", if after < 200_000_000 { "met" } else { "NOT met" });
}
