//! Records a plugin produced but the engine refuses (a lead with email `a@b`, a payment in an unknown currency):
//! never acknowledged as success, always named, logged and counted.

use serde_json::Value;

use crate::harness::{issue_invoice, one_line, run, settled, wait_for_file, Daemon, Setup, TOKEN};

/// The `refused` counter of connector instance `name` in `GET /v1/plugins`.
fn refused_in_plugins(d: &Daemon, name: &str) -> Option<u64> {
    let plugins = d.ok("GET", "/v1/plugins", None);
    plugins["items"]
        .as_array()?
        .iter()
        .flat_map(|p| p["instances"].as_array().cloned().unwrap_or_default())
        .find(|i| i["name"] == name)
        .and_then(|i| i["refused"].as_u64())
}

/// The `settled_records_refused_total` sample of instance `name` in `/metrics`.
fn refused_in_metrics(d: &Daemon, name: &str) -> Option<u64> {
    let text = d.metrics()?;
    let prefix = format!("settled_records_refused_total{{instance=\"{name}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
}

fn count(d: &Daemon, path: &str) -> usize {
    d.ok("GET", path, None)["items"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

#[test]
fn a_web_form_lead_the_engine_refuses_gets_a_4xx_naming_the_field_no_redirect_and_is_counted() {
    let d = Daemon::start(Setup {
        plugins: vec!["webform"],
        config: r#"
[[connector]]
name = "site"
plugin = "webform"
settings = { redirect = "https://example.com/thanks" }
"#
        .into(),
    });
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |body: String| {
        http.post(d.url("/intake/site"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap()
    };
    // The plugin's loose check passes `a@b`; the engine's does not.
    let long_name = "n".repeat(400);
    let huge_message = "m".repeat(20_000);
    let cases = [
        ("name=Ada&email=a%40b".to_string(), "email"),
        (format!("name={long_name}&email=ada%40example.com"), "name"),
        (
            format!("name=Ada&email=ada%40example.com&message={huge_message}"),
            "message",
        ),
    ];
    for (i, (body, field)) in cases.into_iter().enumerate() {
        let resp = post(body);
        let status = resp.status().as_u16();
        assert!(
            resp.headers().get("location").is_none(),
            "a refused lead must not be redirected to the thank-you page ({field})"
        );
        let answer: Value = resp.json().unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "{field}: {status} {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(field)),
            "{answer}"
        );
        assert_eq!(count(&d, "/v1/leads"), 0, "nothing may be stored ({field})");
        let expected = Some(i as u64 + 1);
        assert_eq!(refused_in_plugins(&d, "site"), expected, "/v1/plugins");
        assert_eq!(refused_in_metrics(&d, "site"), expected, "/metrics");
    }
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("refused")
            && l.contains("site")
            && l.contains("webform")
            && l.contains("email")),
        "a warning names connector, plugin and field:\n{log}"
    );
    // A good lead still gets the redirect.
    let resp = post("name=Ada&email=ada%40example.com".into());
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(count(&d, "/v1/leads"), 1);
    assert_eq!(refused_in_plugins(&d, "site"), Some(3));
}

/// Three payments of which the second is in a currency the engine does not know.
fn statement_with_a_bad_second_line(d: &Daemon) -> (String, Value) {
    let inv = issue_invoice(d, "Alpha Trading", one_line("120.00"));
    let number = inv["number"].as_str().unwrap().to_string();
    let csv = format!(
        "Date,Amount,Currency,Counterparty,Description,Transaction Id\n\
         2026-03-05,120.00,EUR,Alpha Trading Ltd,Invoice {number},T1\n\
         2026-03-05,30.00,XYZ,Beta Works,something,T2\n\
         2026-03-06,45.50,EUR,Gamma,unknown,T3\n"
    );
    (csv, inv)
}

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

fn assert_lists_the_bad_line(summary: &Value) {
    let failed = summary["failed"].as_array().cloned().unwrap_or_default();
    assert_eq!(failed.len(), 1, "{summary}");
    assert_eq!(failed[0]["record"], 2, "{summary}");
    assert!(
        failed[0]["location"]
            .as_str()
            .is_some_and(|l| l.contains("line 3")),
        "{summary}"
    );
    assert_eq!(failed[0]["field"], "currency", "{summary}");
    assert!(
        failed[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("XYZ")),
        "{summary}"
    );
}

#[test]
fn a_file_with_a_record_the_engine_refuses_goes_to_failed_naming_its_position_and_records_nothing()
{
    let d = Daemon::start(Setup::default());
    let (csv, inv) = statement_with_a_bad_second_line(&d);
    let inbox = d.data_dir().join("inbox");
    d.eventually("the inbox folder", || inbox.exists().then_some(()));
    std::fs::write(inbox.join(".statement.csv.part"), &csv).unwrap();
    std::fs::rename(
        inbox.join(".statement.csv.part"),
        inbox.join("statement.csv"),
    )
    .unwrap();
    let failed = wait_for_file(&d, &inbox.join("failed"), "statement.csv");
    let why = std::fs::read_to_string(format!("{}.error", failed.display())).unwrap();
    assert!(why.contains("record 2"), "{why}");
    assert!(why.contains("line 3"), "{why}");
    assert!(why.contains("currency"), "{why}");
    assert_lists_the_bad_line(&read_json(&format!("{}.summary.json", failed.display())));
    assert!(
        std::fs::read_dir(inbox.join("done"))
            .unwrap()
            .next()
            .is_none(),
        "the file must not count as imported"
    );
    assert_eq!(count(&d, "/v1/payments?limit=100"), 0, "nothing recorded");
    let invoice = d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(invoice["payment_status"], "unpaid", "{invoice}");
    assert_eq!(refused_in_plugins(&d, "bank-csv"), Some(1));
    assert_eq!(refused_in_metrics(&d, "bank-csv"), Some(1));

    // The same file through `settled import`: a failure naming the record, nothing recorded.
    let path = d.dir.path().join("statement.csv");
    std::fs::write(&path, &csv).unwrap();
    let mut cmd = settled(d.dir.path());
    cmd.args(["import", "--url", &d.url("")])
        .arg(&path)
        .env("SETTLED_API_TOKEN", TOKEN);
    let r = run(cmd);
    assert!(!r.status.success(), "{r}");
    assert!(
        r.stderr.contains("record 2") && r.stderr.contains("line 3"),
        "{r}"
    );
    assert_eq!(count(&d, "/v1/payments?limit=100"), 0, "nothing recorded");
    // And through the API: a 4xx whose summary lists the record.
    let resp = d
        .http()
        .post(d.url("/v1/imports?name=statement.csv"))
        .bearer_auth(TOKEN)
        .body(csv.clone())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let answer: Value = resp.json().unwrap_or(Value::Null);
    assert!((400..500).contains(&status), "{status} {answer}");
    assert_lists_the_bad_line(&answer["error"]["summary"]);
    assert_eq!(count(&d, "/v1/payments?limit=100"), 0, "nothing recorded");
    assert_eq!(refused_in_plugins(&d, "bank-csv"), Some(3));
}

#[test]
fn with_allow_partial_a_file_keeps_its_good_records_and_lists_the_refused_ones() {
    // Every file streams (validate pass, commit pass); one strict and one lenient instance of the same plugin.
    let d = Daemon::start(Setup {
        plugins: vec!["bank-csv"],
        config: r#"
[imports]
stream_above_kib = 0

[[connector]]
name = "strict"
plugin = "bank-csv"

[[connector]]
name = "lenient"
plugin = "bank-csv"
allow_partial = true
"#
        .into(),
    });
    let (csv, inv) = statement_with_a_bad_second_line(&d);
    let path = d.dir.path().join("statement.csv");
    std::fs::write(&path, &csv).unwrap();
    let import = |instance: &str| {
        let mut cmd = settled(d.dir.path());
        cmd.args([
            "import",
            "--json",
            "--url",
            &d.url(""),
            "--plugin",
            instance,
        ])
        .arg(&path)
        .env("SETTLED_API_TOKEN", TOKEN);
        run(cmd)
    };
    let r = import("strict");
    assert!(!r.status.success(), "{r}");
    assert!(r.stderr.contains("record 2"), "{r}");
    assert_eq!(
        count(&d, "/v1/payments?limit=100"),
        0,
        "strict: nothing recorded"
    );

    let r = import("lenient");
    assert!(r.status.success(), "{r}");
    let summary: Value =
        serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r}"));
    let summary = if summary.is_array() {
        summary[0].clone()
    } else {
        summary
    };
    assert_eq!(summary["records_read"], 3, "{summary}");
    assert_eq!(summary["new"], 2, "{summary}");
    assert_lists_the_bad_line(&summary);
    assert_eq!(
        count(&d, "/v1/payments?limit=100"),
        2,
        "the good records are kept"
    );
    let invoice = d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(invoice["payment_status"], "paid", "{invoice}");
    assert_eq!(refused_in_plugins(&d, "strict"), Some(1));
    assert_eq!(refused_in_plugins(&d, "lenient"), Some(1));
}
