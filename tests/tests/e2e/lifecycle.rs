//! Starting, stopping and crashing the real daemon: config errors, locks, schema versions, kill -9, SIGTERM,
//! backup and restore, and the README's first command (`settled demo`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::harness::{fixture, import_json, run, settled, Daemon, Setup, TOKEN};

#[test]
fn an_unknown_config_key_stops_start_up_naming_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("settled.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n\n[invoicing]\npayment_term_days = 14\n",
    )
    .unwrap();
    let mut cmd = settled(dir.path());
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    let r = run(cmd);
    assert!(!r.status.success(), "{r}");
    assert!(r.stderr.contains("payment_term_days"), "{r}");
    assert!(r.stderr.contains("line 4"), "{r}");
    assert!(r.stderr.contains("settled.toml"), "{r}");
}

#[test]
fn a_second_daemon_on_a_locked_data_dir_exits_with_a_clear_message() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let mut cmd = settled(d.dir.path());
    cmd.args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.data_dir())
        .env("SETTLED_API_TOKEN", TOKEN);
    let r = run(cmd);
    assert!(!r.status.success(), "{r}");
    assert!(
        r.stderr.contains("locked by another running settled"),
        "{r}"
    );
}

#[test]
fn a_store_with_an_unknown_schema_version_is_refused_with_the_restore_command() {
    let mut d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    d.terminate();
    // Rewrite the schema marker through a backup edited by hand, as a newer settled would have left it.
    let backup = d.dir.path().join("b.jsonl");
    let mut cmd = settled(d.dir.path());
    cmd.arg("backup")
        .arg(&backup)
        .arg("--data-dir")
        .arg(d.data_dir());
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    let text = std::fs::read_to_string(&backup).unwrap();
    // The schema this settled writes, as its backup's header names it.
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let schema = header["schema"]
        .as_u64()
        .expect("the header names the schema");
    let text = text.replace(
        &format!("{{\"k\":\"m/schema\",\"v\":{schema}}}"),
        "{\"k\":\"m/schema\",\"v\":99}",
    );
    assert!(
        text.contains("\"v\":99"),
        "backup holds the schema key: {text}"
    );
    let newer = d.dir.path().join("newer");
    std::fs::create_dir_all(&newer).unwrap();
    // Restore refuses a backup of another schema...
    std::fs::write(
        &backup,
        text.replacen(&format!("\"schema\":{schema}"), "\"schema\":99", 1),
    )
    .unwrap();
    let mut cmd = settled(d.dir.path());
    cmd.arg("restore")
        .arg(&backup)
        .arg("--data-dir")
        .arg(&newer);
    let r = run(cmd);
    assert!(!r.status.success(), "{r}");
    assert!(r.stderr.contains("schema 99"), "{r}");
}

#[test]
fn kill_9_during_a_stream_of_writes_loses_no_acknowledged_write() {
    let mut d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let url = d.url("/v1/leads");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let email = format!("w{w}-{i}@stream.example");
                    let resp = http
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .json(&json!({"name": "S", "email": email}))
                        .send();
                    match resp {
                        Ok(r) if r.status().as_u16() == 201 => {
                            acknowledged.lock().unwrap().push(email)
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();
    d.eventually("200 acknowledged writes", || {
        (acknowledged.lock().unwrap().len() >= 200).then_some(())
    });
    d.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    d.spawn();
    let acked = acknowledged.lock().unwrap().clone();
    let mut stored = Vec::new();
    let mut after = String::new();
    loop {
        let page = d.ok("GET", &format!("/v1/leads?limit=1000&after={after}"), None);
        let items = page["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        after = items.last().unwrap()["id"].as_str().unwrap().to_string();
        stored.extend(
            items
                .into_iter()
                .map(|l| l["email"].as_str().unwrap().to_string()),
        );
    }
    for email in &acked {
        assert!(
            stored.contains(email),
            "acknowledged lead {email} was lost ({} acked, {} stored)",
            acked.len(),
            stored.len()
        );
    }
    // Nothing half-written: every stored lead has its audit event.
    let events = d.ok("GET", "/v1/events?limit=10000", None);
    let captured = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "lead.captured")
        .count();
    assert_eq!(captured, stored.len());
}

#[test]
fn the_running_daemon_gives_freed_memory_back_on_jemalloc_s_background_thread() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let tasks = format!("/proc/{}/task", d.pid());
    let names: Vec<String> = std::fs::read_dir(&tasks)
        .unwrap_or_else(|e| panic!("reading {tasks}: {e}"))
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    // jemalloc names the thread that purges freed pages (`background_thread:true` in settled::JEMALLOC_CONF).
    assert!(
        names.iter().any(|name| name == "jemalloc_bg_thd"),
        "threads of the daemon: {names:?}"
    );
}

#[test]
fn sigterm_stops_the_daemon_cleanly_with_exit_0_and_keeps_the_data() {
    let mut d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    d.ok(
        "POST",
        "/v1/leads",
        Some(json!({"name": "Kept", "email": "kept@example.com"})),
    );
    let status = d.terminate();
    assert!(status.success(), "exit status {status}\n{}", d.log_text());
    assert!(d.log_text().contains("stopped cleanly"), "{}", d.log_text());
    d.spawn();
    let leads = d.ok("GET", "/v1/leads", None);
    assert_eq!(leads["items"][0]["email"], "kept@example.com");
}

#[test]
fn backup_and_restore_move_every_record_to_a_new_data_dir() {
    let mut d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let inv = crate::harness::issue_invoice(&d, "Backup", crate::harness::one_line("12.00"));
    d.terminate();
    let file = d.dir.path().join("backup.jsonl");
    let mut cmd = settled(d.dir.path());
    cmd.arg("backup")
        .arg(&file)
        .arg("--data-dir")
        .arg(d.data_dir());
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    restore_and_point_at(&d, &file, &d.dir.path().join("moved"));
    d.spawn();
    let restored = d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(restored["number"], inv["number"]);
    assert_eq!(restored["total"], "12.00");
    // Numbering continues after the restored counter.
    let next = crate::harness::issue_invoice(&d, "Backup Two", crate::harness::one_line("1.00"));
    assert_ne!(next["number"], inv["number"]);
}

/// A backup of schema 3 rewritten as schema 2 wrote it: every seen key `s/<key>` of its own instead of in `S/` blocks.
/// `settled restore FILE --data-dir DIR`, then point the (stopped) daemon's config at DIR.
fn restore_and_point_at(d: &Daemon, file: &std::path::Path, dir: &std::path::Path) {
    let mut cmd = settled(d.dir.path());
    cmd.arg("restore").arg(file).arg("--data-dir").arg(dir);
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    let config = std::fs::read_to_string(d.dir.path().join("settled.toml")).unwrap();
    let config = config.replace(
        &d.data_dir().display().to_string(),
        &dir.display().to_string(),
    );
    std::fs::write(d.dir.path().join("settled.toml"), config).unwrap();
}

fn as_schema_2_backup(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
        if row["format"] == "settled-backup" {
            row["schema"] = json!(2);
        } else if row["k"] == "m/schema" {
            row["v"] = json!(2);
        } else if row["k"].as_str().unwrap().starts_with("S/") {
            for pair in row["v"].as_array().unwrap() {
                let key = format!("s/{}", pair[0].as_str().unwrap());
                out.push_str(&format!("{}\n", json!({"k": key, "v": pair[1]})));
            }
            continue;
        }
        out.push_str(&format!("{row}\n"));
    }
    out
}

#[test]
fn a_bank_file_imported_again_after_a_restart_a_kill_9_and_a_restore_from_schema_2_records_nothing_twice(
) {
    let mut d = Daemon::start(Setup {
        plugins: vec!["camt"],
        ..Setup::default()
    });
    let statement = std::fs::read_to_string(fixture("real/camt/camt053.v8.xml")).unwrap();
    let first = import_json(&d, "statement.xml", &statement);
    let new = first["new"].as_u64().unwrap();
    assert!(new > 0, "{first}");
    let payments = |d: &Daemon| d.ok("GET", "/v1/payments", None);
    let recorded = payments(&d);
    let again = |d: &Daemon, when: &str| {
        let summary = import_json(d, "statement.xml", &statement);
        assert_eq!(summary["new"], 0, "{when}: {summary}");
        assert!(
            summary["duplicates"].as_u64().unwrap() >= new,
            "{when}: {summary}"
        );
        assert_eq!(payments(d), recorded, "{when}");
    };
    again(&d, "while running");
    d.terminate();
    d.spawn();
    again(&d, "after a restart");
    d.kill9();
    d.spawn();
    again(&d, "after kill -9");

    // The same store as schema 2 kept it, through a backup: restored, converted, and still recognising every line.
    d.terminate();
    let file = d.dir.path().join("backup.jsonl");
    let mut cmd = settled(d.dir.path());
    cmd.arg("backup")
        .arg(&file)
        .arg("--data-dir")
        .arg(d.data_dir());
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    let old = as_schema_2_backup(&std::fs::read_to_string(&file).unwrap());
    assert!(old.contains("{\"k\":\"s/pay:camt:"), "{old}");
    std::fs::write(&file, old).unwrap();
    restore_and_point_at(&d, &file, &d.dir.path().join("from-schema-2"));
    d.spawn();
    again(&d, "after restoring a schema 2 backup");
}

#[test]
fn the_demo_walks_a_lead_to_a_paid_invoice_delivered_to_a_signed_webhook_and_the_journal_and_a_mail_to_a_lead(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = settled(dir.path());
    cmd.arg("demo")
        .arg("--demo-dir")
        .arg(dir.path().join("demo"));
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    assert!(r.stdout.contains("status paid"), "{r}");
    let paid_webhook = r.stdout.lines().find(|l| {
        l.contains("webhook-id evt_")
            && l.contains("invoice.payment_status_changed")
            && l.contains("-> paid")
    });
    assert!(
        paid_webhook.is_some_and(|l| l.contains("balance 0.00") && l.contains("signature valid")),
        "{r}"
    );
    assert!(!r.stdout.contains("INVALID"), "{r}");
    // tests/run installs hledger-web; without it the demo says how to get the journal.
    let has_hledger_web = std::process::Command::new("hledger-web")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_hledger_web {
        assert!(r.stdout.contains("settled-event:"), "{r}");
        assert!(
            r.stdout
                .contains("assets:receivable:Analytical Engines Ltd"),
            "{r}"
        );
    } else {
        assert!(r.stdout.contains("apt-get install hledger-web"), "{r}");
    }
    // The mail step: an enquiry delivered to the demo's Maildir becomes a lead.
    assert!(
        r.stdout.contains("Grace Hopper <grace@compilers.example>")
            && r.stdout.contains("source email"),
        "{r}"
    );
    assert!(r.stdout.contains("demo finished"), "{r}");
}
