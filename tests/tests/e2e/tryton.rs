//! The `tryton` connector (sink + poll) through the real daemon against a real Tryton 6.0 server
//! (`tryton_server.rs`): invoices issued in settled are posted in Tryton and paid there when a bank file pays them;
//! invoices posted in Tryton are polled into settled, reconciled from a bank file and paid in Tryton.

use serde_json::{json, Value};

use crate::harness::{cli, import_json, invoice, issue_invoice, Daemon, Setup};
use crate::hledger::HledgerWeb;
use crate::proxy::Proxy;
use crate::tryton_server::{Tryton, DATABASE, PASSWORD, USER};

const EVENTS: &str = r#"["invoice.issued", "payment.recorded", "payment.reversed"]"#;

/// The config of a daemon with the Tryton connector `erp` (talking to `url`, polling every `poll_every_secs`) and a
/// `camt` connector, with `more` appended.
fn config(url: &str, poll_every_secs: u64, extra_settings: &str, more: &str) -> String {
    format!(
        "[outbox]\nretry_schedule_ms = [200, 400, 800, 1600, 3200]\nrequest_timeout_ms = 20000\n\
         [[connector]]\nname = \"erp\"\nplugin = \"tryton\"\nevents = {EVENTS}\npoll_every_secs = {poll_every_secs}\n\
         settings = {{ url = \"{url}\", database = \"{DATABASE}\", user = \"{USER}\", password = \"{PASSWORD}\"{extra_settings} }}\n\
         [[connector]]\nname = \"camt\"\nplugin = \"camt\"\n{more}"
    )
}

fn daemon_with(t: &Tryton, extra_settings: &str) -> Daemon {
    Daemon::start(Setup {
        plugins: vec!["tryton", "camt"],
        config: config(&t.url(), 1, extra_settings, ""),
    })
}

fn daemon(t: &Tryton) -> Daemon {
    daemon_with(t, "")
}

fn vat_line(net: &str, rate: &str) -> Value {
    json!([{"description": "work", "quantity": "2", "unit_price": net, "tax_rate": rate}])
}

/// A camt.053 statement with one booked credit of `amount` whose remittance text is `text`.
fn camt_paying(reference: &str, amount: &str, text: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">
  <BkToCstmrStmt>
    <GrpHdr><MsgId>{reference}</MsgId><CreDtTm>2026-03-10T08:00:00</CreDtTm></GrpHdr>
    <Stmt>
      <Id>{reference}</Id>
      <Acct><Id><IBAN>DE89370400440532013000</IBAN></Id><Ccy>EUR</Ccy></Acct>
      <Ntry><Amt Ccy="EUR">{amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>
        <BookgDt><Dt>2026-03-05</Dt></BookgDt><ValDt><Dt>2026-03-05</Dt></ValDt><AcctSvcrRef>{reference}</AcctSvcrRef>
        <NtryDtls><TxDtls><RltdPties><Dbtr><Pty><Nm>Payer</Nm></Pty></Dbtr></RltdPties>
        <RmtInf><Ustrd>{text}</Ustrd></RmtInf></TxDtls></NtryDtls></Ntry>
    </Stmt>
  </BkToCstmrStmt>
</Document>
"#
    )
}

/// The Tryton invoice whose reference is settled's `number`, once it is in `state`.
fn tryton_invoice(d: &Daemon, t: &mut Tryton, number: &str, state: &str) -> Value {
    d.eventually(&format!("invoice {number} {state} in Tryton"), || {
        t.invoices()
            .into_iter()
            .find(|i| (i["reference"] == number || i["number"] == number) && i["state"] == state)
    })
}

/// The sink's row of `/v1/outbox`.
fn sink(d: &Daemon) -> Value {
    d.ok("GET", "/v1/outbox", None)["items"]
        .as_array()
        .and_then(|items| items.iter().find(|s| s["name"] == "erp").cloned())
        .expect("sink erp")
}

/// The settled invoice numbered `number`, once the poll brought it.
fn settled_invoice(d: &Daemon, number: &str) -> Value {
    d.eventually(&format!("invoice {number} in settled"), || {
        d.ok("GET", "/v1/invoices", None)["items"]
            .as_array()?
            .iter()
            .find(|i| i["number"] == number)
            .cloned()
    })
}

#[test]
fn a_settled_invoice_is_posted_in_tryton_and_a_camt_payment_in_settled_marks_it_paid_there() {
    let mut t = Tryton::start();
    let d = daemon(&t);
    let inv = issue_invoice(&d, "Walk Through BV", vat_line("50.00", "21"));
    assert_eq!(inv["total"], "121.00", "{inv}");
    let number = inv["number"].as_str().expect("number");
    let posted = tryton_invoice(&d, &mut t, number, "posted");
    assert_eq!(posted["total"], "121.00", "{posted}");
    assert_eq!(posted["party"], "Walk Through BV", "{posted}");
    let summary = import_json(&d, "paid.xml", &camt_paying("PAY-1", "121.00", number));
    assert_eq!(summary["new"], 1, "{summary}");
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");
    let paid = tryton_invoice(&d, &mut t, number, "paid");
    assert_eq!(paid["to_pay"], "0", "{paid}");
}

#[test]
fn a_partial_payment_in_settled_leaves_the_same_amount_to_pay_in_tryton() {
    let mut t = Tryton::start();
    let d = daemon(&t);
    let inv = issue_invoice(&d, "Half Payers", vat_line("50.00", "21"));
    let number = inv["number"].as_str().expect("number");
    tryton_invoice(&d, &mut t, number, "posted");
    import_json(&d, "part.xml", &camt_paying("PART-1", "50.05", number));
    let balance = invoice(&d, &inv)["balance"].clone();
    assert_eq!(balance, "70.95");
    let left = d.eventually("the partial payment in Tryton", || {
        t.invoices()
            .into_iter()
            .find(|i| i["reference"] == number && i["to_pay"] != "121.00")
    });
    assert_eq!(left["to_pay"], "70.95", "{left}");
    assert_eq!(left["state"], "posted", "{left}");
}

#[test]
fn a_tryton_invoice_is_polled_into_settled_paid_from_a_bank_file_and_paid_in_tryton() {
    let mut t = Tryton::start();
    let (_, number) = t.post_invoice("Seeded Customer", "200.00");
    let d = daemon(&t);
    let inv = settled_invoice(&d, &number);
    assert_eq!(inv["total"], "242.00", "{inv}");
    assert_eq!(inv["external_refs"][0]["system"], "tryton", "{inv}");
    assert_eq!(inv["external_refs"][0]["origin"], true, "{inv}");
    let summary = import_json(
        &d,
        "tryton-paid.xml",
        &camt_paying("PAY-T1", "242.00", &number),
    );
    assert_eq!(summary["new"], 1, "{summary}");
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");
    let paid = tryton_invoice(&d, &mut t, &number, "paid");
    assert_eq!(paid["to_pay"], "0", "{paid}");
    // Settled did not send Tryton's own invoice back to it.
    assert_eq!(t.invoices().len(), 1, "{:?}", t.invoices());
}

#[test]
fn tryton_down_at_delivery_is_retried_and_the_invoice_is_created_once_when_it_is_back() {
    let mut t = Tryton::start();
    let d = daemon(&t);
    t.stop();
    let inv = issue_invoice(&d, "Patient Buyers", vat_line("10.00", "10"));
    let number = inv["number"].as_str().expect("number");
    d.eventually("a failed attempt while Tryton is down", || {
        let s = sink(&d);
        (s["failed_attempts_total"].as_u64() >= Some(1)).then_some(s)
    });
    t.spawn();
    tryton_invoice(&d, &mut t, number, "posted");
    d.eventually("nothing pending", || {
        (sink(&d)["pending"] == 0).then_some(())
    });
    let same: Vec<Value> = t
        .invoices()
        .into_iter()
        .filter(|i| i["reference"] == number)
        .collect();
    assert_eq!(same.len(), 1, "{same:?}");
}

#[test]
fn an_expired_tryton_session_is_renewed_by_the_plugin_without_a_failed_delivery() {
    let mut t = Tryton::start();
    let d = daemon(&t);
    let first = issue_invoice(&d, "Session One", vat_line("10.00", "21"));
    tryton_invoice(
        &d,
        &mut t,
        first["number"].as_str().expect("number"),
        "posted",
    );
    t.expire_sessions();
    let second = issue_invoice(&d, "Session Two", vat_line("20.00", "21"));
    tryton_invoice(
        &d,
        &mut t,
        second["number"].as_str().expect("number"),
        "posted",
    );
    assert_eq!(sink(&d)["failed_attempts_total"], 0, "{}", sink(&d));
}

#[test]
fn a_tax_rate_missing_in_tryton_makes_a_dead_letter_naming_the_tax() {
    let t = Tryton::start();
    let d = daemon(&t);
    issue_invoice(&d, "Odd Rates", vat_line("10.00", "7"));
    let dead = d.eventually("a dead letter", || {
        sink(&d)["dead_letters"]
            .as_array()
            .and_then(|l| l.first().cloned())
    });
    let error = dead["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("customer tax of 7%"), "{dead}");
    assert!(error.contains("settled outbox retry"), "{dead}");
}

#[test]
fn a_party_missing_in_tryton_makes_a_dead_letter_naming_it_when_parties_are_not_created() {
    let t = Tryton::start();
    let d = daemon_with(&t, ", create_parties = false");
    issue_invoice(&d, "Unknown Party Ltd", vat_line("10.00", "21"));
    let dead = d.eventually("a dead letter", || {
        sink(&d)["dead_letters"]
            .as_array()
            .and_then(|l| l.first().cloned())
    });
    let error = dead["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("party `Unknown Party Ltd` is missing in Tryton"),
        "{dead}"
    );
}

#[test]
fn an_invoice_already_paid_in_tryton_is_not_paid_twice() {
    let mut t = Tryton::start();
    let d = daemon(&t);
    let inv = issue_invoice(&d, "Early Payers", vat_line("50.00", "21"));
    let number = inv["number"].as_str().expect("number");
    let posted = tryton_invoice(&d, &mut t, number, "posted");
    t.pay(posted["id"].as_i64().expect("id"), "121.00");
    import_json(&d, "late.xml", &camt_paying("PAY-LATE", "121.00", number));
    d.eventually("the payment delivered", || {
        let s = sink(&d);
        (s["pending"] == 0 && s["delivered_total"].as_u64() >= Some(2)).then_some(())
    });
    assert_eq!(t.payment_lines(posted["id"].as_i64().expect("id")), 1);
    assert!(
        sink(&d)["dead_letters"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{}",
        sink(&d)
    );
}

#[test]
fn a_poll_page_with_an_invoice_settled_sent_links_it_and_creates_no_duplicate() {
    let mut t = Tryton::start();
    let d = daemon(&t);
    let inv = issue_invoice(&d, "Round Trip SA", vat_line("10.00", "21"));
    let number = inv["number"].as_str().expect("number");
    let posted = tryton_invoice(&d, &mut t, number, "posted");
    let linked = d.eventually("the settled invoice linked to Tryton's", || {
        let now = invoice(&d, &inv);
        let id = posted["id"].to_string();
        (now["external_refs"][0]["id"].as_str() == Some(id.as_str())).then_some(now)
    });
    assert_eq!(
        linked["external_refs"][0]["number"], posted["number"],
        "{linked}"
    );
    assert_eq!(linked["external_refs"][0]["origin"], false, "{linked}");
    let all = d.ok("GET", "/v1/invoices", None)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(all.len(), 1, "{all:?}");
    // The poller's status follows its commit: wait for the page that linked it.
    let at = format!("/{}", posted["id"]);
    let poller = d.eventually("the poller's cursor past the linked invoice", || {
        let plugins = d.ok("GET", "/v1/plugins", None);
        let poller = plugins["pollers"][0].clone();
        poller["cursor"]
            .as_str()
            .is_some_and(|c| c.ends_with(&at))
            .then_some(poller)
    });
    assert_eq!(poller["connector"], "erp", "{poller}");
    assert_eq!(poller["records"], 0, "{poller}");
    assert!(poller["duplicates"].as_u64() >= Some(1), "{poller}");
}

/// The poller's committed pages so far.
fn poll_pages(d: &Daemon) -> u64 {
    d.ok("GET", "/v1/plugins", None)["pollers"][0]["pages"]
        .as_u64()
        .unwrap_or(0)
}

/// The payments settled recorded, oldest first.
fn payments(d: &Daemon) -> Vec<Value> {
    d.ok("GET", "/v1/payments", None)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn payments_entered_by_hand_in_tryton_show_in_settled_as_paid_elsewhere_once_and_are_not_sent_back()
{
    let mut t = Tryton::start();
    let (id, number) = t.post_invoice("Seeded Customer", "200.00");
    let d = daemon(&t);
    let inv = settled_invoice(&d, &number);
    assert_eq!(inv["payment_status"], "unpaid", "{inv}");
    // Part first: the rest stays open in settled too.
    t.pay(id, "100.00");
    let part = d.eventually("the partial payment from Tryton in settled", || {
        Some(invoice(&d, &inv)).filter(|i| i["balance"] == "142.00")
    });
    assert_eq!(part["payment_status"], "partially_paid", "{part}");
    t.pay(id, "142.00");
    let paid = d.eventually("the invoice paid in settled", || {
        Some(invoice(&d, &inv)).filter(|i| i["payment_status"] == "paid")
    });
    assert_eq!(paid["balance"], "0.00", "{paid}");
    let kinds: Vec<(&str, &str)> = paid["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or_default(),
                a["amount"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("paid_elsewhere", "100.00"), ("paid_elsewhere", "142.00")],
        "{paid}"
    );
    let recorded = payments(&d);
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded
            .iter()
            .all(|p| p["source"] == "tryton" && p["reference"] == number.as_str()),
        "{recorded:?}"
    );
    // Polled again (the write date is past), nothing more is recorded; the sink sent nothing back to Tryton.
    let pages = poll_pages(&d);
    d.eventually("two more polls", || {
        (poll_pages(&d) >= pages + 2).then_some(())
    });
    d.eventually("nothing pending for Tryton", || {
        (sink(&d)["pending"] == 0).then_some(())
    });
    assert_eq!(payments(&d).len(), 2, "{:?}", payments(&d));
    assert_eq!(t.payment_lines(id), 2);
    let s = sink(&d);
    assert!(
        s["dead_letters"].as_array().is_some_and(Vec::is_empty),
        "{s}"
    );
}

#[test]
fn settled_sync_check_agrees_after_the_walk_and_names_an_invoice_paid_in_tryton_behind_settleds_back(
) {
    let mut t = Tryton::start();
    let (id, tryton_number) = t.post_invoice("Seeded Customer", "200.00");
    // One poll at start-up only: the change made in Tryton below stays unseen by settled.
    let d = Daemon::start(Setup {
        plugins: vec!["tryton", "camt"],
        config: config(&t.url(), 3600, "", ""),
    });
    settled_invoice(&d, &tryton_number);
    let ours = issue_invoice(&d, "Check Walkers", vat_line("50.00", "21"));
    let number = ours["number"].as_str().expect("number");
    tryton_invoice(&d, &mut t, number, "posted");
    import_json(&d, "walk.xml", &camt_paying("WALK-1", "121.00", number));
    tryton_invoice(&d, &mut t, number, "paid");
    let agree = cli(&d, &["sync", "check", "erp"]);
    assert!(agree.status.success(), "{agree}");
    assert!(agree.stdout.contains("no differences"), "{agree}");
    // Behind settled's back: a payment entered in Tryton.
    t.pay(id, "42.00");
    let differ = cli(&d, &["sync", "check", "erp"]);
    assert_eq!(differ.status.code(), Some(1), "{differ}");
    let line = differ
        .stdout
        .lines()
        .find(|l| l.contains(&tryton_number) && l.contains("balance"))
        .unwrap_or_else(|| panic!("no balance line for {tryton_number}: {differ}"));
    assert!(
        line.contains("242.00") && line.contains("200.00"),
        "{line}\n{differ}"
    );
    assert!(
        !differ.stdout.contains(number),
        "only the edited invoice differs: {differ}"
    );
    let api = d.ok("GET", "/v1/sync/erp/check", None);
    let fields: Vec<(&str, &str)> = api["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|x| {
            (
                x["invoice"].as_str().unwrap_or_default(),
                x["field"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(fields, [(tryton_number.as_str(), "balance")], "{api}");
}

#[test]
fn kill_9_in_the_middle_of_the_pay_wizard_pays_the_tryton_invoice_exactly_once_after_restart() {
    let mut t = Tryton::start();
    let proxy = Proxy::start(&t.url());
    let mut d = Daemon::start(Setup {
        plugins: vec!["tryton", "camt"],
        config: config(&proxy.url(), 1, "", ""),
    });
    let inv = issue_invoice(&d, "Crash Payers", vat_line("50.00", "21"));
    let number = inv["number"].as_str().expect("number");
    let posted = tryton_invoice(&d, &mut t, number, "posted");
    let id = posted["id"].as_i64().expect("id");
    // The wizard's step that enters the payment: Tryton commits it, the daemon never hears back.
    proxy.hold_write_containing(&["wizard.account.invoice.pay.execute", "\"choice\""]);
    import_json(&d, "crash.xml", &camt_paying("CRASH-1", "121.00", number));
    assert_eq!(proxy.wait_held(), 200, "{:#?}", proxy.log());
    d.kill9();
    proxy.release();
    assert_eq!(
        t.payment_lines(id),
        1,
        "Tryton took the payment before the kill"
    );
    d.spawn();
    d.eventually("the payment event delivered after the restart", || {
        let s = sink(&d);
        (s["pending"] == 0 && s["delivered_total"].as_u64() >= Some(1)).then_some(())
    });
    assert_eq!(t.payment_lines(id), 1, "paid exactly once");
    let paid = tryton_invoice(&d, &mut t, number, "paid");
    assert_eq!(paid["to_pay"], "0", "{paid}");
    let s = sink(&d);
    assert!(
        s["dead_letters"].as_array().is_some_and(Vec::is_empty),
        "{s}"
    );
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");
    assert_eq!(payments(&d).len(), 1, "{:?}", payments(&d));
}

#[test]
fn a_tryton_invoice_with_vat_keeps_its_tax_per_rate_and_posts_a_balanced_transaction_to_hledger() {
    let mut t = Tryton::start();
    let (_, number) = t.post_invoice("Seeded Customer", "200.00");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = HledgerWeb::prepare(dir.path());
    web.start();
    let books = format!(
        "[[connector]]\nname = \"books\"\nplugin = \"hledger\"\nevents = [\"invoice.issued\"]\n\
         settings = {{ url = \"{}\" }}\n",
        web.url()
    );
    let d = Daemon::start(Setup {
        plugins: vec!["tryton", "camt", "hledger"],
        config: config(&t.url(), 1, "", &books),
    });
    let inv = settled_invoice(&d, &number);
    assert_eq!(
        inv["taxes"],
        json!([{"rate": "21", "base": "200.00", "amount": "42.00"}]),
        "{inv}"
    );
    let bal = d.eventually("the invoice posted in hledger-web", || {
        Some(web.balances()).filter(|b| b.contains_key("revenue"))
    });
    assert_eq!(
        bal.get("revenue").map(String::as_str),
        Some("EUR -200.00"),
        "{bal:?}"
    );
    assert_eq!(
        bal.get("liabilities:vat:21").map(String::as_str),
        Some("EUR -42.00"),
        "{bal:?}"
    );
    assert_eq!(
        bal.get("assets:receivable:Seeded Customer")
            .map(String::as_str),
        Some("EUR 242.00"),
        "{bal:?}"
    );
}
