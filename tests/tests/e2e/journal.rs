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

/// Wait until the test hook `SETTLED_TEST_ABORT_CHECKPOINT_AFTER` has aborted the daemon in a checkpoint.
fn aborted_in_a_checkpoint(d: &mut Daemon, within: Duration) {
    let mut child = d.child.take().expect("running");
    let deadline = Instant::now() + within;
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
}

fn payment_exists(d: &Daemon, n: usize) -> bool {
    d.call("GET", &format!("/v1/payments/pay_{n:08}"), None).0 == 200
}

/// After the restart the daemon finishes the upload by itself; then every invoice is as a clean import leaves it, and
/// the file imported again adds nothing.
fn finished_as_a_clean_import(d: &Daemon, invoices: &[Value], statement: &Statement) {
    finished_as_a_clean_import_plus(d, invoices, statement, &[0; INVOICES]);
}

/// [`finished_as_a_clean_import`], with `by_hand[k]` payments of 1.00 allocated to invoice `k` through the API.
fn finished_as_a_clean_import_plus(
    d: &Daemon,
    invoices: &[Value],
    statement: &Statement,
    by_hand: &[usize; INVOICES],
) {
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
        let paid = statement.paid[k] + 100 * by_hand[k] as i64;
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
            allocations,
            statement.lines[k] + by_hand[k],
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
    let paid = statement.paid[k] + 100 * by_hand[k] as i64;
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
    aborted_in_a_checkpoint(&mut d, Duration::from_secs(300));
    assert!(upload.join().expect("upload thread").is_err());
    d.env.clear();
    d.spawn();
    finished_as_a_clean_import(&d, &invoices, &statement);
}

#[test]
fn checkpoints_running_beside_an_import_and_payments_entered_by_hand_leave_the_balances_of_a_clean_import_also_after_a_kill_9(
) {
    // A checkpoint starts on its own thread whenever 4 keys wait: with 24 invoices paid over and over, one runs beside
    // nearly every write set of the import. Meanwhile payments entered through the API write the same invoices
    // through; a checkpoint's older snapshot must never land over them.
    let (mut d, invoices, statement) = seeded("[journal]\ncheckpoint_dirty = 4\n");
    d.terminate();
    d.env = vec![("RUST_LOG".into(), "info,settled::engine=debug".into())];
    d.spawn();
    let upload = upload(&d, &statement.csv);
    let mut by_hand = [0usize; INVOICES];
    let deadline = Instant::now() + Duration::from_secs(300);
    while !payment_exists(&d, LINES / 10) {
        assert!(
            Instant::now() < deadline,
            "nothing was committed\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The large invoices only (1,000.00 each, never paid in full by the file), so the file's lines go where they would.
    for round in 0..3 {
        for k in (0..INVOICES).filter(|k| !k.is_multiple_of(4)) {
            let body = serde_json::json!({"amount": "1.00", "currency": "EUR",
                "external_id": format!("by-hand-{round}-{k}"),
                "allocations": [{"invoice_id": invoices[k]["id"]}]});
            let (status, reply) = d.call("POST", "/v1/payments", Some(body));
            assert_eq!(status, 201, "{reply}");
            by_hand[k] += 1;
        }
    }
    assert_eq!(
        upload.join().expect("upload thread").expect("answered"),
        200
    );
    let checkpoints = d
        .log_text()
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("checkpoint") && l.contains("written"))
        .count();
    assert!(
        checkpoints >= 10,
        "{checkpoints} checkpoints ran during the import"
    );
    d.kill9();
    d.spawn();
    finished_as_a_clean_import_plus(&d, &invoices, &statement, &by_hand);
}

#[test]
fn a_checkpoint_cut_short_after_an_invoice_but_before_its_index_rows_restarts_with_the_rows_rebuilt(
) {
    // A checkpoint writes the overlay in key order: every `e/invoice/` key before the `i/open-*` rows. Cut short
    // between the two, the store holds a paid invoice whose rows still list it as open; the restart must not trust them.
    let mut d = Daemon::start(Setup {
        plugins: vec![],
        config: "[journal]\ncheckpoint_every_secs = 1\ncheckpoint_dirty = 1000000\n".into(),
    });
    let inv = issue_invoice(&d, "Cut Short", one_line("120.00"));
    let number = inv["number"].as_str().unwrap().to_string();
    d.terminate();
    // The next checkpoint aborts the process after its first key, the invoice.
    d.env = vec![("SETTLED_TEST_ABORT_CHECKPOINT_AFTER".into(), "1".into())];
    d.spawn();
    // Reconciled by the number in its reference: the invoice and its rows are deferred writes.
    let (status, body) = d.call(
        "POST",
        "/v1/payments",
        Some(serde_json::json!({"amount": "120.00", "currency": "EUR", "reference": format!("invoice {number}")})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(crate::harness::invoice(&d, &inv)["payment_status"], "paid");
    aborted_in_a_checkpoint(&mut d, Duration::from_secs(60));
    d.env.clear();
    d.spawn();
    let v = crate::harness::invoice(&d, &inv);
    assert_eq!(
        (&v["payment_status"], &v["amount_paid"]),
        (&Value::from("paid"), &Value::from("120.00")),
        "{v}"
    );
    let r = crate::harness::check(&d, &["--online"]);
    assert!(
        r.status.code() == Some(0) && r.stdout.contains(": no differences"),
        "{r}"
    );
    // The paid invoice is not offered to reconciliation again: a second payment naming it goes to review.
    let (status, body) = d.call(
        "POST",
        "/v1/payments",
        Some(serde_json::json!({"amount": "120.00", "currency": "EUR", "reference": format!("invoice {number}"), "external_id": "second"})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["allocations"].as_array().map_or(0, Vec::len),
        0,
        "{body}"
    );
}
