//! Times `parse` on a generated export: `cargo run --release -p settled-plugin-bank-csv --example parse_speed [LINES]`.

use std::fmt::Write as _;
use std::time::Instant;

use settled_plugin_bank_csv::{parse, Settings};

fn main() {
    let lines: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut csv = String::from("Date,Amount,Currency,Counterparty,IBAN,Description\n");
    for i in 0..lines {
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
    let settings = match Settings::from_json(serde_json::json!({"profile": "signed"})) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("settings: {e}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    match parse("bench.csv", csv.as_bytes(), &settings) {
        Ok(records) => {
            let millis = start.elapsed().as_millis().max(1);
            println!(
                "{} records from {} MB in {millis} ms: {} lines/s",
                records.len(),
                csv.len() / 1_000_000,
                records.len() as u128 * 1000 / millis
            );
        }
        Err(e) => {
            eprintln!("parse failed: {e}");
            std::process::exit(1);
        }
    }
}
