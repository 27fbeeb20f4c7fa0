//! Outbox delivery through the real daemon and the real `webhook` plugin to a receiver on loopback that checks every
//! signature with its own implementation of Standard Webhooks.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::receiver::{Receiver, Reply, SECRET};

const ALL_EVENTS: &str =
    r#"["invoice.issued", "invoice.payment_status_changed", "payment.recorded"]"#;

/// A daemon with one `webhook` sink per `(name, url)`, these event types, retry waits and request timeout.
fn daemon(sinks: &[(&str, &str)], events: &str, schedule_ms: &str, timeout_ms: u64) -> Daemon {
    Daemon::start(Setup {
        plugins: vec!["webhook"],
        config: sinks_config(sinks, events, schedule_ms, timeout_ms),
    })
}

fn sinks_config(
    sinks: &[(&str, &str)],
    events: &str,
    schedule_ms: &str,
    timeout_ms: u64,
) -> String {
    let mut config =
        format!("[outbox]\nretry_schedule_ms = {schedule_ms}\nrequest_timeout_ms = {timeout_ms}\n");
    for (name, url) in sinks {
        config.push_str(&format!(
            "[[connector]]\nname = \"{name}\"\nplugin = \"webhook\"\nevents = {events}\nsettings = {{ url = \"{url}\", secret = \"{SECRET}\" }}\n"
        ));
    }
    config
}

fn sink(d: &Daemon, name: &str) -> Value {
    let all = d.ok("GET", "/v1/outbox", None);
    all["items"]
        .as_array()
        .and_then(|items| items.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no sink {name} in {all}"))
}

/// Poll `/v1/outbox` until the sink satisfies `check`.
fn sink_until(d: &Daemon, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    d.eventually(what, || Some(sink(d, name)).filter(|s| check(s)))
}

fn cli(d: &Daemon, args: &[&str]) -> Run {
    let mut cmd = settled(d.dir.path());
    cmd.args(["--url", &d.url("")])
        .args(args)
        .env("SETTLED_API_TOKEN", TOKEN);
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    r
}

fn kinds(requests: &[crate::receiver::Received]) -> Vec<String> {
    requests.iter().map(|r| r.kind().to_string()).collect()
}

/// The events about one invoice, in delivery order: its `issued`, then status changes ending in `paid`.
fn assert_invoice_in_order(requests: &[crate::receiver::Received], number: &str) {
    let about: Vec<(&str, &str)> = requests
        .iter()
        .filter(|r| r.body["data"]["number"] == number)
        .map(|r| (r.kind(), r.body["data"]["to"].as_str().unwrap_or("")))
        .collect();
    assert!(about.len() >= 2, "{about:?}");
    assert_eq!(about[0].0, "invoice.issued", "{about:?}");
    assert!(
        about[1..]
            .iter()
            .all(|(k, _)| *k == "invoice.payment_status_changed"),
        "{about:?}"
    );
    assert_eq!(about.last().map(|a| a.1), Some("paid"), "{about:?}");
}

fn assert_signed(requests: &[crate::receiver::Received]) {
    for r in requests {
        assert!(r.signature_valid, "bad signature on {r:?}");
    }
}

#[test]
fn an_issued_then_paid_invoice_reaches_the_webhook_in_order_with_valid_signatures() {
    let rx = Receiver::start();
    let d = daemon(&[("hook", &rx.url())], ALL_EVENTS, "[200, 400]", 5000);
    let inv = issue_invoice(&d, "Order Keepers", one_line("100.00"));
    let number = inv["number"].as_str().unwrap();
    rx.wait_for(1);
    pay(&d, &inv, "100.00");
    // issued, the status it opens with, the payment, the status change to paid.
    let got = rx.wait_for(4);
    assert_signed(&got);
    let mut seen = kinds(&got);
    seen.sort();
    assert_eq!(
        seen,
        [
            "invoice.issued",
            "invoice.payment_status_changed",
            "invoice.payment_status_changed",
            "payment.recorded"
        ],
        "{got:#?}"
    );
    assert_invoice_in_order(&got, number);
    let issued = &got[0].body["data"];
    assert_eq!(issued["number"], number);
    assert_eq!(issued["total"], "100.00");
    assert_eq!(issued["currency"], "EUR");
    assert!(issued["due_date"].is_string(), "{issued}");
    let paid = &got
        .iter()
        .rfind(|r| r.kind() == "invoice.payment_status_changed")
        .unwrap()
        .body["data"];
    assert_eq!(paid["to"], "paid");
    assert_eq!(paid["balance"], "0.00");
    assert_eq!(paid["amount_paid"], "100.00");
    assert!(paid["issue_date"].is_string(), "{paid}");
    let recorded = &got
        .iter()
        .find(|r| r.kind() == "payment.recorded")
        .unwrap()
        .body["data"];
    assert_eq!(recorded["amount"], "100.00");
    // Each event once, keyed by its event id.
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(
        got[0].id,
        format!("evt_{}", got[0].body["data"]["event_id"])
    );
    let s = sink_until(&d, "hook", "the cursor past the paid event", |s| {
        s["pending"] == 0 && s["delivered_total"] == 4
    });
    assert_eq!(s["state"], "ok", "{s}");
    let metrics = d.metrics().expect("GET /metrics");
    assert!(
        metrics.contains("settled_outbox_delivered_total{sink=\"hook\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("settled_outbox_pending{sink=\"hook\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_receiver_down_then_back_gets_each_event_once_and_in_order() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let d = daemon(
        &[("hook", &url)],
        ALL_EVENTS,
        "[300, 300, 300, 300, 300, 300, 300, 300, 300, 300]",
        5000,
    );
    let inv = issue_invoice(&d, "Downtime Ltd", one_line("80.00"));
    pay(&d, &inv, "80.00");
    let s = sink_until(&d, "hook", "a retry after connection refused", |s| {
        s["retrying"].as_array().is_some_and(|r| !r.is_empty())
    });
    let error = s["retrying"][0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot connect"), "{s}");
    let rx = Receiver::start_on(port);
    rx.wait_for(4);
    sink_until(&d, "hook", "everything delivered", |s| s["pending"] == 0);
    let got = rx.requests();
    assert_eq!(got.len(), 4, "each event exactly once: {got:#?}");
    assert_signed(&got);
    assert_invoice_in_order(&got, inv["number"].as_str().unwrap());
}

#[test]
fn five_hundred_three_times_then_two_hundred_delivers_on_the_fourth_attempt() {
    let rx = Receiver::start();
    rx.script(vec![Reply::Status(500, vec![]); 3]);
    let d = daemon(
        &[("hook", &rx.url())],
        r#"["invoice.issued"]"#,
        "[100, 100, 100, 100, 100]",
        5000,
    );
    issue_invoice(&d, "Flaky Inc", one_line("10.00"));
    let got = rx.wait_for(4);
    let answered: Vec<Option<u16>> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [Some(500), Some(500), Some(500), Some(200)]);
    assert!(
        got.iter().all(|r| r.id == got[0].id),
        "one webhook-id for every attempt: {got:#?}"
    );
    assert_signed(&got);
    let s = sink_until(&d, "hook", "delivered", |s| {
        s["pending"] == 0 && s["delivered_total"] == 1
    });
    assert_eq!(s["failed_attempts_total"], 3, "{s}");
    assert_eq!(s["dead_letters"], json!([]), "{s}");
    assert_eq!(s["state"], "ok", "{s}");
}

#[test]
fn a_429_with_retry_after_is_retried_no_sooner_than_asked() {
    let rx = Receiver::start();
    rx.script(vec![Reply::Status(
        429,
        vec![("retry-after".into(), "2".into())],
    )]);
    let d = daemon(
        &[("hook", &rx.url())],
        r#"["invoice.issued"]"#,
        "[50, 50]",
        5000,
    );
    issue_invoice(&d, "Rate Limited", one_line("10.00"));
    rx.wait_for(1);
    let s = sink_until(&d, "hook", "the 429 recorded", |s| {
        s["retrying"][0]["last_status"] == 429
    });
    assert_eq!(s["state"], "retrying", "{s}");
    let got = rx.wait_for(2);
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}, Retry-After said 2 s"
    );
    assert_eq!(got[1].answered, Some(200));
    sink_until(&d, "hook", "delivered", |s| s["pending"] == 0);
}

#[test]
fn a_receiver_that_never_answers_times_out_and_the_event_is_retried() {
    let rx = Receiver::start();
    rx.script(vec![Reply::Hang]);
    let d = daemon(
        &[("hook", &rx.url())],
        r#"["invoice.issued"]"#,
        "[3000]",
        500,
    );
    issue_invoice(&d, "Silent Receiver", one_line("10.00"));
    let s = sink_until(&d, "hook", "a timed-out attempt", |s| {
        s["retrying"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer"))
    });
    assert_eq!(s["retrying"][0]["last_status"], Value::Null, "{s}");
    let got = rx.wait_for(2);
    assert_eq!(got[0].id, got[1].id);
    assert_eq!(got[1].answered, Some(200));
    sink_until(&d, "hook", "delivered", |s| {
        s["pending"] == 0 && s["delivered_total"] == 1
    });
}

#[test]
fn a_401_becomes_a_dead_letter_the_sink_shows_an_error_and_retry_sends_it_again() {
    let rx = Receiver::start();
    rx.script(vec![Reply::Status(401, vec![])]);
    let d = daemon(
        &[("hook", &rx.url())],
        r#"["invoice.issued"]"#,
        "[100, 100, 100]",
        5000,
    );
    issue_invoice(&d, "Wrong Secret", one_line("10.00"));
    let s = sink_until(&d, "hook", "a dead letter", |s| {
        s["dead_letters"].as_array().is_some_and(|l| l.len() == 1)
    });
    assert_eq!(s["state"], "error", "{s}");
    assert!(
        s["last_error"].as_str().unwrap_or_default().contains("401"),
        "{s}"
    );
    let dead = &s["dead_letters"][0];
    assert_eq!(dead["attempts"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(dead["attempts"][0]["status"], 401, "{s}");
    assert_eq!(
        s["retrying"],
        json!([]),
        "a refused event is not retried on its own: {s}"
    );
    assert_eq!(rx.requests().len(), 1);
    let table = cli(&d, &["outbox"]).stdout;
    assert!(
        table.contains("hook") && table.contains("error") && table.contains("401"),
        "{table}"
    );
    let event = dead["event_id"].as_u64().unwrap().to_string();
    cli(&d, &["outbox", "retry", "hook", &event]);
    let got = rx.wait_for(2);
    assert_eq!(got[1].id, got[0].id);
    assert_eq!(got[1].answered, Some(200));
    let s = sink_until(&d, "hook", "the retried dead letter delivered", |s| {
        s["dead_letters"] == json!([]) && s["pending"] == 0 && s["delivered_total"] == 1
    });
    assert_eq!(s["state"], "ok", "{s}");
}

#[test]
fn after_the_last_retry_the_event_is_a_dead_letter_with_every_attempt() {
    let rx = Receiver::start();
    rx.script(vec![Reply::Status(500, vec![]); 3]);
    let d = daemon(
        &[("hook", &rx.url())],
        r#"["invoice.issued"]"#,
        "[100, 100]",
        5000,
    );
    issue_invoice(&d, "Always Down", one_line("10.00"));
    let s = sink_until(&d, "hook", "a dead letter", |s| {
        s["dead_letters"].as_array().is_some_and(|l| l.len() == 1)
    });
    let attempts = s["dead_letters"][0]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attempts.len(), 3, "{s}");
    assert!(
        attempts
            .iter()
            .all(|a| a["status"] == 500 && a["error"].as_str().is_some_and(|e| e.contains("500"))),
        "{s}"
    );
    assert_eq!(rx.requests().len(), 3);
    assert_eq!(
        s["pending"], 0,
        "a dead letter does not hold the cursor: {s}"
    );
    let event = s["dead_letters"][0]["event_id"]
        .as_u64()
        .unwrap()
        .to_string();
    cli(&d, &["outbox", "retry", "hook", &event]);
    let got = rx.wait_for(4);
    assert_eq!(got[3].answered, Some(200));
    sink_until(&d, "hook", "delivered", |s| {
        s["dead_letters"] == json!([]) && s["delivered_total"] == 1
    });
}

#[test]
fn kill_9_after_the_receiver_got_an_event_redelivers_it_with_the_same_webhook_id() {
    let rx = Receiver::start();
    // The receiver takes the event in and the daemon dies before it learns so: its cursor never moved.
    rx.script(vec![Reply::Hang]);
    let mut d = daemon(
        &[("hook", &rx.url())],
        r#"["invoice.issued"]"#,
        "[100]",
        30_000,
    );
    issue_invoice(&d, "Crash Test", one_line("10.00"));
    let first = rx.wait_for(1);
    d.kill9();
    d.spawn();
    let got = rx.wait_for(2);
    assert_eq!(
        got[1].id, first[0].id,
        "the redelivery carries the same webhook-id"
    );
    assert_eq!(got[1].answered, Some(200));
    assert_signed(&got);
    sink_until(&d, "hook", "delivered after the restart", |s| {
        s["pending"] == 0 && s["delivered_total"] == 1
    });
}

#[test]
fn a_paused_sink_holds_its_events_while_others_deliver_and_sends_them_in_order_on_resume() {
    let (paused_rx, other_rx) = (Receiver::start(), Receiver::start());
    let d = daemon(
        &[("paused", &paused_rx.url()), ("other", &other_rx.url())],
        ALL_EVENTS,
        "[100]",
        5000,
    );
    cli(&d, &["outbox", "pause", "paused"]);
    let inv = issue_invoice(&d, "Paused Co", one_line("30.00"));
    pay(&d, &inv, "30.00");
    other_rx.wait_for(4);
    let s = sink_until(&d, "paused", "four pending events", |s| s["pending"] == 4);
    assert_eq!(s["state"], "paused", "{s}");
    assert!(paused_rx.requests().is_empty(), "a paused sink delivered");
    cli(&d, &["outbox", "resume", "paused"]);
    let got = paused_rx.wait_for(4);
    assert_signed(&got);
    assert_invoice_in_order(&got, inv["number"].as_str().unwrap());
    sink_until(&d, "paused", "caught up", |s| {
        s["pending"] == 0 && s["state"] == "ok"
    });
}

#[test]
fn a_retrying_invoice_holds_back_only_its_own_later_events() {
    let rx = Receiver::start();
    let d = daemon(
        &[("hook", &rx.url())],
        ALL_EVENTS,
        "[300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300]",
        5000,
    );
    let a = issue_invoice(&d, "Stuck Entity", one_line("40.00"));
    let a_number = a["number"].as_str().unwrap().to_string();
    rx.wait_for(2);
    // From now on the receiver refuses anything about invoice A.
    rx.fail_matching(Some((&a_number, 503)));
    pay(&d, &a, "40.00");
    sink_until(&d, "hook", "invoice A retrying", |s| {
        s["retrying"].as_array().is_some_and(|r| {
            r.iter()
                .any(|x| x["type"] == "invoice.payment_status_changed")
        })
    });
    let b = issue_invoice(&d, "Free Entity", one_line("50.00"));
    let b_number = b["number"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rx
        .requests()
        .iter()
        .any(|r| r.body["data"]["number"] == b_number.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "invoice B waited behind invoice A: {:#?}",
            rx.requests()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rx.fail_matching(None);
    sink_until(&d, "hook", "all delivered", |s| {
        s["pending"] == 0 && s["retrying"] == json!([])
    });
    let delivered: Vec<_> = rx
        .requests()
        .into_iter()
        .filter(|r| r.answered == Some(200))
        .collect();
    assert_signed(&delivered);
    assert_invoice_in_order(&delivered, &a_number);
}

#[test]
fn replay_from_an_event_delivers_it_and_every_later_one_again() {
    let rx = Receiver::start();
    let d = daemon(
        &[("hook", &rx.url())],
        r#"["invoice.issued"]"#,
        "[100]",
        5000,
    );
    issue_invoice(&d, "Replay One", one_line("10.00"));
    issue_invoice(&d, "Replay Two", one_line("20.00"));
    let first = rx.wait_for(2);
    sink_until(&d, "hook", "both delivered", |s| {
        s["pending"] == 0 && s["delivered_total"] == 2
    });
    let from = first
        .iter()
        .filter_map(|r| r.body["data"]["event_id"].as_u64())
        .min()
        .unwrap()
        .to_string();
    cli(&d, &["outbox", "replay", "hook", "--from", &from]);
    let got = rx.wait_for(4);
    // Two invoices are two entities: the replay keeps no order between them, only the ids.
    let mut first_ids: Vec<&str> = got[..2].iter().map(|r| r.id.as_str()).collect();
    let mut replayed: Vec<&str> = got[2..].iter().map(|r| r.id.as_str()).collect();
    first_ids.sort();
    replayed.sort();
    assert_eq!(
        replayed, first_ids,
        "the replay sends the same events with the same ids"
    );
    sink_until(&d, "hook", "caught up again", |s| {
        s["pending"] == 0 && s["delivered_total"] == 4
    });
}

#[test]
fn a_sink_plugin_that_panics_is_quarantined_and_its_events_wait_unlost() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        config: "[outbox]\nretry_schedule_ms = [50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50]\n\
                 [[connector]]\nname = \"boom\"\nplugin = \"panics\"\nevents = [\"invoice.issued\"]\n"
            .into(),
    });
    let lib = target_dir().join("libsettled_fixture_panics.so");
    std::fs::copy(
        &lib,
        d.dir.path().join("plugins/libsettled_fixture_panics.so"),
    )
    .expect("copy fixture");
    issue_invoice(&d, "Panicky Sink", one_line("10.00"));
    let s = sink_until(&d, "boom", "the sink's plugin quarantined", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("quarantined"))
    });
    assert_eq!(
        s["dead_letters"],
        json!([]),
        "no event given up on while the plugin is broken: {s}"
    );
    assert_eq!(s["pending"], 1, "{s}");
    let attempts = s["retrying"][0]["attempts"].as_u64().unwrap_or(0);
    assert_eq!(
        attempts, 5,
        "the panics before the quarantine count, the refusals after it do not: {s}"
    );
    assert!(
        s["retrying"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked")),
        "{s}"
    );
}

#[test]
fn a_sink_paused_for_10000_events_then_resumed_delivers_each_once() {
    const EVENTS: usize = 10_000;
    let rx = Receiver::start();
    let d = Daemon::start(Setup {
        plugins: vec!["webhook", "bank-csv"],
        config: sinks_config(
            &[("hook", &rx.url())],
            r#"["review.queued"]"#,
            "[100]",
            5000,
        ) + "[[connector]]\nname = \"bank-csv\"\nplugin = \"bank-csv\"\n",
    });
    cli(&d, &["outbox", "pause", "hook"]);
    // Bank lines that match no invoice: each one a payment in the review queue and a `review.queued` event.
    let mut csv = String::from("Date,Amount,Currency,Counterparty,Description,Transaction Id\n");
    for i in 0..EVENTS {
        csv.push_str(&format!(
            "2026-03-05,{}.{:02},EUR,Payer {i},unknown {i},P{i}\n",
            1 + i % 900,
            i % 100
        ));
    }
    let summary = import_json(&d, "unmatched.csv", &csv);
    assert_eq!(summary["review"], EVENTS, "{summary}");
    let s = sink_until(&d, "hook", "every event pending", |s| {
        s["pending"] == EVENTS
    });
    assert_eq!(s["state"], "paused", "{s}");
    assert!(s["lag_seconds"].as_i64().is_some(), "{s}");
    let table = cli(&d, &["outbox"]).stdout;
    assert!(
        table.contains("paused") && table.contains("10000"),
        "{table}"
    );
    assert!(rx.requests().is_empty(), "a paused sink delivered");
    cli(&d, &["outbox", "resume", "hook"]);
    d.eventually_within("every event delivered", Duration::from_secs(600), || {
        std::thread::sleep(Duration::from_millis(400));
        Some(sink(&d, "hook")).filter(|s| s["pending"] == 0 && s["delivered_total"] == EVENTS)
    });
    let got = rx.requests();
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), EVENTS, "every event arrived");
    let s = sink(&d, "hook");
    let failed = s["failed_attempts_total"].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        got.len(),
        EVENTS + failed,
        "each event once, plus one request per failed attempt only: {s}"
    );
    assert_signed(&got);
    assert!(got.iter().all(|r| r.kind() == "review.queued"));
    assert_eq!(s["state"], "ok", "{s}");
    assert_eq!(s["lag_seconds"], 0, "{s}");
}
