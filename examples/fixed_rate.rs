//! A fixed-rate load generator for latency at a moderate load (bench/load.sh, issue 19): wrk
//! sends as fast as it can, so its percentiles are those of a saturated server; here requests
//! leave on a schedule, and each latency counts from when its request was due, not from when
//! it left (so a slow answer that delays the next request is counted, not hidden).
//!
//! Usage: `fixed_rate ADDR RATE SECONDS CONNS REQUESTS_FILE`. Each line of the requests file
//! is `PATH<TAB>BODY` (the body one line of JSON); requests rotate over the lines. Prints one
//! line: `fixed_rate sent N in S s (R/s): p50 … p90 … p99 … p99.9 … max … ms, E errors`.

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

struct Plan {
    addr: String,
    rate: f64,
    seconds: f64,
    conns: usize,
    requests: Vec<Vec<u8>>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plan = match parse(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("fixed_rate: {e}\nusage: fixed_rate ADDR RATE SECONDS CONNS REQUESTS_FILE");
            return ExitCode::FAILURE;
        }
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(run(plan))
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let [addr, rate, seconds, conns, file] = args else { return Err("five arguments expected".into()) };
    let number = |s: &str, what: &str| s.parse::<f64>().map_err(|_| format!("{what} `{s}` is not a number"));
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let requests: Vec<Vec<u8>> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(path, body)| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\noperationID: fixed-rate\r\nContent-Length: {}\r\n\r\n{body}\n",
                body.len() + 1
            )
            .into_bytes()
        })
        .collect();
    if requests.is_empty() {
        return Err(format!("{file}: no `PATH<TAB>BODY` lines"));
    }
    let conns = conns.parse::<usize>().map_err(|_| format!("CONNS `{conns}` is not a whole number"))?.max(1);
    Ok(Plan { addr: addr.clone(), rate: number(rate, "RATE")?, seconds: number(seconds, "SECONDS")?, conns, requests })
}

async fn run(plan: Plan) -> ExitCode {
    let total = (plan.rate * plan.seconds) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let plan = std::sync::Arc::new(plan);
    let mut tasks = Vec::new();
    for c in 0..plan.conns {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move { connection(&plan, c, total, start).await }));
    }
    let (mut latencies, mut errors) = (Vec::with_capacity(total), 0usize);
    for task in tasks {
        match task.await {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let took = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        latencies.get(i).map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    println!(
        "fixed_rate sent {} in {took:.1} s ({:.0}/s): p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms, {errors} errors",
        latencies.len(),
        latencies.len() as f64 / took,
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// One keep-alive connection sending requests `c`, `c + conns`, … each at its due time.
/// Returns the latencies (µs, from due time to the answer's last byte) and the error count.
async fn connection(plan: &Plan, c: usize, total: usize, start: Instant) -> (Vec<u64>, usize) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let Ok(stream) = TcpStream::connect(&plan.addr).await else { return (latencies, total / plan.conns) };
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    let mut i = c;
    while i < total {
        let due = start + Duration::from_secs_f64(i as f64 / plan.rate);
        tokio::time::sleep_until(due).await;
        let request = &plan.requests[i % plan.requests.len()];
        if stream.get_mut().write_all(request).await.is_err() || read_response(&mut stream).await.is_err() {
            errors += 1;
            break;
        }
        latencies.push(due.elapsed().as_micros() as u64);
        i += plan.conns;
    }
    (latencies, errors)
}

/// Reads one HTTP/1.1 response with a Content-Length body; an error for anything else.
async fn read_response(stream: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(bad("not 200"));
    }
    let mut length = None;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(bad("closed"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.ok_or_else(|| bad("no Content-Length"))?];
    stream.read_exact(&mut body).await?;
    Ok(())
}
