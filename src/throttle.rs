//! Log lines an attacker cannot flood: for each kind of event (bad callback of one reason,
//! forbidden caller, …) at most [`BURST`] lines a second are written; the rest are counted
//! and reported in one summary line once their second is over. Metrics count every event,
//! whatever is logged.
//!
//! A summary is written by the next event of any kind after the second is over, or by
//! [`flush`], which the server calls every second, so a burst that stops is still reported.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines logged per kind of event per [`WINDOW`].
pub const BURST: u32 = 10;
/// The window lines are counted in.
pub const WINDOW: Duration = Duration::from_secs(1);

/// A kind of event: what happened, and why (both static, so the set stays bounded).
type Kind = (&'static str, &'static str);

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

static WINDOWS: Mutex<BTreeMap<Kind, Window>> = Mutex::new(BTreeMap::new());

/// Logs `line()` at WARN unless `what`/`reason` has logged [`BURST`] lines this second; then
/// counts it for the summary instead. `line` is only built when it is logged. Returns whether
/// it was.
pub fn warn(what: &'static str, reason: &'static str, line: impl FnOnce() -> String) -> bool {
    let now = Instant::now();
    let admitted = {
        let mut windows = WINDOWS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let window = windows.entry((what, reason)).or_insert(Window { started: now, logged: 0, suppressed: 0 });
        if now.duration_since(window.started) >= WINDOW {
            summarise((what, reason), window);
            *window = Window { started: now, logged: 0, suppressed: 0 };
        }
        if window.logged < BURST {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    };
    if admitted {
        tracing::warn!(reason, "{}", line());
    }
    admitted
}

/// Writes the summary of every window whose second is over.
pub fn flush() {
    let now = Instant::now();
    let mut windows = WINDOWS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    windows.retain(|kind, window| {
        if now.duration_since(window.started) < WINDOW {
            return true;
        }
        summarise(*kind, window);
        false
    });
}

fn summarise((what, reason): Kind, window: &Window) {
    if window.suppressed > 0 {
        tracing::warn!(
            reason,
            suppressed = window.suppressed,
            "{} more {what} ({reason}) in that second not logged; every one is counted in the metrics",
            window.suppressed
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_a_few_lines_and_the_rest_counted() {
        let logged = (0..100).filter(|_| warn("test events", "unit", String::new)).count();
        assert_eq!(logged, BURST as usize);
        let windows = WINDOWS.lock().unwrap();
        assert_eq!(windows[&("test events", "unit")].suppressed, 100 - u64::from(BURST));
    }
}
