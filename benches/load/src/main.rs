//! voicegate-load: the load bench. N concurrent bridged calls through a release voicegate to a
//! light echo bot, SIPp placing the calls, this program carrying their media and counting what
//! arrives both ways; and call setups per second to the echo number. See benches/load/README.md.

mod board;
mod bot;
mod caller;
mod gateway;
mod marker;
mod sipp;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

use crate::board::Board;
use crate::bot::Dialect;
use crate::caller::Callers;
use crate::gateway::Gateway;

#[derive(Parser)]
#[command(about = "Load bench for voicegate: bridged calls and call setups, measured")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N concurrent bridged calls to the bench's echo bot in one dialect.
    Calls {
        #[arg(long, default_value_t = 200)]
        calls: usize,
        #[arg(long, value_enum, default_value_t = DialectArg::Exotel)]
        dialect: DialectArg,
        #[command(flatten)]
        common: Common,
    },
    /// Call setups per second to the echo number.
    Setups {
        #[command(flatten)]
        common: Common,
    },
    /// The whole table: every --sizes for both dialects, then setups; --runs of each, medians.
    Table {
        /// Concurrent calls, comma-separated.
        #[arg(long, default_value = "200,500,1000", value_delimiter = ',')]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DialectArg {
    Exotel,
    Twilio,
}

impl From<DialectArg> for Dialect {
    fn from(d: DialectArg) -> Dialect {
        match d {
            DialectArg::Exotel => Dialect::Exotel,
            DialectArg::Twilio => Dialect::Twilio,
        }
    }
}

#[derive(Args, Clone)]
struct Common {
    /// The voicegate binary (default: the one next to this program).
    #[arg(long)]
    voicegate: Option<PathBuf>,
    /// New calls per second while the calls are placed.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Seconds CPU is measured over, once every call is up.
    #[arg(long, default_value_t = 20)]
    window_secs: u64,
    /// Call setups per second offered to the echo number, and for how many seconds.
    #[arg(long, default_value_t = 300)]
    setup_rate: u32,
    #[arg(long, default_value_t = 10)]
    setup_secs: u64,
    /// Where each run's files go (config, logs, SIPp's statistics); default: a temp folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Common {
    fn binary(&self) -> PathBuf {
        self.voicegate
            .clone()
            .unwrap_or_else(|| gateway::sibling_binary("voicegate"))
    }

    fn run_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let base = self.out.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("voicegate-load-{}", std::process::id()))
        });
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// What one run of bridged calls measured.
#[derive(Debug, Clone, Default)]
struct CallsResult {
    calls: usize,
    sipp: sipp::Totals,
    media_started: usize,
    up_sent: u64,
    up_delivered: u64,
    down_sent: u64,
    down_delivered: u64,
    cpu_percent: f64,
    /// The bench's own CPU (callers and bot) and SIPp's, over the same window.
    bench_cpu_percent: f64,
    sipp_cpu_percent: f64,
    rss: u64,
    idle_rss: u64,
    up_p50_us: u64,
    up_p99_us: u64,
    down_p50_us: u64,
    down_p99_us: u64,
    unaligned: u64,
    bad_frames: u64,
}

impl CallsResult {
    fn cpu_per_call(&self) -> f64 {
        self.cpu_percent / self.calls as f64
    }
    fn rss_per_call(&self) -> f64 {
        self.rss as f64 / self.calls as f64
    }
    fn added_rss_per_call(&self) -> f64 {
        self.rss.saturating_sub(self.idle_rss) as f64 / self.calls as f64
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Lets this process and its children (voicegate, SIPp) open a socket per call and more.
fn raise_open_files() {
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn wait_child(mut child: std::process::Child, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("sipp did not finish within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const WARMUP: Duration = Duration::from_secs(2);
/// Between the callers' stop and the first BYE: every echo counted comes back before it.
const STOP_MARGIN: Duration = Duration::from_secs(3);

async fn bridged_calls(
    calls: usize,
    dialect: Dialect,
    common: &Common,
    name: &str,
) -> anyhow::Result<CallsResult> {
    let dir = common.run_dir(name)?;
    let board = Arc::new(Board::new(calls));
    let bot_listener = TcpListener::bind("127.0.0.1:0").await?;
    let bot_port = bot_listener.local_addr()?.port();
    let bot = tokio::spawn(bot::serve(bot_listener, dialect, board.clone()));
    let gateway = Gateway::start(&common.binary(), &dir, bot_port, dialect, calls)?;
    let pid = gateway.pid();
    let (idle_rss, _) = gateway::memory(pid)?;

    let callers = Callers::bind(calls).await?;
    let mut media = callers.run(board.clone());
    let ramp = Duration::from_secs_f64(calls as f64 / f64::from(common.rate));
    let ramp_slack = Duration::from_secs(5);
    let window = Duration::from_secs(common.window_secs);
    let hold = ramp + ramp_slack + WARMUP + window + STOP_MARGIN;
    let ports = callers.ports();
    let started = Instant::now();
    let sipp = sipp::start(&sipp::Placement {
        dir: &dir,
        sip_port: gateway.sip_port,
        local_port: gateway::free_port()?,
        number: gateway::FLOW_NUMBER,
        rate: common.rate,
        limit: calls,
        calls,
        hold,
        media_ports: &ports,
    })?;

    while callers.started() < calls && started.elapsed() < ramp + ramp_slack {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let media_started = callers.started();
    eprintln!(
        "  {name}: {media_started}/{calls} calls have media after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(WARMUP).await;
    let me = std::process::id();
    let sipp_pid = sipp.id();
    let (cpu0, bench0, sipp0) = (
        gateway::cpu_time(pid)?,
        gateway::cpu_time(me)?,
        gateway::cpu_time(sipp_pid)?,
    );
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let (cpu1, bench1, sipp1) = (
        gateway::cpu_time(pid)?,
        gateway::cpu_time(me)?,
        gateway::cpu_time(sipp_pid)?,
    );
    let elapsed = t0.elapsed();
    let (rss, _) = gateway::memory(pid)?;
    if started.elapsed() + Duration::from_secs(1) > hold {
        eprintln!("  {name}: warning: the window reached the first hangups");
    }
    board.stop();

    wait_child(sipp, hold + ramp + Duration::from_secs(60)).await?;
    let bot_done = Instant::now();
    while board.counters.bot_open.load(Relaxed) > 0 && bot_done.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    media.abort_all();
    bot.abort();
    gateway.stop();

    let c = &board.counters;
    Ok(CallsResult {
        calls,
        sipp: sipp::totals(&dir)?,
        media_started,
        up_sent: c.up_sent.load(Relaxed),
        up_delivered: c.up_delivered.load(Relaxed),
        down_sent: c.down_sent.load(Relaxed),
        down_delivered: c.down_delivered.load(Relaxed),
        cpu_percent: 100.0 * (cpu1 - cpu0).as_secs_f64() / elapsed.as_secs_f64(),
        bench_cpu_percent: 100.0 * (bench1 - bench0).as_secs_f64() / elapsed.as_secs_f64(),
        sipp_cpu_percent: 100.0 * (sipp1 - sipp0).as_secs_f64() / elapsed.as_secs_f64(),
        rss,
        idle_rss,
        up_p50_us: board.up_latency.quantile_us(0.5).unwrap_or(0),
        up_p99_us: board.up_latency.quantile_us(0.99).unwrap_or(0),
        down_p50_us: board.down_latency.quantile_us(0.5).unwrap_or(0),
        down_p99_us: board.down_latency.quantile_us(0.99).unwrap_or(0),
        unaligned: c.unaligned.load(Relaxed),
        bad_frames: c.bot_bad_frames.load(Relaxed),
    })
}

/// What one run of call setups measured.
#[derive(Debug, Clone, Default)]
struct SetupsResult {
    offered_rate: u32,
    sipp: sipp::Totals,
    achieved_rate: f64,
    cpu_percent: f64,
}

async fn call_setups(common: &Common, name: &str) -> anyhow::Result<SetupsResult> {
    let dir = common.run_dir(name)?;
    let gateway = Gateway::start(&common.binary(), &dir, 9, Dialect::Exotel, 0)?;
    let pid = gateway.pid();
    let calls = common.setup_rate as usize * common.setup_secs as usize;
    let cpu0 = gateway::cpu_time(pid)?;
    let started = Instant::now();
    let sipp = sipp::start(&sipp::Placement {
        dir: &dir,
        sip_port: gateway.sip_port,
        local_port: gateway::free_port()?,
        number: gateway::ECHO_NUMBER,
        rate: common.setup_rate,
        limit: calls,
        calls,
        hold: Duration::ZERO,
        media_ports: &[],
    })?;
    wait_child(sipp, Duration::from_secs(common.setup_secs + 120)).await?;
    let elapsed = started.elapsed();
    let cpu = gateway::cpu_time(pid)? - cpu0;
    gateway.stop();
    let totals = sipp::totals(&dir)?;
    Ok(SetupsResult {
        offered_rate: common.setup_rate,
        sipp: totals,
        achieved_rate: totals.succeeded as f64 / elapsed.as_secs_f64(),
        cpu_percent: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn calls_header() {
    println!(
        "| load | calls ok / failed | frames up: sent, delivered | frames down: sent, delivered | CPU per call | RSS (per call; added per call) | added latency up p50 / p99 | down p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
}

/// One table row: the median of each figure over `runs`.
fn calls_row(label: &str, runs: &[CallsResult]) {
    let m = |f: &dyn Fn(&CallsResult) -> f64| median(runs.iter().map(f).collect());
    let up_sent = m(&|r| r.up_sent as f64);
    let down_sent = m(&|r| r.down_sent as f64);
    println!(
        "| {label} | {:.0} / {:.0} | {:.0}, {:.2} % | {:.0}, {:.2} % | {:.3} % | {:.1} MB ({:.0} KB; {:.0} KB) | {} / {} ms | {} / {} ms |",
        m(&|r| r.sipp.succeeded as f64),
        m(&|r| r.sipp.failed as f64 + (r.calls as u64).saturating_sub(r.sipp.succeeded + r.sipp.failed) as f64),
        up_sent,
        m(&|r| percent(r.up_delivered, r.up_sent)),
        down_sent,
        m(&|r| percent(r.down_delivered, r.down_sent)),
        m(&|r| r.cpu_per_call()),
        m(&|r| r.rss as f64) / 1e6,
        m(&|r| r.rss_per_call()) / 1e3,
        m(&|r| r.added_rss_per_call()) / 1e3,
        latency(m(&|r| r.up_p50_us as f64)),
        latency(m(&|r| r.up_p99_us as f64)),
        latency(m(&|r| r.down_p50_us as f64)),
        latency(m(&|r| r.down_p99_us as f64)),
    );
}

/// A latency in ms; the histogram's last bucket holds everything beyond it.
fn latency(us: f64) -> String {
    if us >= board::MAX_LATENCY_US as f64 {
        format!(">{:.0}", board::MAX_LATENCY_US as f64 / 1e3)
    } else {
        format!("{:.2}", us / 1e3)
    }
}

fn print_run(label: &str, r: &CallsResult) {
    eprintln!(
        "  {label}: sipp {}/{} ok, {} failed; media {} calls; up {}/{} ({:.3} %); down {}/{} ({:.3} %); CPU {:.1} % ({:.4} %/call; bench {:.0} %, SIPp {:.0} %); RSS {:.1} MB (idle {:.1} MB); up p50/p99 {}/{} µs; down p50/p99 {}/{} µs; unaligned {}; bad frames {}",
        r.sipp.succeeded, r.sipp.created, r.sipp.failed, r.media_started,
        r.up_delivered, r.up_sent, percent(r.up_delivered, r.up_sent),
        r.down_delivered, r.down_sent, percent(r.down_delivered, r.down_sent),
        r.cpu_percent, r.cpu_per_call(), r.bench_cpu_percent, r.sipp_cpu_percent, r.rss as f64 / 1e6, r.idle_rss as f64 / 1e6,
        r.up_p50_us, r.up_p99_us, r.down_p50_us, r.down_p99_us, r.unaligned, r.bad_frames,
    );
}

fn print_setups(runs: &[SetupsResult]) {
    let m = |f: &dyn Fn(&SetupsResult) -> f64| median(runs.iter().map(f).collect());
    println!();
    println!("| call setups to the echo number | offered | succeeded / failed | achieved | voicegate CPU |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} run(s), median | {} /s for {} calls | {:.0} / {:.0} | {:.0} /s | {:.0} % |",
        runs.len(),
        runs.first().map_or(0, |r| r.offered_rate),
        runs.first().map_or(0, |r| r.sipp.created),
        m(&|r| r.sipp.succeeded as f64),
        m(&|r| r.sipp.failed as f64),
        m(&|r| r.achieved_rate),
        m(&|r| r.cpu_percent),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_open_files();
    match cli.command {
        Command::Calls {
            calls,
            dialect,
            common,
        } => {
            let dialect = Dialect::from(dialect);
            let label = format!("{calls} calls, {}", dialect.name());
            let r = bridged_calls(
                calls,
                dialect,
                &common,
                &format!("{calls}-{}", dialect.name()),
            )
            .await?;
            print_run(&label, &r);
            calls_header();
            calls_row(&label, &[r]);
        }
        Command::Setups { common } => {
            let r = call_setups(&common, "setups").await?;
            print_setups(&[r]);
        }
        Command::Table {
            sizes,
            runs,
            common,
        } => {
            let mut rows = Vec::new();
            for dialect in [Dialect::Exotel, Dialect::Twilio] {
                for &calls in &sizes {
                    let label = format!("{calls} calls, {}", dialect.name());
                    let mut results = Vec::new();
                    for run in 1..=runs {
                        let name = format!("{calls}-{}-{run}", dialect.name());
                        let r = bridged_calls(calls, dialect, &common, &name)
                            .await
                            .with_context(|| format!("run {name}"))?;
                        print_run(&format!("{label}, run {run}"), &r);
                        results.push(r);
                    }
                    rows.push((label, results));
                }
            }
            let mut setups = Vec::new();
            for run in 1..=runs {
                let r = call_setups(&common, &format!("setups-{run}")).await?;
                eprintln!(
                    "  setups, run {run}: {}/{} ok, {} failed, {:.0}/s achieved",
                    r.sipp.succeeded, r.sipp.created, r.sipp.failed, r.achieved_rate
                );
                setups.push(r);
            }
            println!();
            println!("medians of {runs} run(s); CPU and RSS are voicegate's alone, from /proc");
            calls_header();
            for (label, results) in &rows {
                calls_row(label, results);
            }
            print_setups(&setups);
        }
    }
    Ok(())
}
