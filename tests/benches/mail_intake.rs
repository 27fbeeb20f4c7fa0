//! Mail intake benchmark (issue 11): a backlog of enquiry mails in one IMAP folder of a private Dovecot drained into leads
//! by the release `settled` binary with the `mail-lead` plugin (every batch committed durably), with the daemon's resident
//! memory sampled while it drains; then single messages delivered while settled idles, timed until their lead is committed.
//!
//! Run: `cargo build --release --workspace && cargo bench -p settled-e2e --bench mail_intake -- [--messages 10000] [--idle 30]`.
//! Needs `dovecot-imapd` and the `vmail` user (`tests/run --install-only`). Prints a markdown table.

// The e2e harness and the Dovecot helper, shared with the tests; the bench uses part of them.
#![allow(dead_code)]

#[path = "../tests/e2e/dovecot.rs"]
mod dovecot;
#[path = "../tests/e2e/harness.rs"]
mod harness;

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
    let dovecot = Dovecot::start();
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
    let quarter = |q: usize| rss.get(rss.len() * q / 4).map(|r| r.1).unwrap_or(0);
    // IDLE: wait until the mailbox idles, then deliver one message at a time and time it to its commit.
    d.eventually("idle", || (mailbox(&d)["state"] == "idle").then_some(()));
    let mut latencies = Vec::new();
    for round in 0..idle_rounds {
        let before = committed(&mailbox(&d));
        let text = enquiry(
            &format!("idle{round}@bench.example"),
            &format!("idle-{round}"),
            "Idle",
        );
        // dovecot-lda returns once the message is in the folder: the clock starts then.
        dovecot.deliver(&text);
        let delivered = Instant::now();
        loop {
            if committed(&mailbox(&d)) > before {
                latencies.push(delivered.elapsed());
                break;
            }
            assert!(
                delivered.elapsed() < Duration::from_secs(30),
                "idle message {round} not committed"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    latencies.sort();
    let pct = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!("| figure | value |\n|---|---|");
    println!(
        "| backlog | {messages} enquiry mails in INBOX (Dovecot {}, plain IMAP on loopback) |",
        dovecot_version()
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
        "| RSS daemon + plugin host, KiB (start / 25% / 50% / 75% / end of drain, max) | {} / {} / {} / {} / {} / {} |",
        rss.first().map(|r| r.1).unwrap_or(0),
        quarter(1),
        quarter(2),
        quarter(3),
        rss.last().map(|r| r.1).unwrap_or(0),
        rss.iter().map(|r| r.1).max().unwrap_or(0)
    );
    println!(
        "| IDLE delivery -> lead committed ({} messages) | p50 {} ms, p90 {} ms, max {} ms |",
        latencies.len(),
        pct(50).as_millis(),
        pct(90).as_millis(),
        latencies.last().copied().unwrap_or_default().as_millis()
    );
    println!("| loadavg (1/5/15 min) | before {load_before}; after drain {load_after_drain}; at end {} |", loadavg());
}

fn dovecot_version() -> String {
    std::process::Command::new("dovecot")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
