//! The `callgate` command: flags → `Config` → library calls. The only home of `anyhow`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use callgate::config::{DEFAULT_POLICIES, LogFormat, Settings};
use callgate::decision::Outcome;
use callgate::event::Event;
use callgate::event::{CommandNaming, resolve_command};
use callgate::policy::{self, PolicyStore};
use callgate::record::{self, EventFilter};
use callgate::replay::{CasePicker, FailOn};
use callgate::server;

/// A policy-gated callback decision engine for OpenIM and Tencent Cloud Chat.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: OpenIM and Tencent callbacks, and the admin API
    Serve {
        /// YAML config file; its keys are the flag names with `_` for `-`
        #[arg(long, env = "CALLGATE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Decide sample callbacks offline and show which rules held, were skipped or ran dry
    Check {
        #[command(flatten)]
        policies: PoliciesArg,
        /// Decide as this command instead of the body's `callbackCommand`
        #[arg(long, value_name = "COMMAND")]
        command: Option<String>,
        /// Callback bodies: JSON files, one object each
        #[arg(required = true, value_name = "EVENT.json")]
        events: Vec<PathBuf>,
    },
    /// Load the policy set and report every error as `file:line: message`, and every warning
    /// (a command no IM server sends, a field none of a rule's commands carries); exit 1 on an
    /// error
    Validate {
        #[command(flatten)]
        policies: PoliciesArg,
        /// Refuse warnings too: exit 1 when there is any
        #[arg(long)]
        strict: bool,
    },
    /// Run the test cases in the policy directory's tests/*.yaml; exit 1 on any failure
    Test {
        #[command(flatten)]
        policies: PoliciesArg,
    },
    /// Print the JSON Schema (draft-07) of a policy file, for editors
    Schema,
    /// Print records (one JSON object a line, oldest first) matching every filter given
    Events {
        #[command(flatten)]
        records: RecordsArgs,
        /// Only this answer: allow, deny, ack, or would_deny (a dry run that would refuse)
        #[arg(long, value_name = "DECISION")]
        decision: Option<String>,
        /// Only this source: openim or tencent
        #[arg(long, value_name = "SOURCE")]
        source: Option<String>,
        /// At most this many, the newest [default: no limit]
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Then keep printing matching records as they are written, until stopped (Ctrl-C)
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Decide the recorded callbacks (OpenIM, Tencent before-callbacks) again with a candidate
    /// policy set and report what would have changed; exit 1 when --fail-on or --max-changes
    /// trips, 2 when it cannot run
    Replay {
        /// The candidate policy directory
        #[arg(long, value_name = "DIR")]
        policies: PathBuf,
        #[command(flatten)]
        records: RecordsArgs,
        /// text (a report), json (the report as one document), or jsonl (each changed record)
        #[arg(long, value_enum, default_value_t = ReplayFormat::Text)]
        format: ReplayFormat,
        /// Exit 1 when any change of this kind is found (may be repeated)
        #[arg(long, value_enum, value_name = "CHANGE")]
        fail_on: Vec<FailOn>,
        /// Exit 1 when more than N callbacks change
        #[arg(long, value_name = "N")]
        max_changes: Option<u64>,
        /// Also write policy test cases (the tests/*.yaml format) pinning what the candidate
        /// decides for the replayed callbacks: one per rule and command, then the changes,
        /// then others
        #[arg(long, value_name = "FILE")]
        write_cases: Option<PathBuf>,
        /// At most N cases in --write-cases
        #[arg(long, value_name = "N", requires = "write_cases", default_value_t = callgate::replay::DEFAULT_MAX_CASES)]
        max_cases: usize,
    },
}

/// The output of `callgate replay`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ReplayFormat {
    Text,
    Json,
    Jsonl,
}

/// Which records to read: the filters `events` and `replay` share.
#[derive(clap::Args)]
struct RecordsArgs {
    /// Record directory [default: ./data]
    #[arg(long, env = "CALLGATE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Only records newer than this, as in 30s, 15m, 1h, 7d
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Only records older than this: a duration ago (1h) or an RFC 3339 time
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Only callbacks where an ID field (ownerUserID, From_Account, userIDList, …) is this
    #[arg(long, value_name = "ID")]
    user: Option<String>,
    /// Only this callback command
    #[arg(long, value_name = "COMMAND")]
    command: Option<String>,
}

impl RecordsArgs {
    /// The record directory, which must exist.
    fn data_dir(&self) -> Result<PathBuf> {
        let dir = self.data_dir.clone().unwrap_or_else(|| callgate::config::DEFAULT_DATA_DIR.into());
        if !dir.is_dir() {
            anyhow::bail!(
                "no record directory `{}`: `callgate serve` writes records there; pass --data-dir DIR",
                dir.display()
            );
        }
        Ok(dir)
    }

    /// The filter of these flags (decision, source and limit: none).
    fn filter(&self) -> Result<EventFilter> {
        let since = self
            .since
            .as_deref()
            .map(callgate::duration::parse)
            .transpose()
            .map_err(|m| anyhow::anyhow!("--since: {m}"))?;
        let until = self
            .until
            .as_deref()
            .map(|text| match humantime::parse_rfc3339_weak(text) {
                Ok(time) => Ok(time),
                Err(_) => callgate::duration::parse(text)
                    .ok()
                    .and_then(|d| std::time::SystemTime::now().checked_sub(d))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--until: `{text}` is neither a duration (1h) nor an RFC 3339 time")
                    }),
            })
            .transpose()?;
        Ok(EventFilter {
            since,
            until,
            user: self.user.clone(),
            command: self.command.clone(),
            ..EventFilter::default()
        })
    }
}

#[derive(clap::Args)]
struct PoliciesArg {
    /// Policy directory [default: ./policies]
    #[arg(long, env = "CALLGATE_POLICIES", value_name = "DIR")]
    policies: Option<PathBuf>,
}

impl PoliciesArg {
    fn dir(&self) -> PathBuf {
        self.policies.clone().unwrap_or_else(|| DEFAULT_POLICIES.into())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, settings } => serve(config.as_deref(), *settings),
        Command::Check { policies, command, events } => check(&policies.dir(), command.as_deref(), &events),
        Command::Validate { policies, strict } => validate(&policies.dir(), strict),
        Command::Test { policies } => test(&policies.dir()),
        Command::Schema => schema(),
        Command::Events { records, decision, source, limit, follow } => {
            events(&records, decision, source, limit.unwrap_or(0), follow)
        }
        Command::Replay { policies, records, format, fail_on, max_changes, write_cases, max_cases } => {
            let gate = Gate { fail_on, max_changes };
            let cases = write_cases.map(|file| (file, max_cases));
            // Exit 1 is the gate's; a replay that cannot run at all is 2.
            return replay(&policies, &records, format, &gate, cases).unwrap_or_else(|err| {
                eprintln!("callgate: {err:#}");
                ExitCode::from(2)
            });
        }
    };
    match result {
        Ok(code) => code,
        // A closed stdout (`callgate validate | head -1`) is the reader's choice, not an error.
        Err(err)
            if err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("callgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_file: Option<&Path>, settings: Settings) -> Result<ExitCode> {
    let file = match config_file {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let config = settings.or(file).resolve()?;
    init_logging(config.log_format);
    // Before anything records a metric.
    let metrics = server::install_metrics().context("cannot install the metrics recorder")?;

    let store = PolicyStore::open(&config.policies)
        .map_err(|errors| anyhow::anyhow!("the policy set did not load:\n{errors}"))?;
    let set = store.current();
    if set.rule_count() == 0 {
        tracing::warn!(dir = %config.policies.display(), "the policy set has no rules: every callback gets the default answer");
    }
    server::warn_about(&config);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // The Redis clients bind to the runtime they are made in.
    let state = {
        let _in_runtime = runtime.enter();
        Arc::new(server::State::from_config(&config, store, Some(metrics))?)
    };

    runtime.block_on(async {
        let bound = server::bind(&config).await?;
        // Tests and scripts wait for this line; a closed stdout must not stop the server.
        let _ = writeln!(
            std::io::stdout(),
            "callgate serving callbacks on http://{} and admin on http://{}; policy version {} ({} rules)",
            bound.callbacks_addr,
            bound.admin_addr,
            set.version(),
            set.rule_count()
        );
        drop(set);
        spawn_sighup_reload(state.policies.clone())?;
        server::serve(bound, state, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn spawn_sighup_reload(store: Arc<PolicyStore>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading policies");
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    });
    Ok(())
}

/// SIGTERM (what orchestrators send) drains first; SIGINT (Ctrl-C at a terminal) stops at once.
async fn shutdown_signal() -> server::Stop {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM received");
            server::Stop::Drain
        }
        _ = int.recv() => {
            tracing::info!("SIGINT received");
            server::Stop::Now
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CALLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org).
    let is_colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(is_colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(dir: &Path) -> Result<policy::PolicySet> {
    let set = policy::load_dir(dir).map_err(|errors| anyhow::anyhow!("the policy set did not load:\n{errors}"))?;
    print_warnings(&set)?;
    Ok(set)
}

/// The set's warnings on stderr, for commands whose stdout is their answer.
fn print_warnings(set: &policy::PolicySet) -> Result<()> {
    let mut err = std::io::stderr().lock();
    for warning in set.warnings() {
        writeln!(err, "{warning}")?;
    }
    Ok(())
}

fn validate(dir: &Path, is_strict: bool) -> Result<ExitCode> {
    // Written, not printed: a reader that stops early (`| head`) must end the run, not panic it.
    let mut out = std::io::stdout().lock();
    match policy::load_dir(dir) {
        Ok(set) => {
            let warnings = set.warnings();
            for warning in warnings {
                writeln!(out, "{warning}")?;
            }
            if is_strict && !warnings.is_empty() {
                writeln!(out, "{} warning(s); with --strict the policy set is refused", warnings.len())?;
                return Ok(ExitCode::FAILURE);
            }
            let counted = match warnings.len() {
                0 => String::new(),
                1 => "; 1 warning".to_string(),
                n => format!("; {n} warnings"),
            };
            writeln!(
                out,
                "ok: {} rules in {} files; version {}{counted}",
                set.rule_count(),
                set.files().len(),
                set.version()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                writeln!(out, "{e}")?;
            }
            writeln!(out, "{} error(s); the policy set would be refused", errors.0.len())?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// How `check` names a callback's command.
const CHECK_NAMING: CommandNaming = CommandNaming {
    body_key: "callbackCommand",
    outside: "--command",
    how: "give the body a `callbackCommand`, or pass --command",
};

fn check(dir: &Path, command: Option<&str>, events: &[PathBuf]) -> Result<ExitCode> {
    let set = load(dir)?;
    let mut out = std::io::stdout().lock();
    for path in events {
        let text = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let body: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&text).with_context(|| format!("`{}` is not a JSON object", path.display()))?;
        // --command decides the body as another command: the body's own is then not asked.
        let command = match command {
            Some(c) => resolve_command(&CHECK_NAMING, Some(c), None),
            None => resolve_command(&CHECK_NAMING, None, body.get(CHECK_NAMING.body_key)),
        }
        .with_context(|| format!("`{}`", path.display()))?;
        let event = Event::offline(command.clone(), body);
        let (decision, trace) = set.explain(&event, &Default::default());
        let by = decision.rule.as_deref().map_or("the default".to_string(), |r| format!("rule `{r}`"));
        match &decision.outcome {
            Outcome::Allow | Outcome::Discard => {
                writeln!(out, "{}: {command}: {}, by {by}", path.display(), decision.outcome.as_str())?
            }
            Outcome::Deny(r) => {
                let code = r.code_for(event.code_family());
                writeln!(out, "{}: {command}: deny, by {by}: errCode {code} {:?}", path.display(), r.message)?
            }
        }
        for step in &trace {
            let cap = step.cap.map_or(String::new(), |(count, max)| format!("  (cap {count}/{max} in window)"));
            writeln!(out, "  {:<12} {:<40} {}{cap}", step.step.as_str(), step.rule, step.at)?;
        }
        for hit in &decision.dry_run {
            writeln!(out, "  dry run: rule `{}` would {}", hit.rule, hit.outcome.as_str())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn test(dir: &Path) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let set = match policy::load_dir(dir) {
        Ok(set) => set,
        Err(errors) => {
            for e in &errors.0 {
                writeln!(out, "{e}")?;
            }
            writeln!(out, "{} error(s); the policy set did not load, so no test was run", errors.0.len())?;
            return Ok(ExitCode::FAILURE);
        }
    };
    print_warnings(&set)?;
    let run = match policy::run_cases(&set, dir) {
        Ok(run) => run,
        Err(errors) => {
            for e in &errors {
                writeln!(out, "{e}")?;
            }
            writeln!(out, "{} error(s) in the test files; no test was run", errors.len())?;
            return Ok(ExitCode::FAILURE);
        }
    };
    if run.files.is_empty() {
        let cases_dir = dir.join(policy::CASES_DIR);
        writeln!(out, "no test files in `{}`; add *.yaml files of cases (README: Policy tests)", cases_dir.display())?;
    }
    for report in &run.reports {
        let Some(failure) = &report.failure else { continue };
        writeln!(out, "{}: test `{}`: {failure}", report.at, report.name)?;
        for step in &report.trace {
            let cap = step.cap.map_or(String::new(), |(count, max)| format!("  (cap {count}/{max} in window)"));
            writeln!(out, "  {:<12} {:<40} {}{cap}", step.step.as_str(), step.rule, step.at)?;
        }
        for hit in &report.decision.dry_run {
            writeln!(out, "  dry run: rule `{}` would {}", hit.rule, hit.outcome.as_str())?;
        }
    }
    writeln!(out, "{} passed, {} failed", run.passed(), run.failed())?;
    Ok(if run.failed() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn schema() -> Result<ExitCode> {
    std::io::stdout().lock().write_all(policy::SCHEMA.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn events(
    records: &RecordsArgs,
    decision: Option<String>,
    source: Option<String>,
    limit: usize,
    follow: bool,
) -> Result<ExitCode> {
    /// How often `--follow` looks for new records.
    const POLL: Duration = Duration::from_millis(200);
    let mut filter = EventFilter { decision, source, limit, ..records.filter()? };
    let data_dir = records.data_dir()?;
    let (mut lines, mut cursor) = record::query_after(&data_dir, &filter, &record::Cursor::default())?;
    // What is written from now on is printed whole: --limit bounds only the records before.
    filter.limit = 0;
    loop {
        let mut out = std::io::stdout().lock();
        for line in &lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(POLL);
        (lines, cursor) = record::query_after(&data_dir, &filter, &cursor)?;
    }
}

/// What turns a replay into exit code 1: `--fail-on` and `--max-changes`.
struct Gate {
    fail_on: Vec<FailOn>,
    max_changes: Option<u64>,
}

fn replay(
    dir: &Path,
    records: &RecordsArgs,
    format: ReplayFormat,
    gate: &Gate,
    cases: Option<(PathBuf, usize)>,
) -> Result<ExitCode> {
    let set = load(dir)?;
    let filter = records.filter()?;
    let data_dir = records.data_dir()?;
    let mut picker = cases.as_ref().map(|&(_, max)| CasePicker::new(max));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written = Ok(());
    let report = callgate::replay::replay(&data_dir, &set, &filter, picker.as_mut(), |change| {
        if matches!(format, ReplayFormat::Jsonl) && written.is_ok() {
            written = serde_json::to_writer(&mut out, change)
                .map_err(anyhow::Error::from)
                .and_then(|()| writeln!(out).map_err(anyhow::Error::from));
        }
    })?;
    written?;
    match format {
        ReplayFormat::Text => write!(out, "{}", report.to_text())?,
        ReplayFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
        ReplayFormat::Jsonl => {}
    }
    out.flush()?;
    if let (Some(picker), Some((file, _))) = (picker, &cases) {
        let w = picker.write(file, &report)?;
        // On stderr: stdout is the report, which may be JSON.
        eprintln!(
            "callgate replay: wrote {} case(s) to {} ({} pinning a rule, {} changed, {} other)",
            w.written,
            file.display(),
            w.pins,
            w.changed,
            w.others
        );
        if let Some(problem) = &w.first_problem {
            eprintln!(
                "callgate replay: {} callback(s) left out: their case does not reproduce the replay's decision offline; first: {problem}",
                w.unreproduced
            );
        }
    }
    let reasons = report.trips(&gate.fail_on, gate.max_changes);
    for reason in &reasons {
        eprintln!("callgate replay: {reason}");
    }
    Ok(if reasons.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
