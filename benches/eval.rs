//! Decision cost and load time of large generated policy sets.
//!
//! Generates sets of 100, 1,000 and 10,000 rules (by `common`, which `replay` shares),
//! writes each into a tempdir and loads it with `callgate::policy::load_dir`, as the server
//! does. Then it measures `PolicySet::decide` on events built from the shared OpenIM
//! samples: the common case where no rule holds and the default decides, and three cases
//! where a rule decides.
//! `decide_with_cap/*` measures a one-rule set with an in-memory rate cap on every callback.
//!
//! Targets: under 2 µs per decision at 1,000 rules; 10,000 rules at most 2× the cost of
//! 100 rules. `cargo bench --bench eval` ends with a summary table that checks both.
//! Without `--bench` (as under `cargo test --all-targets`) only the 100-rule set is built
//! and each benchmark runs once.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use callgate::event::Event;
use callgate::policy::{PolicySet, load_dir};
use callgate::ratecap::{CapStore, MemoryCaps, OnError};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

mod common;

use common::*;

/// The rule counts measured with `--bench`.
const SIZES: [usize; 3] = [100, 1_000, 10_000];

/// A named event built from a sample, and which rule should decide it (`None`: the default).
struct Case {
    name: &'static str,
    event: Event,
    expect_rule: Option<&'static str>,
}

fn cases(banned_id: &str) -> Vec<Case> {
    vec![
        Case { name: "remove_black_default", event: event(REMOVE_BLACK, &[]), expect_rule: None },
        Case { name: "send_single_default", event: event(SEND_SINGLE, &[]), expect_rule: None },
        Case { name: "send_group_default", event: event(SEND_GROUP, &[]), expect_rule: None },
        Case {
            name: "add_black_list_hit",
            event: event(ADD_BLACK, &[("blackUserID", banned_id)]),
            expect_rule: Some("plant-list-hit"),
        },
        Case {
            name: "remove_black_regex_hit",
            event: event(REMOVE_BLACK, &[("blackUserID", "sys_planted_42")]),
            expect_rule: Some("plant-regex-hit"),
        },
        Case {
            name: "send_single_equals_hit",
            event: event(SEND_SINGLE, &[("sendID", PLANTED_SENDER)]),
            expect_rule: Some("plant-equals-hit"),
        },
    ]
}

/// One generated, loaded set and what the rules in it are.
struct Loaded {
    rules: usize,
    set: PolicySet,
    mix: Mix,
    banned_id: String,
    load_time: Duration,
    _dir: tempfile::TempDir,
}

fn generate(rules: usize) -> Loaded {
    let dir = tempfile::tempdir().unwrap();
    let mix = write_set(dir.path(), rules, 0x9e37_79b9_7f4a_7c15 ^ rules as u64);
    // To look at what was measured: CALLGATE_BENCH_KEEP=DIR copies each set to DIR/rules-N.
    if let Some(keep) = std::env::var_os("CALLGATE_BENCH_KEEP") {
        let to = Path::new(&keep).join(format!("rules-{rules}"));
        copy_dir(dir.path(), &to);
        println!("generated set of {rules} rules kept in {}", to.display());
    }
    let started = Instant::now();
    let set = load_dir(dir.path()).unwrap_or_else(|e| panic!("generated set did not load:\n{e}"));
    let load_time = started.elapsed();
    let banned = std::fs::read_to_string(dir.path().join("lists/banned.txt")).unwrap();
    let banned_id = banned.lines().nth(1).unwrap().to_string();
    Loaded { rules, set, mix, banned_id, load_time, _dir: dir }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn is_bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn benches(c: &mut Criterion) {
    let sizes: &[usize] = if is_bench_mode() { &SIZES } else { &SIZES[..1] };
    let sets: Vec<Loaded> = sizes.iter().map(|&n| generate(n)).collect();

    for l in &sets {
        let m = &l.mix;
        println!(
            "set of {} rules (+3 planted): equals/in {}, in_list {}, regex {}, bare any {}, extra any/not {}, glob on {}, no on {}; first load {:.1} ms",
            l.rules,
            m.equals,
            m.in_list,
            m.regex,
            m.anyless_any,
            m.combinators,
            m.globs,
            m.no_on,
            l.load_time.as_secs_f64() * 1e3
        );
    }

    // Check what decides each event before timing it, so the numbers mean what they say.
    for l in &sets {
        for case in cases(&l.banned_id) {
            let decision = l.set.decide(&case.event);
            let (explained, _) = l.set.explain(&case.event, &Default::default());
            assert_eq!(decision, explained, "{} at {} rules: decide and explain disagree", case.name, l.rules);
            match case.expect_rule {
                None => {
                    assert_eq!(decision.rule, None, "{} at {} rules should fall to the default", case.name, l.rules)
                }
                Some(_) => {
                    assert!(decision.rule.is_some(), "{} at {} rules should be decided by a rule", case.name, l.rules)
                }
            }
            println!(
                "{:>6} rules  {:<24} -> {} by {}",
                l.rules,
                case.name,
                decision.outcome.as_str(),
                decision.rule.as_deref().unwrap_or("(default)")
            );
        }
    }

    for (k, name) in cases("").iter().map(|c| c.name).enumerate() {
        let mut group = c.benchmark_group(format!("decide/{name}"));
        for l in &sets {
            let case = cases(&l.banned_id).swap_remove(k);
            group.bench_with_input(BenchmarkId::from_parameter(l.rules), &case.event, |b, e| {
                b.iter(|| l.set.decide(black_box(e)))
            });
        }
        group.finish();
    }

    bench_capped(c);

    // Loading the biggest set, as a reload does (directory walk, YAML, regexes, index).
    let dir = tempfile::tempdir().unwrap();
    let n = *sizes.last().unwrap();
    write_set(dir.path(), n, 7);
    let mut group = c.benchmark_group("load_dir");
    group.sample_size(10).warm_up_time(Duration::from_millis(200));
    group.bench_function(BenchmarkId::from_parameter(n), |b| b.iter(|| load_dir(black_box(dir.path())).unwrap()));
    group.finish();

    // The summary re-times every case, so skip it when a filter picks only some.
    let is_filtered = std::env::args().skip(1).any(|a| !a.starts_with('-'));
    if is_bench_mode() && !is_filtered {
        summary(&sets, dir.path(), n);
    }
}

/// An in-memory rate cap on every callback, as the load script's `cap` scenario: the
/// blocklist removal sample from 100,000 different owners, checked and counted by
/// `decide_with_caps`, in a one-second window so that each key holds a few times and drops
/// as many as it gains (a busy cap's steady state); beside it the same set decided without
/// a cap store, so the difference is what checking and counting a cap costs.
fn bench_capped(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-cap.yaml"),
        "rules:\n  - id: unblock-rate\n    rate_cap: { key: [ownerUserID], max: 1000000, per: 1s }\n    decision: deny\n    error: { code: 20002, message: \"too many unblocks\" }\n",
    )
    .unwrap();
    let set = load_dir(dir.path()).unwrap();
    let store = CapStore::Memory(MemoryCaps::new(1_000_000));
    let lists = callgate::lists::ListStore::new(None, std::time::Duration::from_millis(50));
    let events: Vec<Event> = (0..100_000).map(|n| event(REMOVE_BLACK, &[("ownerUserID", &format!("u_{n}"))])).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("decide_with_cap/remove_black");
    let mut i = 0;
    group.bench_function("memory", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            runtime.block_on(set.decide_with_caps(black_box(&events[i]), &store, &lists, OnError::Allow))
        })
    });
    group.bench_function("no_store", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            set.decide(black_box(&events[i]))
        })
    });
    group.finish();
}

/// ns per call of `f` over nine short batches: the fastest batch (the least disturbed by
/// other work on a shared machine) and the median one. A cross-check of criterion that
/// fits in one table.
fn batch_ns(mut f: impl FnMut()) -> (f64, f64) {
    let mut per_batch = Vec::new();
    let mut iters: u64 = 1000;
    for _ in 0..9 {
        let started = Instant::now();
        for _ in 0..iters {
            f();
        }
        let took = started.elapsed();
        per_batch.push(took.as_nanos() as f64 / iters as f64);
        // Aim at ~60 ms a batch.
        let target = 60e6 / (took.as_nanos().max(1) as f64 / iters as f64);
        iters = (target as u64).clamp(1000, 50_000_000);
    }
    per_batch.sort_by(f64::total_cmp);
    (per_batch[0], per_batch[per_batch.len() / 2])
}

fn summary(sets: &[Loaded], dir_10k: &Path, n: usize) {
    let mut out = String::from("\n==== eval summary: ns per decide, fastest/median of 9 batches ====\n");
    write!(out, "{:<24}", "event").unwrap();
    for l in sets {
        let label = format!("{} rules", l.rules);
        write!(out, "{label:>14}").unwrap();
    }
    writeln!(out, "{:>16}", "10k/100").unwrap();
    // (fastest, median) worst cases over the events.
    let mut worst_1k = (0.0f64, 0.0f64);
    let mut worst_ratio = (0.0f64, 0.0f64);
    for (k, name) in cases("").iter().map(|c| c.name).enumerate() {
        write!(out, "{name:<24}").unwrap();
        let mut row = Vec::new();
        for l in sets {
            let case = cases(&l.banned_id).swap_remove(k);
            let (min, med) = batch_ns(|| {
                black_box(l.set.decide(black_box(&case.event)));
            });
            row.push((l.rules, min, med));
            let cell = format!("{min:.0}/{med:.0}");
            write!(out, "{cell:>14}").unwrap();
        }
        let at = |r: usize| row.iter().find(|(n, _, _)| *n == r).map(|&(_, min, med)| (min, med));
        if let Some((min, med)) = at(1_000) {
            worst_1k = (worst_1k.0.max(min), worst_1k.1.max(med));
        }
        match (at(100), at(10_000)) {
            (Some(a), Some(b)) => {
                let ratio = (b.0 / a.0, b.1 / a.1);
                worst_ratio = (worst_ratio.0.max(ratio.0), worst_ratio.1.max(ratio.1));
                let cell = format!("{:.2}x/{:.2}x", ratio.0, ratio.1);
                writeln!(out, "{cell:>16}").unwrap();
            }
            _ => writeln!(out).unwrap(),
        }
    }
    let mut loads = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let set = load_dir(dir_10k).unwrap();
        loads.push(started.elapsed().as_secs_f64() * 1e3);
        black_box(set);
    }
    loads.sort_by(f64::total_cmp);
    writeln!(
        out,
        "load_dir of {n} rules: median {:.0} ms (runs: {})",
        loads[1],
        loads.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(", ")
    )
    .unwrap();
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    writeln!(
        out,
        "target  < 2000 ns per decision at 1,000 rules: worst {:.0} ns fastest, {:.0} ns median -> {}",
        worst_1k.0,
        worst_1k.1,
        verdict(worst_1k.1 < 2000.0)
    )
    .unwrap();
    writeln!(
        out,
        "target  10,000 rules <= 2x 100 rules: worst {:.2}x fastest, {:.2}x median -> {}",
        worst_ratio.0,
        worst_ratio.1,
        verdict(worst_ratio.1 <= 2.0)
    )
    .unwrap();
    println!("{out}");
}

criterion_group! {
    name = eval;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(40);
    targets = benches
}
criterion_main!(eval);
