//! A full disk under a running daemon: a write that fails leaves no trace (not even until a restart), `/healthz`
//! answers 503 with the reason while the store cannot write, and the daemon recovers by itself when space returns.
//!
//! The data dir is a small tmpfs filled with a ballast file. Mounting needs root: the test is skipped (with a printed
//! reason) only when not running as root; as root a failing mount fails the test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{one_line, Daemon, Setup};

/// A tmpfs mounted for one test inside the test's temp dir, unmounted on drop (also when the test fails), which then
/// removes that temp dir.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (e.g. `16m`) at `dir`; `None` when not root, so mounting is impossible.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !running_as_root() {
            return None;
        }
        std::fs::create_dir_all(dir).expect("creating the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} failed although running as root: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process that did not die yet): detach it now, the kernel frees it when released.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        // The daemon's temp dir could not remove the mount point while it was mounted: finish its cleanup.
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Write a ballast file until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("creating the ballast file");
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![0x5a_u8; chunk];
        while file.write_all(&bytes).and_then(|()| file.flush()).is_ok() {}
    }
}

fn lead(n: usize) -> Value {
    json!({"name": format!("Lead {n}"), "email": format!("lead{n}@full.example"), "company": format!("Full {n}"), "source": "web"})
}

/// Lead -> converted -> quote accepted -> order -> draft invoice; returns the draft's id.
fn draft_invoice(d: &Daemon, n: usize) -> String {
    let lead = d.ok("POST", "/v1/leads", Some(lead(1000 + n)));
    let conv = d.ok(
        "POST",
        &format!(
            "/v1/leads/{}/convert",
            lead["id"].as_str().expect("lead id")
        ),
        Some(json!({"opportunity": {"name": "deal", "value": "100.00", "currency": "EUR"}})),
    );
    let q = d.ok(
        "POST",
        "/v1/quotes",
        Some(json!({"opportunity_id": conv["opportunity_id"], "currency": "EUR", "lines": one_line("100.00")})),
    );
    let qid = q["id"].as_str().expect("quote id");
    d.ok("POST", &format!("/v1/quotes/{qid}/send"), None);
    d.ok("POST", &format!("/v1/quotes/{qid}/accept"), None);
    let order = d.ok("POST", "/v1/orders", Some(json!({"quote_id": qid})));
    let inv = d.ok(
        "POST",
        "/v1/invoices",
        Some(json!({"order_id": order["id"]})),
    );
    inv["id"].as_str().expect("invoice id").to_string()
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["id"].as_str().map(str::to_string))
        .collect()
}

/// Every audit event, in order.
fn all_events(d: &Daemon) -> Vec<Value> {
    let list = d.ok("GET", "/v1/events?limit=10000", None);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn metric(d: &Daemon, name: &str) -> String {
    let (status, metrics) = d.call("GET", "/metrics", None);
    assert_eq!(status, 200, "{metrics}");
    let prefix = format!("{name} ");
    metrics
        .as_str()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix(prefix.as_str())))
        .unwrap_or_default()
        .to_string()
}

fn open_invoices_metric(d: &Daemon) -> String {
    metric(d, "settled_open_invoices")
}

/// While the disk is full, a read must not show anything that was not confirmed: either it answers 503 (the store is
/// closed) or it lists exactly the confirmed ids.
fn assert_no_unconfirmed(d: &Daemon, path: &str, confirmed: &[String]) {
    let (status, list) = d.call("GET", path, None);
    if status == 200 {
        assert_eq!(
            &ids(&list),
            confirmed,
            "GET {path} on a full disk lists a record whose write failed\n{}",
            d.log_text()
        );
    } else {
        assert_eq!(status, 503, "GET {path} on a full disk: {list}");
        assert_eq!(list["error"]["code"], "store_unavailable", "{list}");
    }
}

/// Poll `/healthz` until it answers `want`, or panic after 30 s; returns its body.
fn health_becomes(d: &Daemon, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = d.call("GET", "/healthz", None);
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still answers {status} ({body}), waited 30 s for {want}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fill the disk, then send `writes` in turn until one fails; returns the responses that succeeded and the failure.
fn write_until_it_fails(
    d: &Daemon,
    ballast: &Path,
    writes: impl IntoIterator<Item = (String, Option<Value>)>,
) -> (Vec<Value>, (u16, Value)) {
    fill(ballast);
    let mut confirmed = Vec::new();
    for (path, body) in writes {
        let (status, answer) = d.call("POST", &path, body);
        if (200..300).contains(&status) {
            confirmed.push(answer);
        } else {
            return (confirmed, (status, answer));
        }
    }
    panic!(
        "every write succeeded on a full disk ({} of them)\n{}",
        confirmed.len(),
        d.log_text()
    );
}

#[test]
fn a_write_that_fails_on_a_full_disk_leaves_no_trace_and_the_daemon_recovers_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let Some(_mount) = Tmpfs::mount(&data, "16m") else {
        eprintln!(
            "skipping the full-disk test: mounting a small filesystem needs root, and this test runs as another user"
        );
        return;
    };
    let ballast = data.join("ballast");
    let mut d = Daemon::start_in(
        dir,
        Setup {
            plugins: vec![],
            config: String::new(),
        },
    );

    // Round 1: leads (the reported case: the failed lead and its event were readable until a restart).
    let mut leads = vec![d.ok("POST", "/v1/leads", Some(lead(0)))["id"]
        .as_str()
        .expect("lead id")
        .to_string()];
    let (ok, (status, failed)) = write_until_it_fails(
        &d,
        &ballast,
        (1..200).map(|n| ("/v1/leads".to_string(), Some(lead(n)))),
    );
    leads.extend(
        ok.iter()
            .filter_map(|l| l["id"].as_str().map(str::to_string)),
    );
    assert_no_unconfirmed(&d, "/v1/leads?limit=1000", &leads);
    let (events_status, events) = d.call("GET", "/v1/events?limit=10000", None);
    if events_status == 200 {
        let about: Vec<&str> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["entity_id"].as_str())
            .collect();
        assert!(
            about.iter().all(|id| leads.iter().any(|l| l == id)),
            "an event of a failed write is readable: {about:?}, confirmed leads {leads:?}"
        );
    }
    let health = health_becomes(&d, 503);
    assert_eq!(health["status"], "unavailable", "{health}");
    let reason = health["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the disk is full (no space left on device)"),
        "/healthz must say why the store cannot write: {health}"
    );
    assert_eq!(status, 503, "a write that failed on a full disk: {failed}");
    assert_eq!(failed["error"]["code"], "store_unavailable", "{failed}");
    let (status, refused) = d.call("POST", "/v1/leads", Some(lead(500)));
    assert_eq!(status, 503, "a write while the store is closed: {refused}");
    assert_eq!(metric(&d, "settled_store_writable"), "0");

    std::fs::remove_file(&ballast).expect("removing the ballast");
    let health = health_becomes(&d, 200);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(metric(&d, "settled_store_writable"), "1");
    let listed = ids(&d.ok("GET", "/v1/leads?limit=1000", None));
    assert_eq!(
        listed, leads,
        "after recovery only the confirmed leads exist"
    );
    let events = all_events(&d);
    let event_ids: Vec<u64> = events.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(
        event_ids,
        (1..=leads.len() as u64).collect::<Vec<_>>(),
        "one event per confirmed lead, none for the failed one"
    );
    let next = d.ok("POST", "/v1/leads", Some(lead(600)));
    assert_eq!(
        next["id"],
        format!("lead_{:08}", leads.len() + 1),
        "the failed write took no lead id"
    );
    leads.push(next["id"].as_str().expect("lead id").to_string());
    let events = all_events(&d);
    assert_eq!(
        events.last().and_then(|e| e["id"].as_u64()),
        Some(leads.len() as u64),
        "the failed write took no event id"
    );

    // Round 2, same process: invoice numbers and the reconciliation index.
    let first = d.ok(
        "POST",
        &format!("/v1/invoices/{}/issue", draft_invoice(&d, 0)),
        Some(json!({})),
    );
    // sled may write the first changes after a reopening into file pages it already holds, so a few issues can
    // succeed on a full disk before one needs a new page.
    let drafts: Vec<String> = (1..=40).map(|n| draft_invoice(&d, n)).collect();
    assert_eq!(open_invoices_metric(&d), "1");
    let (issued, (status, failed)) = write_until_it_fails(
        &d,
        &ballast,
        drafts
            .iter()
            .map(|id| (format!("/v1/invoices/{id}/issue"), Some(json!({})))),
    );
    assert_eq!(status, 503, "issuing on a full disk: {failed}");
    health_becomes(&d, 503);
    std::fs::remove_file(&ballast).expect("removing the ballast");
    health_becomes(&d, 200);
    let failed_draft = &drafts[issued.len()];
    let still = d.ok("GET", &format!("/v1/invoices/{failed_draft}"), None);
    assert_eq!(
        still["state"], "draft",
        "the failed issue left no trace: {still}"
    );
    assert_eq!(
        open_invoices_metric(&d),
        (1 + issued.len()).to_string(),
        "the reconciliation index holds only confirmed invoices"
    );
    let numbered = d.ok(
        "POST",
        &format!("/v1/invoices/{failed_draft}/issue"),
        Some(json!({})),
    );
    let number = |inv: &Value| {
        inv["number"]
            .as_str()
            .and_then(|n| n.rsplit('-').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_default()
    };
    assert_eq!(number(&first), 1, "{first}");
    assert_eq!(
        number(&numbered),
        2 + issued.len(),
        "the failed issue took no invoice number: {numbered}"
    );

    // Nothing comes back, nothing is lost, after a restart.
    let before_restart = (
        ids(&d.ok("GET", "/v1/leads?limit=1000", None)),
        all_events(&d),
    );
    let exit = d.terminate();
    assert!(
        exit.success(),
        "settled stopped with {exit}\n{}",
        d.log_text()
    );
    d.spawn();
    assert_eq!(
        ids(&d.ok("GET", "/v1/leads?limit=1000", None)),
        before_restart.0
    );
    assert_eq!(all_events(&d), before_restart.1);
    assert_eq!(open_invoices_metric(&d), (2 + issued.len()).to_string());
    drop(d);
}

#[test]
fn an_inbox_file_that_meets_a_full_disk_stays_in_the_inbox_and_is_imported_once_the_store_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The inbox lies outside the full filesystem, so the file can be dropped while the store cannot write. The
    // filesystem holds the plugin cache too: a debug build of bank-csv is about 40 MB.
    let inbox = dir.path().join("bank-inbox");
    let Some(_mount) = Tmpfs::mount(&data, "128m") else {
        eprintln!(
            "skipping the full-disk inbox test: mounting a small filesystem needs root, and this test runs as another user"
        );
        return;
    };
    let ballast = data.join("ballast");
    let d = Daemon::start_in(
        dir,
        Setup {
            plugins: vec!["bank-csv"],
            config: format!(
                "[[connector]]\nname = \"bank\"\nplugin = \"bank-csv\"\ninbox = \"{}\"\n",
                inbox.display()
            ),
        },
    );
    d.eventually("the connector's inbox folder", || {
        inbox.exists().then_some(())
    });
    // Plugins load after the daemon is ready; the disk fills only once the bank connector runs.
    d.eventually("the bank connector running", || {
        let plugins = d.ok("GET", "/v1/plugins", None);
        plugins["items"]
            .as_array()?
            .iter()
            .flat_map(|p| p["instances"].as_array().cloned().unwrap_or_default())
            .find(|i| i["name"] == "bank" && i["state"] == "running")
            .map(|_| ())
    });
    let (_, (status, failed)) = write_until_it_fails(
        &d,
        &ballast,
        (0..200).map(|n| ("/v1/leads".to_string(), Some(lead(n)))),
    );
    assert_eq!(status, 503, "a write on a full disk: {failed}");
    health_becomes(&d, 503);

    let csv = "Date,Amount,Currency,Counterparty,Description,Transaction Id\n\
               2026-03-05,120.00,EUR,Alpha Trading Ltd,no reference,T1\n\
               2026-03-06,45.50,EUR,Gamma,unknown,T2\n";
    std::fs::write(inbox.join(".statement.csv.part"), csv).expect("writing the statement");
    std::fs::rename(
        inbox.join(".statement.csv.part"),
        inbox.join("statement.csv"),
    )
    .expect("renaming the statement into place");
    // The daemon tries the file while the store is closed: it must leave it where it is.
    d.eventually("an import attempt on the closed store", || {
        let log = d.log_text();
        (log.contains("inbox file not imported: the store cannot write")
            || log.contains("inbox file failed"))
        .then_some(())
    });
    assert!(
        inbox.join("statement.csv").exists(),
        "the file must stay in the inbox while the store cannot write\n{}",
        d.log_text()
    );
    let failed_dir = inbox.join("failed");
    let in_failed = std::fs::read_dir(&failed_dir)
        .map(|entries| entries.flatten().count())
        .unwrap_or(0);
    assert_eq!(in_failed, 0, "nothing may go to failed/ for a full disk");

    std::fs::remove_file(&ballast).expect("removing the ballast");
    health_becomes(&d, 200);
    d.eventually("the statement in done/", || {
        std::fs::read_dir(inbox.join("done"))
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with("statement.csv"))
            .map(|_| ())
    });
    let payments = d.ok("GET", "/v1/payments?limit=100", None);
    let n = payments["items"].as_array().map_or(0, Vec::len);
    assert_eq!(
        n, 2,
        "both lines recorded once the store writes: {payments}"
    );
}

#[test]
fn a_plugin_whose_cache_copy_met_a_full_disk_loads_by_itself_once_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The data dir holds the private plugin cache; the plugin folder lies outside it. A debug webform is ~30 MB.
    let Some(_mount) = Tmpfs::mount(&data, "128m") else {
        eprintln!(
            "skipping the full-disk plugin cache test: mounting a small filesystem needs root, and this test runs as another user"
        );
        return;
    };
    let ballast = data.join("ballast");
    let d = Daemon::start_in(
        dir,
        Setup {
            plugins: vec!["webform"],
            config: String::new(),
        },
    );
    let webform = |d: &Daemon| {
        d.ok("GET", "/v1/plugins", None)["items"]
            .as_array()
            .and_then(|items| items.iter().find(|p| p["plugin"] == "webform").cloned())
            .unwrap_or_default()
    };
    let first = d.eventually("webform loaded", || {
        let status = webform(&d);
        status["sha256"].as_str().map(str::to_string)
    });

    fill(&ballast);
    let lib = crate::harness::plugin_lib("webform");
    let mut bytes = std::fs::read(&lib).expect("reading webform");
    bytes.extend_from_slice(b"version two");
    let plugins = d.dir.path().join("plugins");
    std::fs::write(plugins.join(".webform.part"), &bytes).expect("writing the new version");
    std::fs::rename(
        plugins.join(".webform.part"),
        plugins.join(lib.file_name().expect("file name")),
    )
    .expect("dropping in the new version");
    let refused = d.eventually("the cache copy to fail", || {
        let status = webform(&d);
        let errors = status["load_errors"].as_array()?.clone();
        errors
            .iter()
            .any(|e| {
                e.as_str()
                    .is_some_and(|e| e.contains("cannot copy to the cache"))
            })
            .then_some(status)
    });
    assert_eq!(
        refused["sha256"].as_str(),
        Some(first.as_str()),
        "{refused}"
    );

    std::fs::remove_file(&ballast).expect("removing the ballast");
    let loaded = d.eventually(
        "the new version to load without being dropped in again",
        || {
            let status = webform(&d);
            (status["sha256"].as_str() != Some(first.as_str())).then_some(status)
        },
    );
    assert_eq!(loaded["loads"], 2, "{loaded}");
    assert_eq!(loaded["load_errors"], json!([]), "{loaded}");
    health_becomes(&d, 200);
}
