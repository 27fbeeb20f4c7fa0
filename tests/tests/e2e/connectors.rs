//! Connector plugins through the real daemon: web-form intake over HTTP, the file inbox and `settled import`
//! with real bank files and statements a bank would produce for invoices settled issued.

use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{
    fixture, issue_invoice, one_line, run, settled, wait_for_file, Daemon, Setup, TOKEN,
};

fn typeform_signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!(
        "sha256={}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn lead_count(d: &Daemon) -> usize {
    d.ok("GET", "/v1/leads", None)["items"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn web_form_leads_arrive_signed_replays_dedupe_and_the_honeypot_drops_bots() {
    let d = Daemon::start(Setup {
        plugins: vec!["webform"],
        config: r#"
[[connector]]
name = "site"
plugin = "webform"
settings = { honeypot = "website", redirect = "https://example.com/thanks" }

[[connector]]
name = "typeform"
plugin = "webform"
isolation = "in-process"
settings = { source = "ad", signature = { style = "typeform", secret = "s3cret" } }
"#
        .into(),
    });
    // A plain HTML form post: redirected after the lead is committed.
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .post(d.url("/intake/site"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Linus&email=linus%40kernel.example&company=Kernel&website=")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "https://example.com/thanks");
    assert_eq!(lead_count(&d), 1);
    // A bot fills the honeypot: it sees the same success, nothing is recorded.
    let resp = http
        .post(d.url("/intake/site"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Bot&email=bot%40spam.example&website=http%3A%2F%2Fspam.example")
        .send()
        .unwrap();
    assert!(
        resp.status().is_success() || resp.status().as_u16() == 303,
        "{}",
        resp.status()
    );
    assert_eq!(lead_count(&d), 1);
    // A signed Typeform webhook, then the same delivery again.
    let body = json!({"event_id": "01TYPEFORMEVENT", "event_type": "form_response", "form_response": {
        "form_id": "abc", "token": "tok", "submitted_at": "2026-03-01T10:00:00Z",
        "definition": {"fields": []},
        "answers": [
            {"type": "text", "text": "Margaret Hamilton", "field": {"id": "1", "type": "short_text", "ref": "name"}},
            {"type": "email", "email": "margaret@apollo.example", "field": {"id": "2", "type": "email", "ref": "email"}},
            {"type": "text", "text": "Apollo", "field": {"id": "3", "type": "short_text", "ref": "company"}}
        ]}})
    .to_string();
    let send = |sig: &str| {
        http.post(d.url("/intake/typeform"))
            .header("content-type", "application/json")
            .header("typeform-signature", sig)
            .body(body.clone())
            .send()
            .unwrap()
    };
    let first: Value = send(&typeform_signature("s3cret", &body)).json().unwrap();
    assert_eq!(first["new"], 1, "{first}");
    let replay: Value = send(&typeform_signature("s3cret", &body)).json().unwrap();
    assert_eq!(replay["duplicates"], 1, "{replay}");
    assert_eq!(lead_count(&d), 2);
    // A wrong signature is rejected and records nothing.
    let resp = send(&typeform_signature("wrong", &body));
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(lead_count(&d), 2);
    let leads = d.ok("GET", "/v1/leads", None);
    let margaret = leads["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["email"] == "margaret@apollo.example")
        .unwrap();
    assert_eq!(margaret["source"], "ad");
    // The intake calls show up in the plugin status.
    let plugins = d.ok("GET", "/v1/plugins", None);
    assert!(plugins.to_string().contains("typeform"), "{plugins}");
}

#[test]
fn a_bank_csv_dropped_in_the_inbox_marks_the_invoices_it_pays_and_a_bad_file_is_set_aside() {
    let d = Daemon::start(Setup::default());
    let a = issue_invoice(&d, "Alpha Trading", one_line("120.00"));
    let b = issue_invoice(&d, "Beta Works", one_line("80.00"));
    let c = issue_invoice(&d, "Gamma", one_line("45.50"));
    let num = |v: &Value| v["number"].as_str().unwrap().to_string();
    let year = &num(&a)[4..8];
    let (an, bn) = (num(&a), num(&b));
    let b_seq = bn
        .rsplit('-')
        .next()
        .unwrap()
        .trim_start_matches('0')
        .to_string();
    let csv = format!(
        "Date,Amount,Currency,Counterparty,Description,Transaction Id\n\
         2026-03-05,120.00,EUR,Alpha Trading Ltd,Invoice {an} thank you,T1\n\
         2026-03-05,30.00,EUR,Beta Works,\"part payment inv {year}/{b_seq}\",T2\n\
         2026-03-06,45.50,EUR,Gamma,{rf},T3\n\
         2026-03-06,-12.00,EUR,Office Supplies,stationery,T4\n",
        rf = c["rf_reference"].as_str().unwrap(),
    );
    let inbox = d.data_dir().join("inbox");
    d.eventually("the inbox folder", || inbox.exists().then_some(()));
    std::fs::write(inbox.join(".statement.csv.part"), &csv).unwrap();
    std::fs::rename(
        inbox.join(".statement.csv.part"),
        inbox.join("statement.csv"),
    )
    .unwrap();
    let done = wait_for_file(&d, &inbox.join("done"), "statement.csv");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.summary.json", done.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary["new"].as_u64(), summary["ignored"].as_u64()),
        (Some(3), Some(1)),
        "the outgoing payment settles nothing: {summary}"
    );
    assert_eq!(summary["partially_matched"], 1, "{summary}");
    let status = |v: &Value| {
        d.ok(
            "GET",
            &format!("/v1/invoices/{}", v["id"].as_str().unwrap()),
            None,
        )["payment_status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status(&a), "paid");
    assert_eq!(status(&b), "partially_paid");
    assert_eq!(status(&c), "paid");
    // The same statement again: recognised, nothing changes.
    std::fs::write(inbox.join("statement-again.csv"), &csv).unwrap();
    let done = wait_for_file(&d, &inbox.join("done"), "statement-again.csv");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.summary.json", done.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary["new"].as_u64(), summary["duplicates"].as_u64()),
        (Some(0), Some(4)),
        "{summary}"
    );
    // A CSV whose date does not parse: moved to failed/ with the row and column named, nothing recorded.
    let payments_before = d.ok("GET", "/v1/payments?limit=1000", None)["items"]
        .as_array()
        .unwrap()
        .len();
    std::fs::write(
        inbox.join("broken.csv"),
        "Date,Amount,Currency,Description\n2026-03-05,1.00,EUR,ok\n05/03/2026x,2.00,EUR,bad\n",
    )
    .unwrap();
    let failed = wait_for_file(&d, &inbox.join("failed"), "broken.csv");
    let why = std::fs::read_to_string(format!("{}.error", failed.display())).unwrap();
    assert!(why.contains("line 3"), "{why}");
    assert!(why.contains("Date"), "{why}");
    assert_eq!(
        d.ok("GET", "/v1/payments?limit=1000", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        payments_before
    );
}

#[test]
fn every_real_sample_file_imports_through_the_cli_and_a_reimport_changes_nothing() {
    let d = Daemon::start(Setup {
        plugins: vec!["camt", "mt940", "ofx", "bank-csv", "qif", "bai2"],
        ..Setup::default()
    });
    let files = [
        "real/camt/camt053.v8.xml",
        "real/camt/camt053.v2.multi.statement.xml",
        "real/camt/camt054.v8.xml",
        "real/mt940/sepa_snippet.sta",
        "real/mt940/buxtehude.sta",
        "real/ofx/bank_medium.ofx",
        "real/ofx/suncorp.ofx",
        "real/ofx/anzcc.ofx",
        "real/ofx/8859-1.qfx",
        "real/qif/data-payee-memo.qif",
        "real/bai2/sample1.txt",
    ];
    for file in files {
        let import = |expect_new: bool| {
            let mut cmd = settled(d.dir.path());
            cmd.args(["import", "--json", "--url", &d.url("")])
                .arg(fixture(file))
                .env("SETTLED_API_TOKEN", TOKEN);
            let r = run(cmd);
            assert!(r.status.success(), "{file}: {r}");
            let summary: Value = serde_json::from_str(r.stdout.trim())
                .unwrap_or_else(|e| panic!("{file}: {e}: {r}"));
            let summary = if summary.is_array() {
                summary[0].clone()
            } else {
                summary
            };
            let read = summary["records_read"].as_u64().unwrap();
            assert!(read > 0, "{file}: {summary}");
            if expect_new {
                assert_eq!(summary["duplicates"], 0, "{file}: {summary}");
            } else {
                assert_eq!(summary["new"], 0, "{file}: {summary}");
            }
        };
        import(true);
        import(false);
    }
    // A binary file is refused with a clear message and a non-zero exit.
    let junk = d.dir.path().join("junk.xml");
    std::fs::write(&junk, [0u8, 159, 146, 150, 255, 0, 1, 2]).unwrap();
    let mut cmd = settled(d.dir.path());
    cmd.args(["import", "--url", &d.url("")])
        .arg(&junk)
        .env("SETTLED_API_TOKEN", TOKEN);
    let r = run(cmd);
    assert!(!r.status.success(), "{r}");
    assert!(r.stderr.contains("error"), "{r}");
}

#[test]
fn an_mt940_statement_for_invoices_settled_issued_pays_them() {
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Sepa Kunde GmbH", one_line("250.00"));
    let number = inv["number"].as_str().unwrap();
    let statement = format!(
        ":20:STARTUMS\r\n:25:DE89370400440532013000\r\n:28C:00001/001\r\n:60F:C260301EUR1000,00\r\n\
         :61:2603050305CR250,00NTRFNONREF//BANKREF1\r\n\
         :86:166?00GUTSCHRIFT?20EREF+E2E-1?21SVWZ+Rechnung {n1}?22{n2}?30COBADEFFXXX?31DE02120300000000202051?32Sepa Kunde GmbH\r\n\
         :62F:C260305EUR1250,00\r\n-\r\n",
        n1 = &number[..6],
        n2 = &number[6..],
    );
    let path = d.dir.path().join("umsatz.sta");
    std::fs::write(&path, statement).unwrap();
    let mut cmd = settled(d.dir.path());
    cmd.args(["import", "--url", &d.url("")])
        .arg(&path)
        .env("SETTLED_API_TOKEN", TOKEN);
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    let after = d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(after["payment_status"], "paid", "{after}\n{r}");
}

fn stripe_header(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn a_signed_stripe_payment_pays_its_invoice_once_and_bad_or_stale_signatures_record_nothing() {
    let d = Daemon::start(Setup {
        plugins: vec!["stripe"],
        config: "[[connector]]\nname = \"stripe\"\nplugin = \"stripe\"\nsettings = { secret = \"whsec_test\" }\n".into(),
    });
    let inv = issue_invoice(&d, "Card Buyer", one_line("15.00"));
    let body = json!({"id": "evt_1", "type": "payment_intent.succeeded", "created": 1772000000, "data": {"object": {
        "id": "pi_1", "object": "payment_intent", "amount": 1500, "amount_received": 1500, "currency": "eur", "status": "succeeded",
        "created": 1772000000, "metadata": {"invoice": inv["number"]}}}})
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let post = |sig: String| {
        d.http()
            .post(d.url("/intake/stripe"))
            .header("content-type", "application/json")
            .header("stripe-signature", sig)
            .body(body.clone())
            .send()
            .unwrap()
    };
    // Stale (an hour old) and wrong-secret signatures are refused; nothing is recorded.
    assert_eq!(
        post(stripe_header("whsec_test", now - 3600, &body))
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        post(stripe_header("whsec_other", now, &body))
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        d.ok("GET", "/v1/payments", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Delivered three times: paid once.
    for _ in 0..3 {
        let resp = post(stripe_header("whsec_test", now, &body));
        assert!(
            resp.status().is_success(),
            "{}",
            resp.text().unwrap_or_default()
        );
    }
    let after = d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(after["payment_status"], "paid", "{after}");
    assert_eq!(
        after["allocations"][0]["rule"], "provider_metadata",
        "{after}"
    );
    assert_eq!(
        d.ok("GET", "/v1/payments", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_streamed_import_commits_everything_and_a_file_bad_near_its_end_records_nothing() {
    // Every file takes the streaming path (validate pass, then commit pass).
    let d = Daemon::start(Setup {
        plugins: vec!["bank-csv"],
        config: "[imports]\nstream_above_kib = 0\n".into(),
    });
    let inv = issue_invoice(&d, "Streamer", one_line("500.00"));
    let number = inv["number"].as_str().unwrap();
    let mut csv = String::from("Date,Amount,Currency,Counterparty,Description,Transaction Id\n");
    for i in 0..3000 {
        csv.push_str(&format!(
            "2026-03-05,0.10,EUR,Streamer,{number} part {i},S{i}\n"
        ));
    }
    let good = d.dir.path().join("big.csv");
    std::fs::write(&good, &csv).unwrap();
    let mut bad_text = csv.replace("S2999\n", "S2999\nnot-a-date,1.00,EUR,X,y,S3000\n");
    bad_text = bad_text.replace("S0\n", "Z0\n");
    let bad = d.dir.path().join("bad.csv");
    std::fs::write(&bad, &bad_text).unwrap();
    let import = |path: &Path| {
        let mut cmd = settled(d.dir.path());
        cmd.args(["import", "--json", "--url", &d.url("")])
            .arg(path)
            .env("SETTLED_API_TOKEN", TOKEN);
        run(cmd)
    };
    // The bad file first: its last line fails, so none of its 3,000 good lines may be recorded.
    let r = import(&bad);
    assert!(!r.status.success(), "{r}");
    assert!(r.stderr.contains("line 3002"), "{r}");
    assert_eq!(
        d.ok("GET", "/v1/payments?limit=10", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let r = import(&good);
    assert!(r.status.success(), "{r}");
    let summary: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let summary = if summary.is_array() {
        summary[0].clone()
    } else {
        summary
    };
    assert_eq!(summary["records_read"], 3000, "{summary}");
    assert_eq!(summary["new"], 3000, "{summary}");
    let after = d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(after["amount_paid"], "300.00", "{after}");
    assert_eq!(after["payment_status"], "partially_paid");
}
