//! Invoice payment state is deferred to memory and checkpointed; the journal is the truth (`engine/journal.rs`).
//! A daemon killed in the middle of a large import, during appends or halfway through a checkpoint, restarts to
//! exactly the balances a clean import gives, and the file re-imported adds nothing.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{issue_invoice, one_line, Daemon, Setup, TOKEN};

/// Invoices the statement pays; every fourth is small enough to be paid in full early in the file.
const INVOICES: usize = 24;
/// Lines of the statement: enough that a kill lands while it is being committed.
const LINES: usize = 8_000;

/// The statement, and per invoice what a clean import leaves paid (in cents) and how many lines pay it.
struct Statement {
    csv: String,
    paid: Vec<i64>,
    lines: Vec<usize>,
}

fn total_cents(k: usize) -> i64 {
    if k.is_multiple_of(4) {
        50
    } else {
        100_000
    }
}

/// Each line pays 0.01-0.07 of an invoice named by its number, from its customer (account `Journal <k>`); a small invoice that is paid in full passes its lines
/// to the next (large) one, so every line is allocated and nothing is overpaid.
fn statement(numbers: &[String]) -> Statement {
    let mut csv = String::from("Date,Amount,Currency,Counterparty,Description,Transaction Id\n");
    let mut paid = vec![0i64; INVOICES];
    let mut lines = vec![0usize; INVOICES];
    for i in 0..LINES {
        let mut k = i % INVOICES;
        if paid[k] == total_cents(k) {
            k += 1;
        }
        let cents = (1 + i as i64 % 7).min(total_cents(k) - paid[k]);
        paid[k] += cents;
        lines[k] += 1;
        csv.push_str(&format!(
            "2026-03-05,{}.{:02},EUR,Journal {k},payment {} thanks,J{i}\n",
            cents / 100,
            cents % 100,
            numbers[k]
        ));
    }
    Statement { csv, paid, lines }
}

fn seeded(config: &str) -> (Daemon, Vec<Value>, Statement) {
    let d = Daemon::start(Setup {
        plugins: vec!["bank-csv"],
        config: format!("[imports]\nstream_above_kib = 0\n{config}"),
    });
    let invoices: Vec<Value> = (0..INVOICES)
        .map(|k| {
            let amount = format!("{}.{:02}", total_cents(k) / 100, total_cents(k) % 100);
            issue_invoice(&d, &format!("Journal {k}"), one_line(&amount))
        })
        .collect();
    let numbers: Vec<String> = invoices
        .iter()
        .map(|i| i["number"].as_str().unwrap().to_string())
        .collect();
    let statement = statement(&numbers);
    (d, invoices, statement)
}

/// Upload the statement in a thread (the daemon may die before it answers).
fn upload(d: &Daemon, csv: &str) -> std::thread::JoinHandle<reqwest::Result<u16>> {
    let url = d.url("/v1/imports?name=statement.csv&plugin=bank-csv");
    let csv = csv.to_string();
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .and_then(|c| c.post(url).bearer_auth(TOKEN).body(csv).send())
            .map(|r| r.status().as_u16())
    })
}

fn payment_exists(d: &Daemon, n: usize) -> bool {
    d.call("GET", &format!("/v1/payments/pay_{n:08}"), None).0 == 200
}

/// After the restart the daemon finishes the upload by itself; then every invoice is as a clean import leaves it, and
/// the file imported again adds nothing.
fn finished_as_a_clean_import(d: &Daemon, invoices: &[Value], statement: &Statement) {
    let import = d.eventually_within(
        "the import to be finished",
        Duration::from_secs(300),
        || {
            let v = d.ok("GET", "/v1/imports", None);
            (v["items"][0]["status"] == "finished").then(|| v["items"][0].clone())
        },
    );
    assert_eq!(
        import["counts"]["new"], LINES,
        "every line counted once: {import}"
    );
    assert_eq!(import["counts"]["review"], 0, "{import}");
    // `settled check` recomputes every balance from the journal and compares it with what the daemon serves.
    let r = crate::harness::check(d, &["--online"]);
    assert!(
        r.status.code() == Some(0) && r.stdout.contains(": no differences"),
        "{r}"
    );
    for (k, inv) in invoices.iter().enumerate() {
        let v = crate::harness::invoice(d, inv);
        let paid = statement.paid[k];
        let expected = format!("{}.{:02}", paid / 100, paid % 100);
        assert_eq!(v["amount_paid"], expected.as_str(), "invoice {k}: {v}");
        let status = if paid == total_cents(k) {
            "paid"
        } else {
            "partially_paid"
        };
        assert_eq!(v["payment_status"], status, "invoice {k}: {v}");
        let allocations = v["allocations"].as_array().map_or(0, Vec::len);
        assert_eq!(
            allocations, statement.lines[k],
            "invoice {k}: each line once"
        );
    }
    // The open-invoice index agrees: a payment naming a paid invoice goes to review, one naming an open one matches.
    let open = d.ok("GET", "/v1/invoices?status=partially_paid&limit=1000", None);
    let open = open["items"].as_array().map_or(0, Vec::len);
    assert_eq!(open, INVOICES - INVOICES / 4, "open invoices listed");
    let again = upload(d, &statement.csv)
        .join()
        .expect("upload")
        .expect("answered");
    assert_eq!(again, 200);
    let imports = d.ok("GET", "/v1/imports", None);
    let second = imports["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] != import["id"])
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&second["counts"]["new"], &second["counts"]["duplicates"]),
        (&Value::from(0), &Value::from(LINES)),
        "the re-imported file adds nothing: {second}"
    );
    let k = 1;
    let v = crate::harness::invoice(d, &invoices[k]);
    let paid = statement.paid[k];
    assert_eq!(
        v["amount_paid"],
        format!("{}.{:02}", paid / 100, paid % 100).as_str()
    );
}

#[test]
fn a_daemon_killed_during_the_appends_of_a_large_import_restarts_to_the_balances_of_a_clean_import()
{
    // No checkpoint during the import: every invoice change is in memory only when the kill lands.
    let (mut d, invoices, statement) =
        seeded("[journal]\ncheckpoint_dirty = 1000000\ncheckpoint_every_secs = 3600\n");
    let upload = upload(&d, &statement.csv);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !payment_exists(&d, LINES / 4) {
        assert!(
            Instant::now() < deadline,
            "nothing was committed\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    let answered = upload.join().expect("upload thread");
    assert!(
        answered.is_err(),
        "the upload was answered ({answered:?}) before the kill"
    );
    d.spawn();
    finished_as_a_clean_import(&d, &invoices, &statement);
}

#[test]
fn a_daemon_that_dies_halfway_through_a_checkpoint_restarts_to_the_balances_of_a_clean_import() {
    // A checkpoint once 40 keys wait; the test hook aborts the process after 15 keys of the first one.
    let (mut d, invoices, statement) = seeded("[journal]\ncheckpoint_dirty = 40\n");
    d.terminate();
    d.env = vec![("SETTLED_TEST_ABORT_CHECKPOINT_AFTER".into(), "15".into())];
    d.spawn();
    let upload = upload(&d, &statement.csv);
    let mut child = d.child.take().expect("running");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the checkpoint hook did not fire\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status}");
    assert!(
        d.log_text()
            .contains("aborting in the middle of a checkpoint"),
        "{}",
        d.log_text()
    );
    assert!(upload.join().expect("upload thread").is_err());
    d.env.clear();
    d.spawn();
    finished_as_a_clean_import(&d, &invoices, &statement);
}
