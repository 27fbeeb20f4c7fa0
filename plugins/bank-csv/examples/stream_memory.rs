//! Peak memory of a 1,000,000-line import through the parse-session glue, against one `parse` call:
//! `cargo run --release -p settled-plugin-bank-csv --example stream_memory [stream|parse] [LINES]`.
//!
//! `stream` generates the file 1 MiB at a time and sends each chunk through `parse_feed` as the host does
//! (JSON payload with base64 bytes in, JSON records out), so the whole file never exists in memory.
//! Prints the records, the time and the peak resident set (`VmHWM`).

use std::fmt::Write as _;
use std::time::Instant;

use base64::Engine as _;
use settled_plugin_api::sdk::export::Instance;
use settled_plugin_api::{ops, Plugin};
use settled_plugin_bank_csv::BankCsv;

const CHUNK: usize = 1024 * 1024;

fn row(csv: &mut String, i: usize) {
    let _ = writeln!(
        csv,
        "2026-{:02}-{:02},{}.{:02},EUR,Customer {},DE89370400440532{:06},\"Payment INV-2026-{:06} thanks\"",
        i % 12 + 1,
        i % 28 + 1,
        i % 5000,
        i % 100,
        i % 20_000,
        i % 1_000_000,
        i % 200_000
    );
}

const HEADER: &str = "Date,Amount,Currency,Counterparty,IBAN,Description\n";

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("{what}: {e}");
    std::process::exit(1)
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "stream".into());
    let lines: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let plugin = BankCsv::configure(serde_json::json!({"profile": "signed"}))
        .unwrap_or_else(|e| fail("settings", e));
    let instance = Instance::new(plugin);
    let start = Instant::now();
    let mut records = 0usize;
    let count = |reply: serde_json::Value| -> usize {
        let n = reply["records"].as_array().map_or(0, Vec::len);
        // The glue serializes every reply into the envelope the host reads.
        let bytes = serde_json::to_vec(&reply).unwrap_or_default();
        drop(bytes);
        n
    };
    if mode == "parse" {
        let mut csv = String::from(HEADER);
        for i in 0..lines {
            row(&mut csv, i);
        }
        let content = base64::engine::general_purpose::STANDARD.encode(csv.as_bytes());
        drop(csv);
        let reply = instance
            .dispatch(
                ops::PARSE,
                serde_json::json!({"name": "bench.csv", "content": content}),
            )
            .unwrap_or_else(|e| fail("parse", e));
        records += count(reply);
    } else {
        let begin = instance
            .dispatch(ops::PARSE_BEGIN, serde_json::json!({"name": "bench.csv"}))
            .unwrap_or_else(|e| fail("parse_begin", e));
        let session = begin["session"].as_u64().unwrap_or(0);
        let mut buf = String::from(HEADER);
        let feed = |chunk: &[u8]| {
            let payload = serde_json::json!({
                "session": session,
                "chunk": base64::engine::general_purpose::STANDARD.encode(chunk),
            });
            let reply = instance
                .dispatch(ops::PARSE_FEED, payload)
                .unwrap_or_else(|e| fail("parse_feed", e));
            count(reply)
        };
        for i in 0..lines {
            row(&mut buf, i);
            if buf.len() >= CHUNK {
                // Cut at exactly 1 MiB, mid-row, as a file reader would.
                let rest = buf.split_off(CHUNK);
                records += feed(buf.as_bytes());
                buf = rest;
            }
        }
        records += feed(buf.as_bytes());
        let end = instance
            .dispatch(ops::PARSE_END, serde_json::json!({"session": session}))
            .unwrap_or_else(|e| fail("parse_end", e));
        records += count(end);
    }
    println!(
        "{mode}: {records} records in {} ms, peak rss {} MiB",
        start.elapsed().as_millis(),
        peak_rss_kib() / 1024
    );
}
