//! `callgate replay` throughput and memory: records replayed per second with the shipped
//! policies (`policies/`) and with a generated set of 1,000 rules (`common`, shared with
//! `eval`), and the peak memory of replaying a large record directory.
//!
//! Records are generated in the format the server writes (`record::decided_line`, decided by
//! the shipped set), from the four OpenIM samples with random user IDs, 1,000 a second of
//! record time, into files rotated at 64 MiB as the server rotates them. Throughput is measured over
//! [`THROUGHPUT_BYTES`] of them; peak memory (`VmHWM`, reset before the replay through
//! `/proc/self/clear_refs`) over `CALLGATE_REPLAY_BENCH_BYTES` (default 1 GiB).
//!
//! Targets: at least 500,000 records/s on one core (per second of the replaying thread's CPU
//! time, so other work on the machine does not count); peak memory flat, under 100 MB.
//! `cargo bench --bench replay` ends with a summary that checks both. Without `--bench` (as
//! under `cargo test --all-targets`) the directories are a few MiB and each benchmark runs
//! once.
//!
//! `CALLGATE_REPLAY_BENCH_WRITE=DIR` writes the records (`DIR/records`, the bytes of a
//! throughput run) and the 1,000-rule set (`DIR/rules_1000`) and measures nothing, so that
//! `callgate replay` itself can be profiled over them (`valgrind --tool=callgrind`, whose
//! instruction counts do not depend on what else the machine runs).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use callgate::policy::{PolicySet, load_dir};
use callgate::record::{self, EventFilter, SEGMENT_PREFIX, SEGMENT_SUFFIX};
use callgate::replay::{Report, replay};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod common;

use common::*;

/// Bytes of records replayed for throughput, with `--bench`.
const THROUGHPUT_BYTES: u64 = 64 << 20;
/// Bytes of records replayed for peak memory, with `--bench`, unless
/// `CALLGATE_REPLAY_BENCH_BYTES` says otherwise.
const MEMORY_BYTES: u64 = 1 << 30;
/// Bytes of each, without `--bench`.
const QUICK_BYTES: u64 = 2 << 20;
/// Record files are rotated at this size, as `serve`'s default.
const FILE_BYTES: u64 = 64 << 20;

fn is_bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A directory of generated records and what is in it.
struct Records {
    dir: tempfile::TempDir,
    records: u64,
    bytes: u64,
    files: usize,
}

/// Writes about `bytes` of records decided by `set` into a new temporary directory.
fn write_records(set: &PolicySet, bytes: u64, seed: u64) -> Records {
    write_records_into(tempfile::tempdir().unwrap(), set, bytes, seed)
}

/// Writes about `bytes` of records decided by `set` into `dir`, empty.
fn write_records_into(dir: tempfile::TempDir, set: &PolicySet, bytes: u64, seed: u64) -> Records {
    let mut rng = Rng(seed);
    let (mut records, mut written, mut files) = (0u64, 0u64, 0usize);
    let mut file: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut in_file = FILE_BYTES;
    while written < bytes {
        if in_file >= FILE_BYTES {
            if let Some(mut f) = file.take() {
                f.flush().unwrap();
            }
            let name = format!("{SEGMENT_PREFIX}{:013}{SEGMENT_SUFFIX}", 1_700_000_000_000u64 + files as u64);
            file =
                Some(std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.path().join(name)).unwrap()));
            files += 1;
            in_file = 0;
        }
        let mut event = random_event(&mut rng);
        event.operation_id = format!("op-{records}");
        let decision = set.decide(&event);
        let mut line =
            record::decided_line(&event, None, &decision, false, set.version(), Duration::from_micros(40)).to_vec();
        set_time(&mut line, records);
        file.as_mut().unwrap().write_all(&line).unwrap();
        records += 1;
        written += line.len() as u64;
        in_file += line.len() as u64;
    }
    file.unwrap().flush().unwrap();
    Records { dir, records, bytes: written, files }
}

/// Records arrive at this many a second, from [`FIRST_RECORD_MS`]: the rate caps' windows
/// then hold what a busy server's would, not every record (as the time of writing would).
const RECORDS_PER_SECOND: u64 = 1_000;
/// The time of the first record: 2026-12-01T00:00:00Z.
const FIRST_RECORD_MS: u64 = 1_796_083_200_000;

/// Writes the `n`th record's time over the time `decided_line` wrote (the same length).
fn set_time(line: &mut [u8], n: u64) {
    const PREFIX: &[u8] = b"{\"time\":\"";
    let ms = FIRST_RECORD_MS + n * 1000 / RECORDS_PER_SECOND;
    let time = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    assert!(line.starts_with(PREFIX) && line[PREFIX.len() + time.len()] == b'"', "a record starts with its time");
    line[PREFIX.len()..PREFIX.len() + time.len()].copy_from_slice(time.as_bytes());
}

/// One of the samples with random IDs: mostly messages and unblocks, now and then a system
/// account (which the shipped set refuses to unblock).
fn random_event(rng: &mut Rng) -> callgate::event::Event {
    let (a, b) = (rng.user(), rng.user());
    match rng.below(10) {
        0..=2 => {
            let black = if rng.below(20) == 0 { format!("sys_{}", rng.pick(&WORDS)) } else { b };
            event(REMOVE_BLACK, &[("ownerUserID", &a), ("blackUserID", &black)])
        }
        3 => event(ADD_BLACK, &[("ownerUserID", &a), ("blackUserID", &b)]),
        4..=7 => event(SEND_SINGLE, &[("sendID", &a), ("recvID", &b)]),
        _ => event(SEND_GROUP, &[("sendID", &a), ("groupID", &rng.group())]),
    }
}

fn replay_all(dir: &Path, set: &PolicySet) -> Report {
    replay(dir, set, &EventFilter::default(), None, |_| {}).unwrap()
}

/// The process's peak resident memory so far, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().strip_suffix("kB"));
    kb.and_then(|v| v.trim().parse::<u64>().ok()).map_or(0, |kb| kb * 1024)
}

/// Resets the peak to the current resident memory; false where the kernel does not allow it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn shipped() -> PolicySet {
    load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
}

/// Writes the throughput records and the 1,000-rule set under `dir`, kept.
fn write_for_profiling(dir: &Path, bytes: u64) {
    write_set(&dir.join("rules_1000"), 1_000, RULES_SEED);
    std::fs::create_dir_all(dir).unwrap();
    let records = write_records_into(tempfile::tempdir_in(dir).unwrap(), &shipped(), bytes, RECORDS_SEED);
    let kept = dir.join("records");
    std::fs::rename(records.dir.keep(), &kept).unwrap();
    println!(
        "{} records, {} bytes, in {}; 1,000 rules in {}",
        records.records,
        records.bytes,
        kept.display(),
        dir.join("rules_1000").display()
    );
}

/// The seeds of the 1,000-rule set and of the throughput records.
const RULES_SEED: u64 = 0x5eed_1000;
const RECORDS_SEED: u64 = 1;

fn benches(c: &mut Criterion) {
    let bytes = if is_bench_mode() { THROUGHPUT_BYTES } else { QUICK_BYTES };
    if let Some(dir) = std::env::var_os("CALLGATE_REPLAY_BENCH_WRITE") {
        write_for_profiling(Path::new(&dir), bytes);
        return;
    }
    let shipped = shipped();
    let generated = tempfile::tempdir().unwrap();
    write_set(generated.path(), 1_000, RULES_SEED);
    let rules_1k = load_dir(generated.path()).unwrap();
    let records = write_records(&shipped, bytes, RECORDS_SEED);
    println!(
        "{} records ({} bytes each on average), {:.1} MiB in {} file(s); replayed with the shipped set ({} rules) and 1,000 generated rules",
        records.records,
        records.bytes / records.records.max(1),
        records.bytes as f64 / (1 << 20) as f64,
        records.files,
        shipped.rule_count()
    );
    let unchanged = replay_all(records.dir.path(), &shipped);
    assert_eq!(unchanged.records.replayed, records.records);
    assert_eq!(unchanged.changes.changed, 0, "the set that decided them changes nothing");

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(records.records)).sample_size(10);
    for (name, set) in [("shipped", &shipped), ("rules_1000", &rules_1k)] {
        group.bench_function(name, |b| b.iter(|| replay_all(records.dir.path(), set)));
    }
    group.finish();

    let is_filtered = std::env::args().skip(1).any(|a| !a.starts_with('-'));
    if is_bench_mode() && !is_filtered {
        summary(&records, &[("shipped policies", &shipped), ("1,000 rules", &rules_1k)]);
    }
}

/// Records per second over the best of three replays, then the peak memory of one large
/// replay, with the verdicts. Rates are per second of this thread's CPU time (one core,
/// whatever else the machine runs), and per second of wall time beside it.
fn summary(records: &Records, sets: &[(&str, &PolicySet)]) {
    let mut out = String::from("\n==== replay summary ====\n");
    let mut worst = f64::INFINITY;
    for (name, set) in sets {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let (cpu, wall) = (cpu_ns(), Instant::now());
            replay_all(records.dir.path(), set);
            let per = |secs: f64| records.records as f64 / secs;
            rates.push((per((cpu_ns() - cpu) as f64 / 1e9), per(wall.elapsed().as_secs_f64())));
        }
        rates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (best, median) = (rates[2], rates[1]);
        worst = worst.min(best.0);
        writeln!(
            out,
            "{name:<18} {:>10.0} records/s of CPU (best of 3; median {:.0}); of wall time {:.0}",
            best.0, median.0, best.1
        )
        .unwrap();
    }
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    writeln!(out, "target  >= 500,000 records/s on one core: {:.0} -> {}", worst, verdict(worst >= 500_000.0)).unwrap();
    writeln!(out, "{}", memory(sets[0].1)).unwrap();
    println!("{out}");
}

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`; 0 where absent).
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0)
}

/// Replays `CALLGATE_REPLAY_BENCH_BYTES` (default 1 GiB) of records with `set`; the peak
/// memory of the replay alone.
fn memory(set: &PolicySet) -> String {
    let bytes = std::env::var("CALLGATE_REPLAY_BENCH_BYTES").ok().and_then(|b| b.parse().ok()).unwrap_or(MEMORY_BYTES);
    let started = Instant::now();
    let records = write_records(set, bytes, 2);
    let written_in = started.elapsed();
    let before = peak_rss();
    let is_reset = reset_peak_rss();
    let (started, cpu) = (Instant::now(), cpu_ns());
    let report = replay_all(records.dir.path(), set);
    let (took, cpu) = (started.elapsed(), (cpu_ns() - cpu) as f64 / 1e9);
    let peak = peak_rss();
    assert_eq!(report.records.replayed, records.records);
    let mb = |b: u64| b as f64 / 1e6;
    let mut out = format!(
        "large replay: {} records, {:.2} GiB in {} files (written in {:.1} s) replayed in {:.1} s, {:.1} s of CPU ({:.0} records/s of CPU)\n",
        records.records,
        records.bytes as f64 / (1u64 << 30) as f64,
        records.files,
        written_in.as_secs_f64(),
        took.as_secs_f64(),
        cpu,
        records.records as f64 / cpu
    );
    if is_reset {
        write!(
            out,
            "peak memory of the replay: {:.1} MB (VmHWM reset before it; process peak before: {:.1} MB)",
            mb(peak),
            mb(before)
        )
        .unwrap();
    } else {
        write!(out, "peak memory of the process: {:.1} MB (VmHWM could not be reset)", mb(peak)).unwrap();
    }
    write!(out, "\ntarget  flat, < 100 MB: -> {}", if peak < 100_000_000 { "MET" } else { "NOT MET" }).unwrap();
    out
}

criterion_group! {
    name = replay_bench;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(replay_bench);
