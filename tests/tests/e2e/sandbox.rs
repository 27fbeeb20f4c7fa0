//! The sandbox of a process-isolated plugin, through the real binary: the `snoops` fixture
//! (`tests/fixture-plugins/snoops`) tries to read files, open a TCP connection, read the environment and
//! start a process from inside its `settled plugin-host` child, and reports each attempt.

use std::net::TcpListener;
use std::path::Path;

use serde_json::json;

use crate::harness::{target_dir, Daemon, Setup, TOKEN};

/// A daemon with the `snoops` fixture as intake connector `snoop` in process isolation, and
/// `[plugins] require_sandbox = true` (the sandbox is complete on the machines this suite runs on, so the
/// plugin loads); `more` gets the daemon's data folder and gives the rest of the `[[connector]]` table.
fn daemon_with_snoops(more: impl FnOnce(&Path) -> String) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let more = more(&dir.path().join("data"));
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let lib = target_dir().join("libsettled_fixture_snoops.so");
    std::fs::copy(&lib, plugins.join("libsettled_fixture_snoops.so")).unwrap_or_else(|e| {
        panic!(
            "copy {}: {e} (run `cargo build --workspace`)",
            lib.display()
        )
    });
    Daemon::start_in(
        dir,
        Setup {
            plugins: vec![],
            config: format!(
                "require_sandbox = true\n[[connector]]\nname = \"snoop\"\nplugin = \"snoops\"\nisolation = \"process\"\n{more}\n"
            ),
        },
    )
}

fn intake(d: &Daemon) -> (u16, String) {
    let (status, body) = d.call("POST", "/intake/snoop", Some(json!({"name": "x"})));
    let reason = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}\n{}", d.log_text()))
        .to_string();
    (status, reason)
}

#[test]
fn a_process_isolated_plugin_cannot_read_files_connect_see_the_environment_or_start_processes() {
    // A real listener: without the sandbox the connection would succeed.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let d = daemon_with_snoops(|data| {
        let store = data.join("db/conf");
        format!(
            "[connector.settings]\nfiles = [\"/etc/passwd\", \"{}\"]\nconnect = \"{addr}\"\n",
            store.display()
        )
    });
    let store_file = d.data_dir().join("db/conf");
    assert!(
        store_file.exists(),
        "the store has {}",
        store_file.display()
    );

    let (status, reason) = intake(&d);
    assert_eq!(status, 403, "{reason}\n{}", d.log_text());
    let store = store_file.display();
    for expected in [
        "read /etc/passwd: denied (Permission denied".to_string(),
        format!("read {store}: denied (Permission denied"),
        format!("connect {addr}: denied ("),
        "environment: 0 variables, SETTLED_API_TOKEN absent".to_string(),
        "start a process: denied (".to_string(),
        "thread: allowed (42)".to_string(),
    ] {
        assert!(
            reason.contains(&expected),
            "`{expected}` missing from the plugin's report: {reason}\n{}",
            d.log_text()
        );
    }
    assert!(
        !reason.contains("ALLOWED") && !reason.contains(TOKEN),
        "{reason}"
    );
    // The host forwards the plugin's own account of each refused attempt to the daemon's log.
    d.eventually("the plugin's report in the daemon log", || {
        let log = d.log_text();
        (log.contains("read /etc/passwd: denied") && log.contains("snoops")).then_some(())
    });
    assert!(!d.log_text().contains(TOKEN), "the token reached the log");

    // `settled plugins` (GET /v1/plugins) says what the sandbox enforces.
    let plugins = d.ok("GET", "/v1/plugins", None);
    let snoops = plugins["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["plugin"] == "snoops"))
        .unwrap_or_else(|| panic!("snoops not listed: {plugins}"));
    let sandbox = snoops["sandbox"].as_str().unwrap_or_default();
    for part in [
        "enforced: ",
        "empty environment",
        "no_new_privs",
        "landlock",
        "seccomp",
    ] {
        assert!(
            sandbox.contains(part),
            "`{part}` missing from the sandbox status `{sandbox}` (a kernel without Landlock 6 or seccomp?)"
        );
    }
    drop(listener);
}

#[test]
fn a_plugin_flooding_its_log_gets_only_the_per_call_budget_forwarded_and_the_rest_counted() {
    let d = daemon_with_snoops(|_| "[connector.settings]\nflood = 3000\n".to_string());
    let (status, reason) = intake(&d);
    assert_eq!(status, 403, "{reason}\n{}", d.log_text());
    // 1000 lines a call are forwarded: the first 1000 flood lines. The other 2000 and the fixture's three
    // report lines (environment, process, thread) are dropped and counted in one warning.
    let log = d.eventually("the dropped-lines warning", || {
        let log = d.log_text();
        log.contains("log lines (").then_some(log)
    });
    let forwarded = log.lines().filter(|l| l.contains("flood line ")).count();
    assert_eq!(forwarded, 1000, "{}", tail(&log));
    assert!(log.contains("flood line 999"), "{}", tail(&log));
    assert!(!log.contains("flood line 1000"), "{}", tail(&log));
    assert!(log.contains("dropped 2003 log lines"), "{}", tail(&log));
    // The next call has a fresh budget.
    let (status, _) = intake(&d);
    assert_eq!(status, 403);
    let second = d.eventually("the second call's lines", || {
        let log = d.log_text();
        (log.lines().filter(|l| l.contains("flood line 0")).count() == 2).then_some(log)
    });
    assert_eq!(
        second.lines().filter(|l| l.contains("flood line ")).count(),
        2000,
        "{}",
        tail(&second)
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn a_connector_env_passes_the_variables_it_names_and_nothing_else() {
    // The harness starts the daemon with PATH, HOME, RUST_LOG and SETTLED_API_TOKEN set.
    let d = daemon_with_snoops(|_| "env = [\"HOME\"]\n".to_string());
    let (status, reason) = intake(&d);
    assert_eq!(status, 403, "{reason}\n{}", d.log_text());
    assert!(
        reason.contains("environment: 1 variables, SETTLED_API_TOKEN absent"),
        "{reason}"
    );
}
