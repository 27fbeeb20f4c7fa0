//! What a plugin author and an operator change while the daemon runs: the config file (re-read when it changes and on
//! SIGHUP), default instances of plugins no `[[connector]]` names (also of a plugin dropped in), and upgrades of a
//! plugin one of whose instances has bad settings.

use std::process::Command;

use serde_json::Value;

use crate::harness::{plugin_lib, Daemon, Setup};

/// `/v1/plugins`.
fn plugins(d: &Daemon) -> Value {
    d.ok("GET", "/v1/plugins", None)
}

/// The status of instance `name` (`state`, `reason`, ...), if it exists.
fn instance(d: &Daemon, name: &str) -> Option<Value> {
    plugins(d)["items"]
        .as_array()?
        .iter()
        .flat_map(|p| p["instances"].as_array().cloned().unwrap_or_default())
        .find(|i| i["name"] == name)
}

fn state_of(d: &Daemon, name: &str) -> Option<String> {
    instance(d, name).and_then(|i| i["state"].as_str().map(str::to_string))
}

/// Waits for a config reload report newer than `after` (its `at`, RFC 3339 to the second, is not enough to tell two
/// apart: the report is compared whole) that `done` accepts.
fn wait_reload(d: &Daemon, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    d.eventually(what, || {
        let report = plugins(d)["config_reload"].clone();
        (!report.is_null() && done(&report)).then_some(report)
    })
}

/// POST a web form to `/intake/{name}`; the HTTP status.
fn post_form(d: &Daemon, name: &str, email: &str) -> u16 {
    d.http()
        .post(d.url(&format!("/intake/{name}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("name=Ada&email={email}&company=Analytical"))
        .send()
        .unwrap_or_else(|e| panic!("posting to /intake/{name}: {e}"))
        .status()
        .as_u16()
}

fn changes(report: &Value) -> Vec<String> {
    report["changes"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

const SITE: &str = "[[connector]]\nname = \"site\"\nplugin = \"webform\"\n";

#[test]
fn connectors_added_changed_and_removed_in_the_config_apply_without_a_restart_and_a_bad_file_is_refused(
) {
    let d = Daemon::start(Setup {
        plugins: vec!["webform", "camt"],
        config: String::new(),
    });
    // No [[connector]]: every plugin runs its default instance.
    assert_eq!(state_of(&d, "webform").as_deref(), Some("running"));
    assert_eq!(state_of(&d, "camt").as_deref(), Some("running"));

    // The first [[connector]] adds an instance and keeps the unmentioned plugin's default.
    d.rewrite_config(SITE);
    let report = wait_reload(&d, "the added connector", |r| {
        r["outcome"] == "applied" && !changes(r).is_empty()
    });
    let applied = changes(&report);
    assert!(
        applied.contains(&"added connector `site` (plugin webform)".to_string()),
        "{report}"
    );
    assert!(
        applied.contains(&"removed default instance `webform` (plugin webform)".to_string()),
        "{report}"
    );
    assert_eq!(report["trigger"], "file changed", "{report}");
    assert_eq!(post_form(&d, "site", "ada%40one.example"), 200);
    assert_eq!(post_form(&d, "webform", "ada%40two.example"), 404);
    assert_eq!(state_of(&d, "camt").as_deref(), Some("running"));

    // A changed connector restarts with its new settings: the honeypot now drops the post without a lead.
    let changed = format!("{SITE}settings = {{ honeypot = \"website\" }}\n");
    d.rewrite_config(&changed);
    wait_reload(&d, "the changed connector", |r| {
        changes(r) == ["changed connector `site` (plugin webform)"]
    });
    let leads_before = d.ok("GET", "/v1/leads", None)["items"]
        .as_array()
        .map(Vec::len);
    let bot = d
        .http()
        .post(d.url("/intake/site"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Bot&email=bot%40spam.example&website=http%3A%2F%2Fspam.example")
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(bot, 200);
    let leads_after = d.ok("GET", "/v1/leads", None)["items"]
        .as_array()
        .map(Vec::len);
    assert_eq!(
        leads_after, leads_before,
        "the honeypot of the new settings"
    );

    // A file with an error is refused whole, naming the key and line; the running connectors stay.
    d.rewrite_config(&format!("{changed}colour = \"blue\"\n"));
    let refused = wait_reload(&d, "the bad file to be refused", |r| {
        r["outcome"] == "refused"
    });
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("colour") && error.contains("line ") && error.contains("settled.toml"),
        "{refused}"
    );
    assert_eq!(
        d.ok("GET", "/healthz", None)["config_reload"]["outcome"],
        "refused"
    );
    assert_eq!(post_form(&d, "site", "ada%40three.example"), 200);

    // Removing every connector with `defaults = false` leaves no instance running.
    d.rewrite_config("defaults = false\n");
    let report = wait_reload(&d, "the removal", |r| r["outcome"] == "applied");
    let mut applied = changes(&report);
    applied.sort();
    assert_eq!(
        applied,
        [
            "removed connector `site` (plugin webform)",
            "removed default instance `camt` (plugin camt)",
        ],
        "{report}"
    );
    assert_eq!(post_form(&d, "site", "ada%40four.example"), 404);
    assert!(instance(&d, "camt").is_none());
    assert_eq!(
        d.ok("GET", "/healthz", None)["config_reload"]["outcome"],
        "applied"
    );

    // SIGHUP re-reads the file too (nothing changed since, so nothing changes).
    let hup = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let report = wait_reload(&d, "the SIGHUP reload", |r| r["trigger"] == "SIGHUP");
    assert_eq!(report["outcome"], "applied", "{report}");
    assert!(changes(&report).is_empty(), "{report}");
    assert_eq!(d.call("GET", "/healthz", None).0, 200);
}

#[test]
fn a_plugin_dropped_in_while_running_gets_its_default_instance() {
    let d = Daemon::start(Setup {
        plugins: vec!["camt"],
        config: String::new(),
    });
    assert_eq!(post_form(&d, "webform", "grace%40one.example"), 404);
    let lib = plugin_lib("webform");
    let tmp = d.dir.path().join("plugins/.webform.part");
    std::fs::copy(&lib, &tmp).unwrap();
    std::fs::rename(
        &tmp,
        d.dir.path().join("plugins").join(lib.file_name().unwrap()),
    )
    .unwrap();
    d.eventually("the dropped-in plugin's default instance", || {
        (state_of(&d, "webform").as_deref() == Some("running")).then_some(())
    });
    assert_eq!(post_form(&d, "webform", "grace%40two.example"), 200);
}

#[test]
fn an_instance_with_bad_settings_does_not_block_an_upgrade_of_its_plugin() {
    let d = Daemon::start(Setup {
        plugins: vec!["camt"],
        config: "[[connector]]\nname = \"good-bank\"\nplugin = \"camt\"\n\
                 [[connector]]\nname = \"bad-bank\"\nplugin = \"camt\"\nsettings = { include_pending = \"yes\" }\n"
            .into(),
    });
    assert_eq!(state_of(&d, "good-bank").as_deref(), Some("running"));
    assert_eq!(state_of(&d, "bad-bank").as_deref(), Some("failed"));
    let camt = |d: &Daemon| {
        plugins(d)["items"]
            .as_array()
            .and_then(|items| items.iter().find(|p| p["plugin"] == "camt").cloned())
            .unwrap_or_default()
    };
    let first = camt(&d)["sha256"].clone();

    // A new version of the plugin (the same code with a different hash).
    let lib = plugin_lib("camt");
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.extend_from_slice(b"version two");
    let tmp = d.dir.path().join("plugins/.camt.part");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(
        &tmp,
        d.dir.path().join("plugins").join(lib.file_name().unwrap()),
    )
    .unwrap();
    let upgraded = d.eventually("the new version to load", || {
        let now = camt(&d);
        let refused = now["load_errors"].as_array().is_some_and(|e| !e.is_empty());
        assert!(!refused, "the upgrade was refused: {now}");
        (now["sha256"] != first && now["loads"] == 2).then_some(now)
    });
    assert_eq!(
        state_of(&d, "good-bank").as_deref(),
        Some("running"),
        "{upgraded}"
    );
    let bad = instance(&d, "bad-bank").unwrap();
    assert_eq!(bad["state"], "failed", "{bad}");
    let reason = bad["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("settings rejected") && reason.contains("include_pending"),
        "{bad}"
    );
}
