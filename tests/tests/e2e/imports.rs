//! Uploads (`POST /v1/imports`) survive a crash: the spooled upload is the import's journal, finished after a restart.

use std::time::{Duration, Instant};

use crate::harness::{run, settled, Daemon, Setup, TOKEN};

/// Lines in the uploaded statement: enough that a kill lands while it is being committed.
const LINES: usize = 20_000;

fn payment_exists(d: &Daemon, n: usize) -> bool {
    d.call("GET", &format!("/v1/payments/pay_{n:08}"), None).0 == 200
}

#[test]
fn a_daemon_killed_mid_upload_finishes_the_import_by_itself_after_a_restart() {
    // Large uploads (above `stream_above_kib`) stream through the plugin and commit piece by piece.
    let mut d = Daemon::start(Setup {
        plugins: vec!["bank-csv"],
        config: "[imports]\nstream_above_kib = 0\n".into(),
    });
    let mut csv = String::from("Date,Amount,Currency,Counterparty,Description,Transaction Id\n");
    for i in 0..LINES {
        csv.push_str(&format!(
            "2026-03-05,{}.{:02},EUR,Payer {i},transfer {i},K{i}\n",
            1 + i % 900,
            i % 100
        ));
    }
    let url = d.url("/v1/imports?name=big.csv&plugin=bank-csv");
    let upload = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .and_then(|c| c.post(url).bearer_auth(TOKEN).body(csv).send())
            .map(|r| r.status().as_u16())
    });
    // Kill as soon as part of the file is committed (after the whole file was validated: seconds on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(300);
    while !payment_exists(&d, 1) {
        assert!(
            Instant::now() < deadline,
            "nothing was committed\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    let answered = upload.join().expect("upload thread");
    assert!(
        answered.is_err(),
        "the upload was answered ({answered:?}) before the kill; make the file larger"
    );
    d.spawn();
    // The restarted daemon finishes the import by itself.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !payment_exists(&d, LINES) {
        assert!(
            Instant::now() < deadline,
            "the import was not finished after the restart\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let imports = d.eventually("the import to be finished", || {
        let v = d.ok("GET", "/v1/imports", None);
        (v["items"][0]["status"] == "finished").then_some(v)
    });
    let items = imports["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{imports}");
    let import = &items[0];
    assert_eq!(import["resumed"], 1, "{import}");
    assert_eq!(import["file"], "big.csv", "{import}");
    assert_eq!(import["connector"], "bank-csv", "{import}");
    assert_eq!(import["counts"]["records_read"], LINES, "{import}");
    assert_eq!(
        import["counts"]["new"], LINES,
        "every line counted once: {import}"
    );
    assert_eq!(import["counts"]["duplicates"], 0, "{import}");
    // Every line exactly once.
    assert!(!payment_exists(&d, LINES + 1), "a line was recorded twice");
    let mut ids = std::collections::HashSet::new();
    let mut after = String::new();
    loop {
        let page = d.ok(
            "GET",
            &format!("/v1/payments?limit=1000&after={after}"),
            None,
        );
        let items = page["items"].as_array().unwrap();
        let Some(last) = items.last() else { break };
        after = last["id"].as_str().unwrap().to_string();
        for p in items {
            assert!(
                ids.insert(p["external_id"].as_str().unwrap().to_string()),
                "{p} recorded twice"
            );
        }
    }
    assert_eq!(ids.len(), LINES);
    let spool = d.data_dir().join("spool");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spool files left behind: {left:?}");
    // The CLI shows the same.
    let mut cmd = settled(d.dir.path());
    cmd.args(["imports", "--url", &d.url("")])
        .env("SETTLED_API_TOKEN", TOKEN);
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    let id = import["id"].as_str().unwrap();
    assert!(
        r.stdout.contains(id) && r.stdout.contains("finished"),
        "{r}"
    );
}
