//! The `hledger` sink through the real daemon to a real `hledger-web --serve-api` on loopback, the journal checked
//! with the `hledger` CLI.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::proxy::Proxy;

const EVENTS: &str = r#"["invoice.issued", "payment.recorded", "payment.reversed"]"#;

/// A running `hledger-web` serving the API from one journal file; killed on drop.
pub(crate) struct HledgerWeb {
    journal: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl HledgerWeb {
    /// A journal file in `dir` (empty) and the port hledger-web will listen on, not started yet.
    pub(crate) fn prepare(dir: &Path) -> HledgerWeb {
        let journal = dir.join("books.journal");
        std::fs::write(&journal, "").expect("writing the journal");
        HledgerWeb {
            journal,
            log: dir.join("hledger-web.log"),
            port: free_port(),
            child: None,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start it and wait until `/transactions` answers.
    pub(crate) fn start(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("hledger-web log");
        let child = Command::new("hledger-web")
            .arg("-f")
            .arg(&self.journal)
            .args(["--serve-api", "--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--capabilities=view,add")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting hledger-web (apt-get install hledger-web)");
        self.child = Some(child);
        let http = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/transactions", self.url());
        while !http.get(&url).send().is_ok_and(|r| r.status().is_success()) {
            assert!(
                Instant::now() < deadline,
                "hledger-web did not answer within 30 s\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Balances per account by the `hledger` CLI (which refuses a journal that does not balance).
    pub(crate) fn balances(&self) -> BTreeMap<String, String> {
        let out = Command::new("hledger")
            .arg("-f")
            .arg(&self.journal)
            .args(["bal", "-E", "-O", "csv"])
            .output()
            .expect("running hledger");
        assert!(
            out.status.success(),
            "hledger refused the journal: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.journal).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (account, balance) = line.split_once("\",\"")?;
                Some((
                    account.trim_matches('"').to_string(),
                    balance.trim_matches('"').to_string(),
                ))
            })
            .collect()
    }

    /// The `settled-event` tags of every transaction in the journal file.
    fn event_tags(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.journal).expect("reading the journal");
        text.lines()
            .filter_map(|l| l.split("settled-event:").nth(1))
            .map(|rest| rest.split([',', ' ']).next().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for HledgerWeb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn daemon(web: &HledgerWeb) -> Daemon {
    daemon_at(&web.url(), "")
}

/// A daemon whose `books` sink talks to hledger-web at `url` (or a proxy in front of it), with more `[outbox]` keys.
fn daemon_at(url: &str, outbox: &str) -> Daemon {
    Daemon::start(Setup {
        plugins: vec!["hledger"],
        config: format!(
            "[outbox]\nretry_schedule_ms = [200, 400]\nrequest_timeout_ms = 5000\n{outbox}\
             [[connector]]\nname = \"books\"\nplugin = \"hledger\"\nevents = {EVENTS}\nsettings = {{ url = \"{url}\" }}\n"
        ),
    })
}

/// The `books` sink as `/v1/outbox` shows it.
fn books(d: &Daemon) -> Value {
    let all = d.ok("GET", "/v1/outbox", None);
    all["items"]
        .as_array()
        .and_then(|items| items.iter().find(|s| s["name"] == "books").cloned())
        .unwrap_or_else(|| panic!("no sink books in {all}"))
}

fn vat_line(net: &str) -> Value {
    json!([{"description": "work", "quantity": "1", "unit_price": net, "tax_rate": "21"}])
}

/// Wait until the sink has delivered `total` events since start and nothing is pending.
fn delivered(d: &Daemon, total: u64) -> Value {
    d.eventually(&format!("{total} events delivered to books"), || {
        Some(books(d)).filter(|s| s["pending"] == 0 && s["delivered_total"].as_u64() >= Some(total))
    })
}

fn receivable_of(balances: &BTreeMap<String, String>, company: &str) -> String {
    balances
        .get(&format!("assets:receivable:{company}"))
        .cloned()
        .unwrap_or_else(|| panic!("no receivable for {company} in {balances:?}"))
}

#[test]
fn an_issued_and_paid_invoice_leaves_no_receivable_and_books_revenue_and_vat_in_hledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    web.start();
    let d = daemon(&web);
    let inv = issue_invoice(&d, "Ledger Keepers", vat_line("100.00"));
    assert_eq!(inv["total"], "121.00", "{inv}");
    delivered(&d, 1);
    pay(&d, &inv, "121.00");
    delivered(&d, 2);
    let bal = web.balances();
    assert_eq!(receivable_of(&bal, "Ledger Keepers"), "0", "{bal:?}");
    assert_eq!(
        bal.get("revenue").map(String::as_str),
        Some("EUR -100.00"),
        "{bal:?}"
    );
    assert_eq!(
        bal.get("liabilities:vat:21").map(String::as_str),
        Some("EUR -21.00"),
        "{bal:?}"
    );
    assert_eq!(
        bal.get("assets:bank").map(String::as_str),
        Some("EUR 121.00"),
        "{bal:?}"
    );
}

#[test]
fn a_partial_payment_leaves_the_settled_balance_as_receivable_in_hledger_to_the_cent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    web.start();
    let d = daemon(&web);
    let inv = issue_invoice(&d, "Part Payers", vat_line("99.99"));
    delivered(&d, 1);
    pay(&d, &inv, "50.05");
    delivered(&d, 2);
    let id = inv["id"].as_str().expect("invoice id");
    let balance = d.ok("GET", &format!("/v1/invoices/{id}"), None)["balance"].clone();
    let balance = balance.as_str().expect("balance as text");
    assert_eq!(balance, "70.94");
    let bal = web.balances();
    assert_eq!(
        receivable_of(&bal, "Part Payers"),
        format!("EUR {balance}"),
        "{bal:?}"
    );
}

#[test]
fn replaying_the_outbox_from_the_first_event_posts_nothing_twice_in_hledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    web.start();
    let d = daemon(&web);
    let inv = issue_invoice(&d, "Replay Books", vat_line("10.00"));
    delivered(&d, 1);
    pay(&d, &inv, "12.10");
    delivered(&d, 2);
    let before = web.balances();
    assert_eq!(web.event_tags().len(), 2, "{:?}", web.event_tags());
    d.ok("POST", "/v1/outbox/books/replay", Some(json!({"from": 1})));
    delivered(&d, 4);
    let mut tags = web.event_tags();
    assert_eq!(tags.len(), 2, "{tags:?}");
    tags.dedup();
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert_eq!(web.balances(), before);
}

#[test]
fn an_invoice_issued_while_hledger_web_is_down_is_posted_once_when_it_comes_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    let d = daemon(&web);
    let inv = issue_invoice(&d, "Late Books", vat_line("40.00"));
    d.eventually("a failed attempt while hledger-web is down", || {
        let all = d.ok("GET", "/v1/outbox", None);
        all["items"][0]["failed_attempts_total"]
            .as_u64()
            .filter(|n| *n >= 1)
    });
    web.start();
    delivered(&d, 1);
    pay(&d, &inv, "48.40");
    delivered(&d, 2);
    assert_eq!(web.event_tags().len(), 2, "{:?}", web.event_tags());
    let bal = web.balances();
    assert_eq!(receivable_of(&bal, "Late Books"), "0", "{bal:?}");
    assert_eq!(
        bal.get("liabilities:vat:21").map(String::as_str),
        Some("EUR -8.40"),
        "{bal:?}"
    );
}

#[test]
fn an_overpayment_goes_to_customer_credit_and_its_reversal_restores_the_receivable_in_hledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    web.start();
    let d = daemon(&web);
    let inv = issue_invoice(&d, "Over Payers", vat_line("100.00"));
    delivered(&d, 1);
    let payment = pay(&d, &inv, "130.00");
    delivered(&d, 2);
    let bal = web.balances();
    assert_eq!(receivable_of(&bal, "Over Payers"), "0", "{bal:?}");
    assert_eq!(
        bal.get("liabilities:customer-credit").map(String::as_str),
        Some("EUR -9.00"),
        "{bal:?}"
    );
    let id = payment["id"].as_str().expect("payment id");
    d.ok(
        "POST",
        &format!("/v1/payments/{id}/reverse"),
        Some(json!({})),
    );
    delivered(&d, 3);
    let inv_id = inv["id"].as_str().expect("invoice id");
    let balance = d.ok("GET", &format!("/v1/invoices/{inv_id}"), None)["balance"].clone();
    assert_eq!(balance, "121.00");
    let bal = web.balances();
    assert_eq!(receivable_of(&bal, "Over Payers"), "EUR 121.00", "{bal:?}");
    assert_eq!(
        bal.get("assets:bank").map(String::as_str),
        Some("0"),
        "{bal:?}"
    );
    assert_eq!(
        bal.get("liabilities:customer-credit").map(String::as_str),
        Some("0"),
        "{bal:?}"
    );
}

#[test]
fn an_answer_the_hledger_sink_cannot_read_is_retried_then_a_dead_letter_naming_the_sink_and_nothing_is_posted(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    web.start();
    let proxy = Proxy::start(&web.url());
    // A front end that answers an error page with 200, as a misconfigured reverse proxy does.
    proxy.garble_reads(
        3,
        b"<html><body>Service temporarily unavailable</body></html>",
    );
    let d = daemon_at(&proxy.url(), "");
    let inv = issue_invoice(&d, "Garbled Books", vat_line("10.00"));
    let s = d.eventually("a dead letter after three unreadable answers", || {
        Some(books(&d)).filter(|s| s["dead_letters"].as_array().is_some_and(|l| l.len() == 1))
    });
    let attempts = s["dead_letters"][0]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        attempts.len(),
        3,
        "the schedule [200, 400] allows three attempts: {s}"
    );
    for a in &attempts {
        let error = a["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("sink `books` could not read the peer's answer")
                && error.contains("/transactions")
                && error.contains("not a json list")
                && error.contains("<html>"),
            "the error names the sink, the request and what came back: {s}"
        );
        assert_eq!(a["status"], 200, "{s}");
    }
    assert_eq!(s["state"], "error", "{s}");
    assert!(
        proxy.log().iter().all(|f| f.method == "GET"),
        "nothing was written on an answer the sink could not read: {:#?}",
        proxy.log()
    );
    assert!(web.event_tags().is_empty(), "{:?}", web.event_tags());
    // Nothing lost: sent again by hand, the event is posted, once.
    let event = s["dead_letters"][0]["event_id"].as_u64().expect("event id");
    d.ok("POST", &format!("/v1/outbox/books/retry/{event}"), None);
    delivered(&d, 1);
    assert_eq!(web.event_tags(), [event.to_string()]);
    let bal = web.balances();
    assert_eq!(
        receivable_of(&bal, "Garbled Books"),
        "EUR 12.10",
        "{bal:?} {inv}"
    );
}

#[test]
fn kill_9_between_hledger_webs_201_and_the_cursor_commit_is_recognised_on_restart_and_posted_once()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    web.start();
    let proxy = Proxy::start(&web.url());
    let mut d = daemon_at(&proxy.url(), "");
    proxy.hold_next_write();
    let inv = issue_invoice(&d, "Crash Books", vat_line("50.00"));
    // hledger-web took the transaction; the daemon has not heard so when it dies.
    assert_eq!(proxy.wait_held(), 201, "{:#?}", proxy.log());
    d.kill9();
    proxy.release();
    let tags = web.event_tags();
    assert_eq!(
        tags.len(),
        1,
        "hledger-web wrote it before the kill: {tags:?}"
    );
    d.spawn();
    delivered(&d, 1);
    assert_eq!(web.event_tags(), tags, "the redelivery did not post again");
    let writes: Vec<_> = proxy
        .log()
        .into_iter()
        .filter(|f| f.method == "PUT")
        .collect();
    assert_eq!(
        writes.len(),
        1,
        "the restart read before it wrote: {writes:#?}"
    );
    assert_eq!(
        (writes[0].path.as_str(), writes[0].peer_status),
        ("/add", 201)
    );
    let bal = web.balances();
    assert_eq!(receivable_of(&bal, "Crash Books"), "EUR 60.50", "{bal:?}");
    // The next event goes through as usual.
    pay(&d, &inv, "60.50");
    delivered(&d, 2);
    assert_eq!(receivable_of(&web.balances(), "Crash Books"), "0");
    assert_eq!(web.event_tags().len(), 2, "{:?}", web.event_tags());
}

/// Transactions written straight into the journal file before hledger-web starts: `n` invoices of other customers.
fn seed_journal(web: &HledgerWeb, n: usize) {
    let mut text = String::new();
    for i in 1..=n {
        text.push_str(&format!(
            "2026-01-01 seeded invoice {i}  ; seed:{i}\n    assets:receivable:Seed Customer {}    EUR {i}.00\n    revenue\n\n",
            i % 50
        ));
    }
    std::fs::write(&web.journal, text).expect("seeding the journal");
}

#[test]
fn a_journal_of_2500_transactions_is_read_whole_and_an_answer_above_max_response_mib_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    seed_journal(&web, 2500);
    web.start();
    // About 3 MiB of JSON from GET /transactions: more than a 1 MiB limit allows.
    let mut d = daemon_at(&web.url(), "max_response_mib = 1\n");
    let inv = issue_invoice(&d, "Big Books", vat_line("100.00"));
    let s = d.eventually("the oversized answer refused", || {
        Some(books(&d)).filter(|s| {
            s["retrying"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("max_response_mib"))
        })
    });
    let error = s["retrying"][0]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("larger than 1 MiB") && error.contains("/transactions"),
        "{s}"
    );
    assert!(web.event_tags().is_empty(), "{:?}", web.event_tags());
    // With the default limit (64 MiB) the whole journal is read and the invoice posted once.
    d.terminate();
    let config_path = d.dir.path().join("settled.toml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    std::fs::write(&config_path, config.replace("max_response_mib = 1\n", "")).expect("config");
    d.spawn();
    delivered(&d, 1);
    pay(&d, &inv, "121.00");
    delivered(&d, 2);
    assert_eq!(web.event_tags().len(), 2, "{:?}", web.event_tags());
    let bal = web.balances();
    assert_eq!(receivable_of(&bal, "Big Books"), "0", "{bal:?}");
    assert_eq!(
        bal.get("revenue").map(String::as_str),
        Some("EUR -3126350.00"),
        "the 2,500 seeded invoices (1 + ... + 2500 = 3,126,250) and this one: {bal:?}"
    );
}
