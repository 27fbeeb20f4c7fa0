//! Mail intake benchmark (issue 11): a backlog of enquiry mails in one IMAP folder of a private Dovecot drained into leads
//! by the release `settled` binary with the `mail-lead` plugin (every batch committed durably), with the daemon's resident
//! memory sampled while it drains; then single messages delivered while settled idles, timed until their lead is committed.
//!
//! Run: `cargo build --release --workspace && cargo bench -p settled-e2e --bench mail_intake -- [--messages 10000] [--idle 30]
//! [--very-dirty-syncs]`.
//! Needs `dovecot-imapd` and the `vmail` user (`tests/run --install-only`). Prints a markdown table.

// The e2e harness and the Dovecot helper, shared with the tests; the bench uses part of them.
#![allow(dead_code)]

#[path = "../tests/e2e/dovecot.rs"]
mod dovecot;
#[path = "../tests/e2e/harness.rs"]
mod harness;

use std::io::Write;
use std::time::{Duration, Instant};

use dovecot::{enquiry, Dovecot, PASSWORD};
use harness::{Daemon, Setup};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resident memory of a process and its children (the plugin-host processes), in KiB.
fn rss_kib(pid: u32) -> u64 {
    let own = |pid: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    let pid = pid.to_string();
    let children: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .map(|child| own(&child))
                .sum()
        })
        .unwrap_or(0);
    own(&pid) + children
}

fn mailbox(d: &Daemon) -> serde_json::Value {
    let plugins = d.ok("GET", "/v1/plugins", None);
    plugins["mailboxes"][0].clone()
}

fn committed(m: &serde_json::Value) -> u64 {
    ["seen", "duplicates", "not_mine", "failed"]
        .iter()
        .map(|k| m[k].as_u64().unwrap_or(0))
        .sum()
}

fn main() {
    let messages = arg("--messages", 10_000);
    let idle_rounds = arg("--idle", 30);
    // Dovecot rescans a Maildir's cur/ when another process (dovecot-lda) delivered into it: in a folder of 10,000
    // messages that took 1.6 s per new message here. `maildir_very_dirty_syncs` (for servers where only Dovecot
    // touches the Maildir) scans only when a message cannot be found otherwise; README's mailbox section says so.
    // It is set for the IDLE part only: the backlog is written into new/ behind Dovecot's back, which it must not see.
    let very_dirty = flag("--very-dirty-syncs");
    let mut dovecot = Dovecot::start();
    // One delivery makes Dovecot create the Maildir; the backlog is then written straight into new/, as a local
    // delivery agent would, and indexed by Dovecot at the first SELECT.
    dovecot.deliver(&enquiry("first@bench.example", "bench-0", "Enquiry 0"));
    let new = dovecot.maildir().join("new");
    let filled = Instant::now();
    for i in 1..messages {
        let text = enquiry(
            &format!("buyer{i}@bench.example"),
            &format!("bench-{i}"),
            &format!("Enquiry {i}"),
        );
        std::fs::write(
            new.join(format!("{i}.M{i}P1.bench")),
            text.replace('\n', "\r\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let chown = std::process::Command::new("chown")
        .args(["-R", "vmail:vmail"])
        .arg(dovecot.maildir())
        .status()
        .unwrap_or_else(|e| panic!("chown: {e}"));
    assert!(chown.success());
    eprintln!("backlog of {messages} written in {:?}", filled.elapsed());
    let password = dovecot.dir.path().join("imap-password");
    std::fs::write(&password, PASSWORD).unwrap_or_else(|e| panic!("{e}"));
    let load_before = loadavg();
    let started = Instant::now();
    let d = Daemon::start(Setup {
        plugins: vec!["mail-lead"],
        config: dovecot.connector("bench-mail", &password, ""),
    });
    let pid = d.child.as_ref().map(|c| c.id()).unwrap_or_default();
    let ready = started.elapsed();
    let mut rss = Vec::new();
    let drain_start = Instant::now();
    let mut first_at = None;
    loop {
        let m = mailbox(&d);
        let n = committed(&m);
        if n > 0 && first_at.is_none() {
            first_at = Some(drain_start.elapsed());
        }
        rss.push((n, rss_kib(pid)));
        if n >= messages as u64 {
            break;
        }
        assert!(
            drain_start.elapsed() < Duration::from_secs(1800),
            "drain stuck at {n}: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = drain_start.elapsed();
    let load_after_drain = loadavg();
    let m = mailbox(&d);
    assert_eq!(m["seen"].as_u64(), Some(messages as u64), "{m}");
    let rate = messages as u128 * 1000 / drained.as_millis().max(1);
    // Where the drain's time went, summed over its batches (the daemon logs each batch's steps).
    let batches: Vec<IdleRound> = d
        .log_text()
        .lines()
        .filter(|l| l.contains("mail batch committed"))
        .map(|l| IdleRound::from_log(Duration::ZERO, l))
        .collect();
    let drain_steps = step_summary(&batches, |ms| ms.iter().sum::<u128>());
    let quarter = |q: usize| rss.get(rss.len() * q / 4).map(|r| r.1).unwrap_or(0);
    // IDLE: wait until the mailbox idles, then deliver one message at a time and time it to its commit. The commit is
    // seen in the daemon's log (`mail batch committed`, written once the batch is durable), read from the file every
    // millisecond: polling the API that often would take CPU from the daemon being measured.
    if very_dirty {
        dovecot.stop();
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(dovecot.dir.path().join("dovecot.conf"))
            .unwrap_or_else(|e| panic!("dovecot config: {e}"));
        writeln!(config, "maildir_very_dirty_syncs = yes").unwrap_or_else(|e| panic!("{e}"));
        dovecot.run_master();
    }
    d.eventually("idle", || (mailbox(&d)["state"] == "idle").then_some(()));
    let mut rounds: Vec<IdleRound> = Vec::new();
    for round in 0..idle_rounds {
        let seen = d.log_text().len();
        let text = enquiry(
            &format!("idle{round}@bench.example"),
            &format!("idle-{round}"),
            "Idle",
        );
        // dovecot-lda returns once the message is in the folder: the clock starts then.
        dovecot.deliver(&text);
        let delivered = Instant::now();
        let line = loop {
            let log = d.log_text();
            if let Some(line) = log
                .get(seen..)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("mail batch committed"))
            {
                break line.to_string();
            }
            assert!(
                delivered.elapsed() < Duration::from_secs(30),
                "idle message {round} not committed"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        rounds.push(IdleRound::from_log(delivered.elapsed(), &line));
        std::thread::sleep(Duration::from_millis(200));
    }
    let latencies: Vec<Duration> = rounds.iter().map(|r| r.total).collect();
    println!("| figure | value |\n|---|---|");
    println!(
        "| backlog | {messages} enquiry mails in INBOX (Dovecot {}, plain IMAP on loopback{}) |",
        dovecot_version(),
        if very_dirty {
            "; maildir_very_dirty_syncs = yes for the IDLE part"
        } else {
            ""
        }
    );
    println!("| daemon start to ready | {} ms |", ready.as_millis());
    println!(
        "| first batch committed after | {} ms |",
        first_at.unwrap_or_default().as_millis()
    );
    println!(
        "| drain (ready to last lead committed) | {} ms |",
        drained.as_millis()
    );
    println!("| messages/s end to end | {rate} |");
    println!(
        "| drain: {} batches, time per step summed | {drain_steps} |",
        batches.len()
    );
    println!(
        "| RSS daemon + plugin host, KiB (start / 25% / 50% / 75% / end of drain, max) | {} / {} / {} / {} / {} / {} |",
        rss.first().map(|r| r.1).unwrap_or(0),
        quarter(1),
        quarter(2),
        quarter(3),
        rss.last().map(|r| r.1).unwrap_or(0),
        rss.iter().map(|r| r.1).max().unwrap_or(0)
    );
    let total: Vec<u128> = latencies.iter().map(Duration::as_millis).collect();
    println!(
        "| IDLE delivery -> lead committed ({} messages) | p50 {} ms, p90 {} ms, max {} ms |",
        total.len(),
        percentile(&total, 50),
        percentile(&total, 90),
        percentile(&total, 100)
    );
    // Where the time went: until the server's IDLE notification reached settled, then settled's own steps.
    let woke: Vec<u128> = rounds.iter().filter_map(|r| r.woke_to_durable).collect();
    let notified: Vec<u128> = rounds
        .iter()
        .filter_map(|r| Some(r.total.as_millis().saturating_sub(r.woke_to_durable?)))
        .collect();
    println!(
        "| of which delivery -> IDLE notification received (server) | p50 {} ms, p90 {} ms ({} rounds woken by IDLE) |",
        percentile(&notified, 50),
        percentile(&notified, 90),
        notified.len()
    );
    println!(
        "| of which notification -> lead durable (settled) | p50 {} ms, p90 {} ms |",
        percentile(&woke, 50),
        percentile(&woke, 90)
    );
    let steps = step_summary(&rounds, |ms| percentile(ms, 50));
    println!("| settled's steps, p50 | {steps} |");
    println!("| loadavg (1/5/15 min) | before {load_before}; after drain {load_after_drain}; at end {} |", loadavg());
}

/// One message delivered while the mailbox idled, as timed by the bench and told by the daemon's log line.
struct IdleRound {
    /// From `dovecot-lda` returning to the `mail batch committed` line.
    total: Duration,
    /// `since_idle_wake_ms`: from the IDLE notification to the batch being durable (absent when no IDLE woke it).
    woke_to_durable: Option<u128>,
    /// `steps_ms`: `search:1,list:0,...`.
    steps: Vec<(String, u128)>,
}

impl IdleRound {
    fn from_log(total: Duration, line: &str) -> IdleRound {
        // The log may be coloured: drop the escape sequences (`ESC [ ... m`) around names and values.
        let mut plain = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                plain.push(c);
            }
        }
        let line = plain.as_str();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        IdleRound {
            total,
            woke_to_durable: field("since_idle_wake_ms").and_then(|v| v.parse().ok()),
            steps: field("steps_ms")
                .unwrap_or_default()
                .split(',')
                .filter_map(|s| {
                    let (name, ms) = s.split_once(':')?;
                    Some((name.to_string(), ms.parse().ok()?))
                })
                .collect(),
        }
    }
}

/// Each step that batches name, with `figure` of its milliseconds: `search 3 ms, list 12 ms, ...`.
fn step_summary(rounds: &[IdleRound], figure: impl Fn(&[u128]) -> u128) -> String {
    let mut names: Vec<&str> = Vec::new();
    for r in rounds {
        for (step, _) in &r.steps {
            if !names.contains(&step.as_str()) {
                names.push(step);
            }
        }
    }
    names
        .iter()
        .map(|name| {
            let ms: Vec<u128> = rounds
                .iter()
                .filter_map(|r| r.steps.iter().find(|(s, _)| s == name).map(|(_, ms)| *ms))
                .collect();
            format!("{name} {} ms", figure(&ms))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The p-th percentile (nearest rank) of some figures; 0 when there are none.
fn percentile(values: &[u128], p: usize) -> u128 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn dovecot_version() -> String {
    std::process::Command::new("dovecot")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
