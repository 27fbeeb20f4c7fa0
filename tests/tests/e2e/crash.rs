//! `settled check` and `kill -9` during big imports: after every crash the store checks clean, the import finishes, and
//! re-importing the file counts nothing twice (the same totals as a clean import of the file into a fresh store).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    check, import_json, invoice, issue_invoice, one_line, pay, run, seed_open_invoices, settled,
    Daemon, Seeded, Setup, TOKEN,
};

/// Invoices per seeded customer (one order, invoiced line by line).
const PER_ACCOUNT: usize = 10;

/// `name` from the environment, else `default` (the defaults keep a debug build's run short; see README for 200k).
fn sized(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A deterministic pseudo-random sequence (same file every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// A bank CSV of `lines` lines: about 70% pay part of a seeded invoice (named by number), the rest come from unknown
/// payers; every line has its own transaction id.
fn statement(issued: &[Seeded], lines: usize) -> String {
    let mut csv = String::from("Date,Amount,Currency,Counterparty,Description,Transaction Id\n");
    let mut rng = Lcg(7);
    for i in 0..lines {
        let r = rng.next();
        let day = 1 + i % 28;
        if r % 10 < 7 {
            let inv = &issued[(rng.next() as usize) % issued.len()];
            let cents = 100 + rng.next() % 2000;
            csv.push_str(&format!(
                "2026-03-{day:02},{}.{:02},EUR,{},Invoice {},T{i}\n",
                cents / 100,
                cents % 100,
                inv.customer,
                inv.number
            ));
        } else {
            let cents = 100 + rng.next() % 500_000;
            csv.push_str(&format!(
                "2026-03-{day:02},{}.{:02},EUR,Unknown Payer {},transfer,T{i}\n",
                cents / 100,
                cents % 100,
                rng.next() % 50_000
            ));
        }
    }
    csv
}

fn setup() -> Setup {
    Setup {
        plugins: vec!["bank-csv"],
        // Stream (and commit 250 lines per write) whatever the size, as a large file does.
        config: "[imports]\nstream_above_kib = 0\n".into(),
    }
}

/// Upload the statement in a thread (the answer may never come: the daemon gets killed).
fn upload(d: &Daemon, csv: &str) -> std::thread::JoinHandle<Result<(u16, String), String>> {
    let url = d.url("/v1/imports?name=big.csv&plugin=bank-csv");
    let body = csv.to_string();
    std::thread::spawn(move || {
        let resp = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(1800))
            .build()
            .and_then(|c| c.post(url).bearer_auth(TOKEN).body(body).send())
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().unwrap_or_default()))
    })
}

/// The import record (the only import of the store, or the newest).
fn import_record(d: &Daemon) -> Option<Value> {
    let (status, v) = d.call("GET", "/v1/imports", None);
    (status == 200).then(|| v["items"].as_array()?.last().cloned())?
}

fn committed(d: &Daemon) -> u64 {
    import_record(d).map_or(0, |i| i["counts"]["records_read"].as_u64().unwrap_or(0))
}

/// Every item of a list endpoint, page by page.
fn all(d: &Daemon, collection: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = d.ok(
            "GET",
            &format!("/v1/{collection}?limit=1000&after={after}"),
            None,
        );
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let Some(last) = items.last() else { break };
        after = last["id"].as_str().unwrap_or_default().to_string();
        out.extend(items);
    }
    out
}

/// What a store holds after the import, in terms that must not depend on crashes: each line's payment once (by
/// transaction id) with what it paid and to which invoices, and each invoice's amount paid and status.
#[derive(Debug, PartialEq)]
struct Totals {
    payments: usize,
    allocations: usize,
    /// Transaction id -> (amount, left on credit, allocations).
    by_line: BTreeMap<String, (String, String, usize)>,
    invoices: BTreeMap<String, (String, String)>,
}

fn totals(d: &Daemon) -> Totals {
    let payments = all(d, "payments");
    let mut by_line = BTreeMap::new();
    let mut allocations = 0;
    for p in &payments {
        let allocs = p["allocations"].as_array().cloned().unwrap_or_default();
        allocations += allocs.len();
        let ext = p["external_id"].as_str().unwrap_or_default().to_string();
        let previous = by_line.insert(
            ext.clone(),
            (
                p["amount"].as_str().unwrap_or_default().to_string(),
                p["unallocated"].as_str().unwrap_or_default().to_string(),
                allocs.len(),
            ),
        );
        assert!(previous.is_none(), "line {ext} was recorded twice");
    }
    let invoices = all(d, "invoices")
        .iter()
        .map(|i| {
            (
                i["number"].as_str().unwrap_or_default().to_string(),
                (
                    i["amount_paid"].as_str().unwrap_or_default().to_string(),
                    i["payment_status"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect();
    Totals {
        payments: payments.len(),
        allocations,
        by_line,
        invoices,
    }
}

fn assert_check_clean(d: &Daemon, when: &str) {
    let data = d.data_dir();
    let r = check(d, &["--data-dir", data.to_str().unwrap()]);
    assert!(
        r.status.code() == Some(0) && r.stdout.contains(": no differences"),
        "settled check {when}: {r}\n{}",
        d.log_text()
    );
}

/// Back up the stopped daemon's store, pass every row of the backup (`{"k": key, "v": value}`) through `edit`, and
/// restore the result into a new data directory `name`: (that directory, how many rows `edit` said it changed).
fn restore_edited(
    d: &Daemon,
    name: &str,
    mut edit: impl FnMut(&mut Value) -> bool,
) -> (PathBuf, usize) {
    let config = d.dir.path().join("settled.toml");
    let backup = d.dir.path().join(format!("{name}.jsonl"));
    let mut cmd = settled(d.dir.path());
    cmd.args([
        "backup",
        backup.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    let mut edited = String::new();
    let mut edits = 0;
    for line in std::fs::read_to_string(&backup).unwrap().lines() {
        let mut row: Value = serde_json::from_str(line).unwrap();
        if edit(&mut row) {
            edits += 1;
        }
        edited.push_str(&format!("{row}\n"));
    }
    std::fs::write(&backup, edited).unwrap();
    let data = d.dir.path().join(name);
    let mut cmd = settled(d.dir.path());
    cmd.args([
        "restore",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    (data, edits)
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "copying {} to {}", from.display(), to.display());
}

#[test]
fn kill_9_at_three_points_of_a_big_import_leaves_a_store_that_checks_clean_and_counts_nothing_twice(
) {
    let accounts = sized("SETTLED_CRASH_INVOICES", 2_000) / PER_ACCOUNT;
    let lines = sized("SETTLED_CRASH_LINES", 10_000);
    let crashed_dir = tempfile::tempdir().expect("tempdir");
    let clean_dir = tempfile::tempdir().expect("tempdir");
    let issued = seed_open_invoices(&crashed_dir.path().join("data"), accounts, PER_ACCOUNT);
    copy_dir(
        &crashed_dir.path().join("data"),
        &clean_dir.path().join("data"),
    );
    let csv = statement(&issued, lines);

    // The reference: the same file into the same seeded store, no crash.
    let mut clean = Daemon::start_in(clean_dir, setup());
    let (status, body) = upload(&clean, &csv)
        .join()
        .expect("upload thread")
        .expect("clean upload answered");
    assert_eq!(status, 200, "{body}");
    let reference = totals(&clean);
    assert_eq!(reference.payments, lines, "one payment per line");
    clean.terminate();

    let mut d = Daemon::start_in(crashed_dir, setup());
    let mut first = Some(upload(&d, &csv));
    // Kill early, in the middle and late, each time once more of the file is committed; the restarted daemon resumes
    // the import by itself from its spool file.
    for share in [10u64, 50, 85] {
        let target = lines as u64 * share / 100;
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let done = committed(&d);
            assert!(
                done < lines as u64,
                "the import finished before the kill at {share}% (committed {done}); make the file larger\n{}",
                d.log_text()
            );
            if done >= target {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the import did not reach {share}% ({done} of {lines})\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d.kill9();
        if let Some(first) = first.take() {
            let answered = first.join().expect("upload thread");
            assert!(
                answered.is_err(),
                "the upload was answered before the kill: {answered:?}"
            );
        }
        // Stopped: the store as the crash left it checks clean offline.
        let r = run({
            let mut cmd = settled(d.dir.path());
            cmd.args(["check", "--config"])
                .arg(d.dir.path().join("settled.toml"));
            cmd
        });
        assert!(
            r.status.code() == Some(0) && r.stdout.contains(": no differences"),
            "offline check after the kill at {share}%: {r}"
        );
        d.spawn();
    }
    // Running (resuming the import): the daemon's own view, taken between two of its writes, checks clean too.
    assert_check_clean(&d, "while resuming after the last kill");
    let import = d.eventually_within(
        "the resumed import to finish",
        Duration::from_secs(900),
        || import_record(&d).filter(|i| i["status"] == "finished"),
    );
    assert_eq!(import["resumed"], 3, "{import}");
    assert_eq!(import["counts"]["records_read"], lines, "{import}");
    assert_check_clean(&d, "after the import finished");

    // Re-importing the whole file adds nothing: every line was committed exactly once.
    let (status, body) = upload(&d, &csv)
        .join()
        .expect("upload thread")
        .expect("re-import answered");
    assert_eq!(status, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).expect("summary");
    assert_eq!(summary["new"], 0, "{summary}");
    assert_eq!(summary["duplicates"], lines, "{summary}");
    let after = totals(&d);
    assert_eq!(after.payments, reference.payments);
    assert_eq!(after.allocations, reference.allocations);
    assert!(
        after == reference,
        "the crashed store differs from a clean import of the same file"
    );
    assert_check_clean(&d, "after the re-import");
}

#[test]
fn settled_check_passes_a_clean_store_and_names_the_invoice_and_counter_edited_in_a_restored_backup(
) {
    let mut d = Daemon::start(Setup::default());
    let paid = issue_invoice(&d, "Geprüft GmbH", one_line("100.00"));
    let credited = issue_invoice(&d, "Zweite AG", one_line("250.00"));
    pay(&d, &paid, "40.00");
    d.ok(
        "POST",
        &format!("/v1/invoices/{}/credit", credited["id"].as_str().unwrap()),
        Some(serde_json::json!({"amount": "50.00"})),
    );
    assert_eq!(invoice(&d, &paid)["amount_paid"], "40.00");
    // Running: the data directory is the daemon's, so the check asks the daemon.
    assert_check_clean(&d, "while the daemon runs");
    d.terminate();
    let config = d.dir.path().join("settled.toml");
    let offline = |args: &[&str]| {
        let mut cmd = settled(d.dir.path());
        cmd.arg("check").args(args);
        run(cmd)
    };
    let r = offline(&["--config", config.to_str().unwrap()]);
    assert!(
        r.status.code() == Some(0) && r.stdout.contains("checked 3 invoices, 1 payment, "),
        "{r}"
    );

    let paid_id = paid["id"].as_str().unwrap();
    let number = paid["number"].as_str().unwrap();
    let year = &number[4..8];
    // A faithful restore checks clean; the edited one names both edits and exits 1.
    let (restored, _) = restore_edited(&d, "restored", |_| false);
    let r = offline(&["--data-dir", restored.to_str().unwrap()]);
    assert!(r.status.code() == Some(0), "{r}");
    let (edited, edits) = restore_edited(&d, "edited", |row| {
        if row["k"] == format!("e/invoice/{paid_id}") {
            row["v"]["amount_paid"] = "90.00".into();
            return true;
        }
        if row["k"] == format!("n/series/invoice/{year}") {
            row["v"] = 1.into();
            return true;
        }
        false
    });
    assert_eq!(edits, 2);
    let r = offline(&["--data-dir", edited.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1), "{r}");
    assert!(
        r.stdout.lines().any(|l| l.starts_with(&format!(
            "invoice {paid_id} ({number}): amount_paid is \"90.00\" as served, 40.00"
        ))),
        "{r}"
    );
    assert!(
        r.stdout.lines().any(|l| l
            .contains(&format!("counter n/series/invoice/{year} is 1, but number"))
            && l.contains("was issued")),
        "{r}"
    );
    assert!(r.stdout.trim_end().ends_with("differences"), "{r}");
    // No store at all: exit 2, saying so.
    let r = offline(&["--data-dir", d.dir.path().join("nothing").to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "{r}");
    assert!(r.stderr.contains("no store in"), "{r}");
}

#[test]
fn settled_check_finds_no_difference_after_overpayment_credit_notes_spent_credit_reversals_and_bank_returns(
) {
    let d = Daemon::start(Setup::default());
    let company = "Gemischt GmbH";
    let a = issue_invoice(&d, company, one_line("100.00"));
    let b = issue_invoice(&d, company, one_line("250.00"));
    let c = issue_invoice(&d, company, one_line("80.00"));
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    let paid_a = pay(&d, &a, "100.00");
    // 300 for B's 250: 50 goes on the customer's credit, which then pays part of C.
    let over = d.ok(
        "POST",
        "/v1/payments",
        Some(
            serde_json::json!({"amount": "300.00", "currency": "EUR", "payer": "Buyer",
            "allocations": [{"invoice_id": id(&b)}]}),
        ),
    );
    d.ok(
        "POST",
        &format!("/v1/invoices/{}/apply-credit", id(&c)),
        Some(serde_json::json!({})),
    );
    assert_eq!(invoice(&d, &c)["amount_paid"], "50.00");
    // A credit note on the paid invoice A puts its 30 on credit; taking part of A's payment back reopens that cover.
    d.ok(
        "POST",
        &format!("/v1/invoices/{}/credit", id(&a)),
        Some(serde_json::json!({"amount": "30.00"})),
    );
    d.ok(
        "POST",
        &format!("/v1/payments/{}/reverse", id(&paid_a)),
        Some(serde_json::json!({"amount": "20.00"})),
    );
    // Reversing the overpayment takes its credit back, reopening what that credit paid on C.
    d.ok(
        "POST",
        &format!("/v1/payments/{}/reverse", id(&over)),
        Some(serde_json::json!({})),
    );
    assert_eq!(invoice(&d, &c)["amount_paid"], "0.00");
    // A bank statement pays C by its reference, and a later statement returns the payment.
    let rf = c["rf_reference"].as_str().unwrap();
    let header =
        "Date,Amount,Currency,Counterparty,Counterparty Account,Reference,Transaction Id\n";
    import_json(
        &d,
        "paid.csv",
        &format!("{header}2026-03-05,80.00,EUR,{company},DE02120300000000202051,{rf},TX-1\n"),
    );
    let summary = import_json(
        &d,
        "returned.csv",
        &format!("{header}2026-03-09,-80.00,EUR,{company},DE02120300000000202051,{rf},TX-2\n"),
    );
    assert_eq!(summary["reversed"], 1, "{summary}");
    // A return naming a bank reference nothing was paid under waits in review as a payment of -40.
    let summary = import_json(
        &d,
        "unknown-return.csv",
        "Date,Amount,Currency,Counterparty,Original Transaction Id,Transaction Id\n\
         2026-03-10,-40.00,EUR,Somebody,NOWHERE-1,RET-1\n",
    );
    assert_eq!(summary["review"], 1, "{summary}");
    let r = check(&d, &["--online"]);
    assert!(
        r.status.code() == Some(0)
            && r.stdout.contains("checked 4 invoices, ")
            && r.stdout.contains(": no differences")
            && !r.stdout.contains("note:"),
        "{r}"
    );
}

#[test]
fn settled_check_names_a_note_for_returns_that_lists_a_payment_of_another_bank_reference_or_none() {
    let mut d = Daemon::start(Setup::default());
    let first = issue_invoice(&d, "Erste GmbH", one_line("100.00"));
    let second = issue_invoice(&d, "Zweite AG", one_line("200.00"));
    let paid_with = |invoice: &Value, amount: &str, reference: &str| {
        d.ok(
            "POST",
            "/v1/payments",
            Some(
                serde_json::json!({"amount": amount, "currency": "EUR", "payer": "Buyer",
                "external_id": reference, "allocations": [{"invoice_id": invoice["id"]}]}),
            ),
        )
    };
    paid_with(&first, "100.00", "BANK-REF-1");
    let other = paid_with(&second, "200.00", "BANK-REF-2");
    let other_id = other["id"].as_str().unwrap().to_string();
    // Both payments are noted under their bank references, and the notes check clean.
    let data = d.data_dir();
    let r = check(&d, &["--data-dir", data.to_str().unwrap()]);
    assert!(
        r.status.code() == Some(0) && r.stdout.contains("2 paid-by notes"),
        "{r}"
    );
    d.terminate();

    // A backup whose note for BANK-REF-1 lists the other reference's payment and one that does not exist.
    let note = "paid-by:ref:bank-ref-1/";
    let (restored, edits) = restore_edited(&d, "edited", |row| {
        let mut edited = false;
        if row["k"].as_str().is_some_and(|k| k.starts_with("S/")) {
            for entry in row["v"].as_array_mut().unwrap() {
                if entry[0] == note {
                    entry[1] = serde_json::json!({"payments": [other_id, "pay_99999999"]});
                    edited = true;
                }
            }
        }
        edited
    });
    assert_eq!(edits, 1, "the backup holds the note {note}");
    let r = check(&d, &["--data-dir", restored.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1), "{r}");
    assert!(
        r.stdout.lines().any(|l| l
            == format!(
                "seen entry {note}: payment {other_id} has the bank reference \"BANK-REF-2\""
            )),
        "{r}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l == format!("seen entry {note}: payment pay_99999999 does not exist")),
        "{r}"
    );
}
