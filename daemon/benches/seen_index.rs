//! Issue 14's dedupe layout: `seen` keys in `S/` blocks found through an in-memory fingerprint index.
//!
//! Run: `cargo bench -p settled --bench seen_index` (`-- --keys N`, default 1,000,000; `--no-restore` skips the backup
//! rows). Writes N bank-line keys in write sets of 250 (as a bulk import does), then measures the index's memory, the
//! time to build it when the store is opened again (its share of a cold start), look-ups of keys that are new and of keys
//! already seen, and restoring the same keys from a schema 3 backup and from a schema 2 one (which converts them).
//! Prints a markdown report on stdout.

#![allow(clippy::float_arithmetic)] // timings and rates; no money is computed here

mod common;

use std::time::Instant;

use settled::store::{Store, StoreOptions};

/// A bank line's dedupe key, as `ingest` makes it: `pay:<plugin>:<external id>`.
fn key(n: usize) -> String {
    format!(
        "pay:bank-csv:2026-11-27-{n:09}-REF{:08x}",
        n.wrapping_mul(2_654_435_761)
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let keys = common::arg("--keys", 1_000_000);
    let restore = !std::env::args().any(|a| a == "--no-restore");
    let dir = common::bench_tempdir().expect("tempdir");
    let data = dir.path().join("data");
    println!("## seen index, {keys} keys\n");
    println!("machine: {}\n", common::machine());

    let store = Store::open(&data, &StoreOptions::default()).expect("open");
    let t = Instant::now();
    for start in (0..keys).step_by(250) {
        let mut ws = store.begin();
        for n in start..(start + 250).min(keys) {
            ws.seen(
                &key(n),
                &serde_json::json!({"payment_id": format!("pay_{n:08}")}),
            );
        }
        store.apply(ws).expect("apply");
    }
    store.flush().expect("flush");
    let write = t.elapsed().as_secs_f64();
    drop(store);

    let before = rss_kib();
    let t = Instant::now();
    let store = Store::open(&data, &StoreOptions::default()).expect("reopen");
    let open = t.elapsed().as_secs_f64();
    let after = rss_kib();
    let (entries, bytes) = store.seen_index_size().expect("size");

    let probes = 100_000.min(keys);
    let t = Instant::now();
    for n in 0..probes {
        assert!(store.seen(&key(keys + n)).expect("seen").is_none());
    }
    let miss = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for n in 0..probes {
        assert!(store.seen(&key(n)).expect("seen").is_some());
    }
    let hit = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert!(store.verify_seen().expect("verify").is_empty());
    let verify = t.elapsed().as_secs_f64();

    println!("| what | figure |");
    println!("|---|---|");
    println!(
        "| write {keys} keys, write sets of 250, then flush | {write:.2} s ({:.0} keys/s) |",
        keys as f64 / write
    );
    println!("| open the store again (sled + building the index) | {open:.3} s |");
    println!(
        "| index: {entries} entries, heap | {:.1} MiB ({:.1} bytes a key) |",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / entries.max(1) as f64
    );
    println!(
        "| process RSS before / after opening | {before} / {after} KiB (+{} KiB, sled included) |",
        after.saturating_sub(before)
    );
    println!(
        "| look-up of a new key (no store read) | {:.2} µs |",
        miss * 1e6 / probes as f64
    );
    println!(
        "| look-up of a seen key, in write order (block cache) | {:.2} µs |",
        hit * 1e6 / probes as f64
    );
    println!("| `Store::verify_seen` | {verify:.2} s |");

    if restore {
        let backup = dir.path().join("v3.jsonl");
        settled::store::backup_to(&store, &backup).expect("backup");
        drop(store);
        let text = std::fs::read_to_string(&backup).expect("read backup");
        let mut v2 = String::new();
        for line in text.lines() {
            let mut row: serde_json::Value = serde_json::from_str(line).expect("line");
            if row["format"] == "settled-backup" {
                row["schema"] = serde_json::json!(2);
            } else if row["k"] == "m/schema" {
                row["v"] = serde_json::json!(2);
            } else if row["k"].as_str().is_some_and(|k| k.starts_with("S/")) {
                for pair in row["v"].as_array().expect("block") {
                    let k = format!("s/{}", pair[0].as_str().expect("key"));
                    v2.push_str(&format!("{}\n", serde_json::json!({"k": k, "v": pair[1]})));
                }
                continue;
            }
            v2.push_str(&format!("{row}\n"));
        }
        drop(text);
        let old = dir.path().join("v2.jsonl");
        std::fs::write(&old, v2).expect("write v2 backup");
        for (name, file) in [("schema 3", &backup), ("schema 2 (converted)", &old)] {
            let target = dir.path().join(format!("restored-{}", &name[7..8]));
            let store = Store::open(&target, &StoreOptions::default()).expect("open");
            let t = Instant::now();
            settled::store::restore_from(&store, file).expect("restore");
            println!(
                "| restore a {name} backup of the keys | {:.2} s |",
                t.elapsed().as_secs_f64()
            );
            assert!(store.seen(&key(keys - 1)).expect("seen").is_some());
        }
    }
    println!("\nload average at the end: {}", common::loadavg());
}
