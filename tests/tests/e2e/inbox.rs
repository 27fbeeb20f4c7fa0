//! The file inbox protocol through the real daemon: files still being written (an open writer, a temporary name) are
//! left alone, and a file is imported whole once its writer is done.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{Daemon, Setup};

const HEADER: &str = "Date,Amount,Currency,Counterparty,Description,Transaction Id\n";

fn csv_lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range
        .map(|i| {
            format!("2026-03-05,{i}.25,EUR,Payer {prefix}{i},transfer {prefix}{i},{prefix}{i}\n")
        })
        .collect()
}

fn start() -> (Daemon, PathBuf) {
    let d = Daemon::start(Setup {
        plugins: vec!["bank-csv"],
        config: String::new(),
    });
    let inbox = d.data_dir().join("inbox");
    d.eventually("the inbox folders", || {
        (inbox.join("done").is_dir() && inbox.join("failed").is_dir()).then_some(())
    });
    // The folders exist before the daemon watches them for writers: a file opened in between is not seen being
    // written. An imported marker shows the watching loop runs (it starts after the watch is set up).
    drop_marker_and_wait(&d, &inbox, "ready");
    (d, inbox)
}

/// The path of the file in `folder` whose name ends with `name` (done/ and failed/ prefix a time stamp).
fn find(folder: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(folder)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&format!("-{name}")))
        })
}

fn wait_done(d: &Daemon, inbox: &Path, name: &str) -> Value {
    let done = d.eventually(&format!("{name} in done/"), || {
        find(&inbox.join("done"), name)
    });
    let text = std::fs::read_to_string(format!("{}.summary.json", done.display()))
        .unwrap_or_else(|e| panic!("summary of {}: {e}", done.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("summary {text}: {e}"))
}

/// Drops a small file and waits until it is imported. Every file that was already in the inbox and still has been
/// still for at least as long, so when the daemon would take such a file it has taken it by then (candidates are
/// taken in name order and the marker's name sorts last).
fn drop_marker_and_wait(d: &Daemon, inbox: &Path, tag: &str) {
    let name = format!("zz-marker-{tag}.csv");
    std::fs::write(
        inbox.join(&name),
        format!("{HEADER}{}", csv_lines(tag, 0..1)),
    )
    .unwrap();
    let summary = wait_done(d, inbox, &name);
    assert_eq!(summary["new"], 1, "{summary}");
}

fn external_ids(d: &Daemon) -> Vec<String> {
    d.ok("GET", "/v1/payments?limit=1000", None)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["external_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_file_written_in_two_parts_with_a_pause_longer_than_the_settle_time_is_imported_whole() {
    let (d, inbox) = start();
    let mut writer = std::fs::File::create(inbox.join("a-statement.csv")).unwrap();
    writer
        .write_all(format!("{HEADER}{}", csv_lines("P", 0..3)).as_bytes())
        .unwrap();
    writer.flush().unwrap();
    // The writer stalls, file open, until a file dropped after the first part has been imported: the first part has
    // then been still for longer than the settle time.
    drop_marker_and_wait(&d, &inbox, "m");
    assert!(
        inbox.join("a-statement.csv").exists(),
        "a file still open for writing was taken from the inbox\n{}",
        d.log_text()
    );
    writer.write_all(csv_lines("P", 3..6).as_bytes()).unwrap();
    drop(writer);
    let summary = wait_done(&d, &inbox, "a-statement.csv");
    assert_eq!(
        (summary["records_read"].as_u64(), summary["new"].as_u64()),
        (Some(6), Some(6)),
        "both parts are imported in one go: {summary}"
    );
    let ids = external_ids(&d);
    for i in 0..6 {
        assert!(
            ids.iter().any(|id| id.ends_with(&format!("P{i}"))),
            "record P{i} is missing: {ids:?}"
        );
    }
    assert_eq!(
        ids.len(),
        8,
        "six lines and the two markers, each once: {ids:?}"
    );
}

#[test]
fn files_under_temporary_names_are_imported_only_after_they_are_renamed_into_place() {
    let (d, inbox) = start();
    let temporary = [
        "statement-1.csv.part",
        ".statement-2.csv",
        "statement-3.csv.filepart",
        "statement-4.csv.crdownload",
        "statement-5.csv~",
        "STATEMENT-6.CSV.PART",
        "statement-7.csv.tmp",
    ];
    for (n, name) in temporary.iter().enumerate() {
        std::fs::write(
            inbox.join(name),
            format!("{HEADER}{}", csv_lines(&format!("T{n}x"), 0..2)),
        )
        .unwrap();
    }
    drop_marker_and_wait(&d, &inbox, "t");
    for name in temporary {
        assert!(
            inbox.join(name).exists(),
            "{name} was taken before it was renamed\n{}",
            d.log_text()
        );
    }
    assert_eq!(
        external_ids(&d).len(),
        2,
        "only the two markers are imported"
    );
    for (n, name) in temporary.iter().enumerate() {
        std::fs::rename(inbox.join(name), inbox.join(format!("renamed-{n}.csv"))).unwrap();
    }
    for n in 0..temporary.len() {
        let summary = wait_done(&d, &inbox, &format!("renamed-{n}.csv"));
        assert_eq!(summary["new"], 2, "renamed-{n}.csv: {summary}");
    }
    assert_eq!(external_ids(&d).len(), 2 + 2 * temporary.len());
}

/// Whether the process `pid` has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        })
        .unwrap_or(false)
}

#[test]
fn a_file_that_changes_while_it_is_imported_is_read_again_not_moved() {
    let (d, inbox) = start();
    let pid = d.child.as_ref().expect("running daemon").id();
    let path = inbox.join("growing.csv");
    std::fs::write(&path, format!("{HEADER}{}", csv_lines("G", 0..3000))).unwrap();
    // Append while the daemon has the file open for its import.
    d.eventually("the daemon to open growing.csv", || {
        has_open(pid, &path).then_some(())
    });
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("growing.csv is still in the inbox while it is imported");
    writer
        .write_all(csv_lines("G", 3000..3100).as_bytes())
        .unwrap();
    drop(writer);
    let summary = wait_done(&d, &inbox, "growing.csv");
    assert_eq!(
        summary["records_read"], 3100,
        "the file is read again, appended lines included: {summary}"
    );
    let found = std::fs::read_dir(inbox.join("done"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("-growing.csv"))
        .count();
    assert_eq!(found, 1, "moved to done/ once");
    let exists = |n: usize| d.call("GET", &format!("/v1/payments/pay_{n:08}"), None).0 == 200;
    // pay_00000001 is the readiness marker.
    assert!(exists(3101), "every line is recorded");
    assert!(!exists(3102), "no line is recorded twice");
}
