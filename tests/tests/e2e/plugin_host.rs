//! The plugin host against real fixture plugins (`tests/fixture-plugins/`), in both isolation modes.
//!
//! Needs the `settled` binary (for `process` isolation) and the fixture libraries in `$CARGO_TARGET_DIR`
//! (or `target/`)`/debug`; both are built on first use with `cargo build -p settled-fixture-... -p settled`.
//! `SETTLED_BIN` names another binary (and skips building it), `SETTLED_WORKSPACE_DIR` the workspace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use settled::plugin_host::*;
use settled_plugin_api::{FileRequest, IntakeOutcome, IntakeRequest, Record, Role, SniffRequest};

const FIXTURES: &[&str] = &[
    "good",
    "panics",
    "panics-init",
    "hangs",
    "aborts",
    "segfaults",
    "bad-output",
    "abi-major",
    "abi-minor-0",
    "wrong-magic",
    "missing-symbols",
];

fn workspace_dir() -> PathBuf {
    std::env::var_os("SETTLED_WORKSPACE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
        .join("debug")
}

fn host_exe() -> PathBuf {
    std::env::var_os("SETTLED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("settled"))
}

/// The built fixture library `name`, building all fixtures (and the `settled` binary unless `SETTLED_BIN`
/// names one) once per test run.
fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(workspace_dir()).arg("build").arg("--quiet");
        for f in FIXTURES {
            cmd.arg("-p").arg(format!("settled-fixture-{f}"));
        }
        if std::env::var_os("SETTLED_BIN").is_none() {
            cmd.args(["-p", "settled", "--bin", "settled"]);
        }
        match cmd.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("building fixture plugins: {status}")),
            Err(e) => Err(format!("running cargo to build fixture plugins: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let file = format!(
        "libsettled_fixture_{}.{}",
        name.replace('-', "_"),
        std::env::consts::DLL_EXTENSION
    );
    target_dir().join(file)
}

struct TestDir {
    _tmp: tempfile::TempDir,
    plugins: PathBuf,
    cache: PathBuf,
}

fn test_dir() -> TestDir {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("creating temp dir: {e}"));
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap_or_else(|e| panic!("creating plugin dir: {e}"));
    let cache = tmp.path().join("cache");
    TestDir {
        _tmp: tmp,
        plugins,
        cache,
    }
}

/// Atomically places `bytes` at `plugins/name` (written to a hidden temp name, then renamed).
fn place(dir: &TestDir, name: &str, bytes: &[u8]) -> PathBuf {
    let tmp = dir.plugins.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
    let path = dir.plugins.join(name);
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
    path
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn install(dir: &TestDir, fixture_name: &str) -> PathBuf {
    let bytes = read(&fixture(fixture_name));
    place(dir, &format!("{fixture_name}.so"), &bytes)
}

fn connector(name: &str, plugin: &str, isolation: Isolation, settings: Value) -> ConnectorConfig {
    ConnectorConfig {
        name: name.to_string(),
        plugin: plugin.to_string(),
        isolation,
        settings,
        ..ConnectorConfig::default()
    }
}

fn config(dir: &TestDir, connectors: Vec<ConnectorConfig>) -> HostConfig {
    HostConfig {
        plugin_dir: dir.plugins.clone(),
        cache_dir: dir.cache.clone(),
        allowlist: None,
        connectors,
        host_exe: host_exe(),
        call_timeout: Duration::from_secs(10),
        quarantine_after: 5,
        watch: false,
        require_sandbox: false,
        defaults: false,
    }
}

async fn start(config: HostConfig) -> Arc<PluginHost> {
    match PluginHost::start(config).await {
        Ok(host) => host,
        Err(e) => panic!("starting the plugin host: {e}"),
    }
}

/// Polls `probe` until it yields a value; fails the test with `what` after 30 s.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn plugin_status(host: &PluginHost, file_name: &str) -> Option<PluginStatus> {
    host.status().into_iter().find(|s| {
        s.file
            .as_ref()
            .and_then(|f| f.file_name())
            .is_some_and(|f| f == file_name)
    })
}

fn instance_status(host: &PluginHost, instance: &str) -> Option<InstanceStatus> {
    host.status()
        .into_iter()
        .flat_map(|p| p.instances)
        .find(|i| i.name == instance)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn echo(host: &PluginHost, instance: &str, value: Value) -> Result<Value, CallError> {
    host.call(instance, "echo", value).await
}

fn intake_request(body: &str) -> IntakeRequest {
    IntakeRequest {
        method: "POST".to_string(),
        path: "/".to_string(),
        query: String::new(),
        headers: vec![("x-id".to_string(), "sub-1".to_string())],
        body: body.as_bytes().to_vec(),
        remote_addr: "127.0.0.1:5000".to_string(),
        received_at: 0,
    }
}

const BOTH: [Isolation; 2] = [Isolation::Process, Isolation::InProcess];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_plugin_serves_every_role_in_both_isolation_modes_side_by_side() {
    let dir = test_dir();
    install(&dir, "good");
    let host = start(config(
        &dir,
        vec![
            connector(
                "form-a",
                "good",
                Isolation::Process,
                json!({"greeting": "a"}),
            ),
            connector(
                "form-b",
                "good",
                Isolation::Process,
                json!({"greeting": "b"}),
            ),
            connector(
                "inproc",
                "good",
                Isolation::InProcess,
                json!({"greeting": "c"}),
            ),
        ],
    ))
    .await;
    for (instance, greeting) in [("form-a", "a"), ("form-b", "b"), ("inproc", "c")] {
        let who = host.call(instance, "whoami", Value::Null).await;
        assert_eq!(who.ok(), Some(json!({"greeting": greeting})), "{instance}");
        let big = "x".repeat(1024);
        assert_eq!(
            echo(&host, instance, json!([big])).await.ok(),
            Some(json!([big]))
        );
        let outcome = host.intake(instance, intake_request("Ada Lovelace")).await;
        let Ok(IntakeOutcome::Accept {
            records,
            reply: None,
        }) = outcome
        else {
            panic!("{instance}: unexpected intake outcome {outcome:?}");
        };
        let [Record::Lead(lead)] = records.as_slice() else {
            panic!("{instance}: expected one lead, got {records:?}");
        };
        assert_eq!(
            (lead.name.as_str(), lead.external_id.as_deref()),
            ("Ada Lovelace", Some("sub-1"))
        );
        let sniff = host
            .sniff(
                instance,
                SniffRequest {
                    name: "leads.good".into(),
                    head: b"x".to_vec(),
                },
            )
            .await;
        assert_eq!(sniff.ok().map(|s| s.confidence), Some(90));
        let parsed = host
            .parse(
                instance,
                FileRequest {
                    name: "leads.good".into(),
                    content: b"A\nB\n".to_vec(),
                },
            )
            .await;
        assert_eq!(parsed.ok().map(|p| p.records.len()), Some(2));
        let unsupported = host
            .mail(
                instance,
                settled_plugin_api::MailRequest { raw: Vec::new() },
            )
            .await;
        assert!(
            matches!(&unsupported, Err(CallError::Plugin(e)) if e.code == "unsupported"),
            "{unsupported:?}"
        );
    }
    let status = plugin_status(&host, "good.so").unwrap_or_else(|| panic!("no status for good.so"));
    assert_eq!(status.plugin.as_deref(), Some("good"));
    assert_eq!(
        (status.version.as_deref(), status.abi.as_deref()),
        (
            Some("1.0.0"),
            Some(format!("1.{}", settled_plugin_api::abi::ABI_MINOR).as_str())
        )
    );
    assert_eq!(status.sha256, Some(sha256_hex(&read(&fixture("good")))));
    assert_eq!(status.instances.len(), 3);
    for i in &status.instances {
        // whoami, echo, intake, sniff, parse and the unsupported mail call (the one error).
        assert_eq!(
            (i.state, i.calls, i.errors),
            (InstanceState::Running, 6, 1),
            "{}",
            i.name
        );
        assert!(i.p50_us.is_some() && i.p99_us >= i.p50_us, "{i:?}");
    }
    let infos = host.instances();
    assert!(infos
        .iter()
        .all(|i| i.running && i.roles == vec![Role::Intake, Role::File]));
    assert!(matches!(
        host.call("nobody", "echo", Value::Null).await,
        Err(CallError::UnknownInstance(name)) if name == "nobody"
    ));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_naming_the_key() {
    let dir = test_dir();
    install(&dir, "good");
    let mut connectors = Vec::new();
    for isolation in BOTH {
        let name = format!("bad-{}", connectors.len());
        connectors.push(connector(
            &name,
            "good",
            isolation,
            json!({"greting": "typo"}),
        ));
    }
    let host = start(config(&dir, connectors)).await;
    for name in ["bad-0", "bad-1"] {
        let status = instance_status(&host, name).unwrap_or_else(|| panic!("no status for {name}"));
        assert_eq!(status.state, InstanceState::Failed);
        assert_eq!(
            status.reason.as_deref(),
            Some(
                format!(
                    "instance `{name}`: settings rejected: greting: unknown setting (bad_config)"
                )
                .as_str()
            )
        );
        let call = echo(&host, name, json!(1)).await;
        assert!(
            matches!(call, Err(CallError::NotRunning { .. })),
            "{call:?}"
        );
    }
}

/// Files the host must refuse before running any of their code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_files_are_reported_with_the_reason_and_never_run() {
    let dir = test_dir();
    // The abi-major and wrong-magic fixtures abort in `settled_plugin_init`: had the host run it, their load error
    // would be the child's death, not the refusal of their header checked below.
    install(&dir, "abi-major");
    install(&dir, "wrong-magic");
    install(&dir, "missing-symbols");
    install(&dir, "panics-init");
    let good = read(&fixture("good"));
    place(
        &dir,
        "random.so",
        &(0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    place(&dir, "empty.so", b"");
    place(&dir, "truncated.so", &good[..good.len() / 2]);
    // A small PIE executable; the test binary itself would do, but it is tens of megabytes.
    let executable = ["/bin/true", "/usr/bin/true"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|e| panic!("{e}")));
    place(&dir, "executable.so", &read(&executable));
    let writable = place(&dir, "writable.so", &good);
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    let real = place(&dir, ".real-good", &good);
    std::os::unix::fs::symlink(&real, dir.plugins.join("symlink.so"))
        .unwrap_or_else(|e| panic!("{e}"));
    let host = start(config(&dir, Vec::new())).await;
    let abi_major_refusal = format!(
        "built for plugin ABI 99.{minor}, this host speaks 1.{minor}",
        minor = settled_plugin_api::abi::ABI_MINOR
    );
    let expected = [
        ("abi-major.so", abi_major_refusal.as_str()),
        ("wrong-magic.so", "wrong magic bytes"),
        ("missing-symbols.so", "has no SETTLED_PLUGIN_HEADER symbol"),
        (
            "panics-init.so",
            "panicked while giving its manifest: manifest exploded",
        ),
        ("random.so", "is not an ELF shared library"),
        ("empty.so", "is empty"),
        ("truncated.so", "is truncated"),
        ("executable.so", "is an executable"),
        ("writable.so", "is group- or world-writable (mode 666)"),
        ("symlink.so", "is a symlink"),
    ];
    for (file, reason) in expected {
        let status = plugin_status(&host, file).unwrap_or_else(|| panic!("no status for {file}"));
        assert_eq!(status.sha256, None, "{file} must not be loaded");
        assert!(
            status.load_errors.iter().any(|e| e.contains(reason)),
            "{file}: expected `{reason}` in {:?}",
            status.load_errors
        );
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowlisted_hashes_load() {
    let dir = test_dir();
    install(&dir, "good");
    let sha = sha256_hex(&read(&fixture("good")));
    let mut refused = config(&dir, Vec::new());
    refused.allowlist = Some(vec!["00".repeat(32)]);
    let host = start(refused).await;
    let status = plugin_status(&host, "good.so").unwrap_or_else(|| panic!("no status"));
    assert_eq!(
        status.load_errors,
        vec![format!("sha-256 {sha} is not on the allowlist")]
    );
    host.shutdown().await;

    let mut allowed = config(&dir, Vec::new());
    allowed.allowlist = Some(vec![sha.to_uppercase()]);
    let host = start(allowed).await;
    let status = plugin_status(&host, "good.so").unwrap_or_else(|| panic!("no status"));
    assert_eq!((status.sha256, status.load_errors), (Some(sha), Vec::new()));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_become_errors_in_configure_and_in_calls() {
    let dir = test_dir();
    install(&dir, "panics");
    let mut connectors = Vec::new();
    for (i, isolation) in BOTH.into_iter().enumerate() {
        connectors.push(connector(
            &format!("calls-{i}"),
            "panics",
            isolation,
            Value::Null,
        ));
        connectors.push(connector(
            &format!("config-{i}"),
            "panics",
            isolation,
            json!({"panic_in": "configure"}),
        ));
    }
    let host = start(config(&dir, connectors)).await;
    for i in 0..2 {
        let name = format!("config-{i}");
        let status = instance_status(&host, &name).unwrap_or_else(|| panic!("no status"));
        assert_eq!(status.state, InstanceState::Failed);
        let reason = status.reason.unwrap_or_default();
        assert!(
            reason.contains("panicked in configure: configure exploded"),
            "{reason}"
        );

        let name = format!("calls-{i}");
        let call = host.call(&name, "panic", Value::Null).await;
        let Err(CallError::Panicked {
            instance,
            plugin,
            message,
        }) = call
        else {
            panic!("{name}: expected a panic error, got {call:?}");
        };
        assert_eq!(
            (instance.as_str(), plugin.as_str()),
            (name.as_str(), "panics")
        );
        assert!(message.starts_with("call exploded (at "), "{message}");
        assert_eq!(
            echo(&host, &name, json!("still here")).await.ok(),
            Some(json!("still here"))
        );
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_quarantine_an_instance() {
    let dir = test_dir();
    install(&dir, "panics");
    let mut cfg = config(
        &dir,
        vec![connector("p", "panics", Isolation::InProcess, Value::Null)],
    );
    cfg.quarantine_after = 3;
    let host = start(cfg).await;
    for _ in 0..3 {
        let call = host.call("p", "panic", Value::Null).await;
        assert!(matches!(call, Err(CallError::Panicked { .. })), "{call:?}");
    }
    let call = echo(&host, "p", json!(1)).await;
    let Err(CallError::Quarantined { reason, .. }) = call else {
        panic!("expected quarantine, got {call:?}");
    };
    assert!(reason.starts_with("3 consecutive failed calls"), "{reason}");
    let status = instance_status(&host, "p").unwrap_or_else(|| panic!("no status"));
    assert_eq!(
        (status.state, status.calls, status.errors),
        (InstanceState::Quarantined, 3, 3)
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_times_out_restarting_a_child_or_quarantining_in_process() {
    let dir = test_dir();
    install(&dir, "hangs");
    let mut proc = connector("proc", "hangs", Isolation::Process, Value::Null);
    proc.timeout_ms = Some(300);
    let mut inproc = connector("inproc", "hangs", Isolation::InProcess, Value::Null);
    inproc.timeout_ms = Some(300);
    let host = start(config(&dir, vec![proc, inproc])).await;

    let call = host.call("proc", "hang", Value::Null).await;
    assert!(
        matches!(&call, Err(CallError::Timeout { after, .. }) if *after == Duration::from_millis(300)),
        "{call:?}"
    );
    assert_eq!(echo(&host, "proc", json!(2)).await.ok(), Some(json!(2)));

    let call = host.call("inproc", "hang", Value::Null).await;
    assert!(matches!(call, Err(CallError::Timeout { .. })), "{call:?}");
    let call = echo(&host, "inproc", json!(3)).await;
    assert!(
        matches!(call, Err(CallError::Quarantined { .. })),
        "{call:?}"
    );
    let status = instance_status(&host, "inproc").unwrap_or_else(|| panic!("no status"));
    assert_eq!(status.state, InstanceState::Quarantined);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_and_segfaults_kill_only_the_child_which_is_restarted() {
    let dir = test_dir();
    install(&dir, "aborts");
    install(&dir, "segfaults");
    let host = start(config(
        &dir,
        vec![
            connector("ab", "aborts", Isolation::Process, Value::Null),
            connector("sv", "segfaults", Isolation::Process, Value::Null),
        ],
    ))
    .await;
    for (instance, op, signal) in [("ab", "abort", "SIGABRT"), ("sv", "segv", "SIGSEGV")] {
        for round in 0..2 {
            let call = host.call(instance, op, Value::Null).await;
            let Err(CallError::Crashed { detail, .. }) = &call else {
                panic!("{instance}: expected a crash, got {call:?}");
            };
            assert!(detail.contains(signal), "{detail}");
            assert_eq!(
                echo(&host, instance, json!(round)).await.ok(),
                Some(json!(round))
            );
        }
        let status = instance_status(&host, instance).unwrap_or_else(|| panic!("no status"));
        assert_eq!((status.state, status.errors), (InstanceState::Running, 2));
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_output_is_reported_as_bad_output() {
    let dir = test_dir();
    install(&dir, "bad-output");
    let host = start(config(
        &dir,
        vec![
            connector("proc", "bad-output", Isolation::Process, Value::Null),
            connector("inproc", "bad-output", Isolation::InProcess, Value::Null),
        ],
    ))
    .await;
    let cases = [
        ("bad_utf8", "output is not utf-8"),
        ("bad_json", "output is not a json envelope"),
        ("wrong_version", "envelope version 2, this host speaks 1"),
        (
            "oversized",
            "output of 67108865 bytes is over the 64 MiB limit",
        ),
    ];
    for instance in ["proc", "inproc"] {
        for (op, expected) in cases {
            let call = host.call(instance, op, Value::Null).await;
            let Err(CallError::BadOutput { detail, .. }) = &call else {
                panic!("{instance}/{op}: expected bad output, got {call:?}");
            };
            assert!(detail.starts_with(expected), "{instance}/{op}: {detail}");
        }
        assert_eq!(
            echo(&host, instance, json!({"k": 1})).await.ok(),
            Some(json!({"k": 1}))
        );
    }
    host.shutdown().await;
}

/// Records every event the daemon logs, as `target plugin=... message`.
struct Capture(Mutex<Vec<String>>);

impl tracing::Subscriber for &'static Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={:?}", field.name(), value));
            }
        }
        let mut line = Line(event.metadata().target().to_string());
        event.record(&mut line);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The capturing subscriber, installed as the global default of this test binary.
fn captured_logs() -> &'static Capture {
    static CAPTURE: OnceLock<Option<&'static Capture>> = OnceLock::new();
    let capture = CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        tracing::subscriber::set_global_default(capture)
            .ok()
            .map(|()| capture)
    });
    match capture {
        Some(capture) => capture,
        None => panic!("another global tracing subscriber is installed in this test binary; this test needs its own"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_log_lines_reach_the_daemon_log_with_the_plugin_name() {
    let logs = captured_logs();
    let dir = test_dir();
    install(&dir, "good");
    let host = start(config(
        &dir,
        vec![
            connector("proc", "good", Isolation::Process, Value::Null),
            connector("inproc", "good", Isolation::InProcess, Value::Null),
        ],
    ))
    .await;
    for instance in ["proc", "inproc"] {
        let marker = format!("marker-{instance}-{}", std::process::id());
        assert_eq!(
            host.call(instance, "log", json!(marker)).await.ok(),
            Some(Value::Null)
        );
        let line = eventually(&format!("a log line with {marker}"), || {
            let lines = logs.0.lock().unwrap_or_else(|e| e.into_inner());
            lines.iter().find(|l| l.contains(&marker)).cloned()
        })
        .await;
        assert!(line.starts_with("settled::plugin"), "{line}");
        assert!(line.contains(r#"plugin="good""#), "{line}");
        assert!(
            line.contains("message=log line from the good plugin"),
            "{line}"
        );
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_loads_replaces_keeps_on_broken_drop_in_and_stops_on_removal() {
    let dir = test_dir();
    let mut cfg = config(
        &dir,
        vec![
            connector("proc", "good", Isolation::Process, Value::Null),
            connector("inproc", "good", Isolation::InProcess, Value::Null),
        ],
    );
    cfg.watch = true;
    let host = start(cfg).await;
    let call = echo(&host, "proc", json!(0)).await;
    assert!(
        matches!(&call, Err(CallError::NotRunning { reason, .. }) if reason.starts_with("no file in")),
        "{call:?}"
    );

    let good = read(&fixture("good"));
    let path = place(&dir, "good.so", &good);
    let first = sha256_hex(&good);
    eventually("the dropped-in plugin to load", || {
        plugin_status(&host, "good.so").filter(|s| s.sha256.as_deref() == Some(first.as_str()))
    })
    .await;
    for instance in ["proc", "inproc"] {
        assert_eq!(echo(&host, instance, json!(1)).await.ok(), Some(json!(1)));
    }

    let mut second = good.clone();
    second.extend_from_slice(b"version two");
    place(&dir, "good.so", &second);
    let second_sha = sha256_hex(&second);
    eventually("the replacement to swap in", || {
        plugin_status(&host, "good.so").filter(|s| s.sha256.as_deref() == Some(second_sha.as_str()))
    })
    .await;
    assert_eq!(echo(&host, "proc", json!(2)).await.ok(), Some(json!(2)));

    place(&dir, "good.so", &good[..good.len() / 3]);
    let status = eventually("the broken drop-in to be refused", || {
        plugin_status(&host, "good.so").filter(|s| !s.load_errors.is_empty())
    })
    .await;
    assert_eq!(status.sha256.as_deref(), Some(second_sha.as_str()));
    assert!(
        status.load_errors[0].starts_with("is truncated"),
        "{:?}",
        status.load_errors
    );
    for instance in ["proc", "inproc"] {
        assert_eq!(echo(&host, instance, json!(3)).await.ok(), Some(json!(3)));
    }

    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("removing: {e}"));
    eventually("the removal to stop the instances", || {
        host.instances().iter().all(|i| !i.running).then_some(())
    })
    .await;
    let call = echo(&host, "proc", json!(4)).await;
    assert!(
        matches!(&call, Err(CallError::NotRunning { reason, .. }) if reason.ends_with("was removed")),
        "{call:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_partial_copy_is_loaded_once_when_complete() {
    let dir = test_dir();
    let mut cfg = config(
        &dir,
        vec![connector("g", "good", Isolation::Process, Value::Null)],
    );
    cfg.watch = true;
    let host = start(cfg).await;
    let good = read(&fixture("good"));
    let path = dir.plugins.join("good.so");
    {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode_644()
            .open(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        // A slow writer: 20 chunks, each followed by a pause shorter than the host's debounce.
        for chunk in good.chunks(good.len().div_ceil(20)) {
            out.write_all(chunk)
                .unwrap_or_else(|e| panic!("writing: {e}"));
            out.flush().unwrap_or_else(|e| panic!("flushing: {e}"));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    let status = eventually("the completed copy to load", || {
        plugin_status(&host, "good.so").filter(|s| s.sha256.is_some())
    })
    .await;
    assert_eq!(
        (status.loads, status.load_errors.len()),
        (1, 0),
        "{status:?}"
    );
    assert_eq!(echo(&host, "g", json!("ok")).await.ok(), Some(json!("ok")));
    host.shutdown().await;
}

trait Mode644 {
    fn mode_644(&mut self) -> &mut Self;
}

impl Mode644 for std::fs::OpenOptions {
    fn mode_644(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o644)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_hot_replacements_while_callers_keep_calling() {
    let dir = test_dir();
    let good = read(&fixture("good"));
    place(&dir, "good.so", &good);
    let mut cfg = config(
        &dir,
        vec![
            connector("proc", "good", Isolation::Process, Value::Null),
            connector("inproc", "good", Isolation::InProcess, Value::Null),
        ],
    );
    cfg.watch = true;
    let host = start(cfg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut callers = Vec::new();
    for caller in 0..4 {
        let (host, stop, calls, failures) =
            (host.clone(), stop.clone(), calls.clone(), failures.clone());
        callers.push(tokio::spawn(async move {
            let instance = if caller % 2 == 0 { "proc" } else { "inproc" };
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match echo(&host, instance, json!(n)).await {
                    Ok(v) if v == json!(n) => {}
                    other => failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{instance}: {other:?}")),
                }
                calls.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for round in 0..50u64 {
        let mut next = good.clone();
        next.extend_from_slice(format!("replacement {round}").as_bytes());
        place(&dir, "good.so", &next);
        eventually(&format!("replacement {round} to swap in"), || {
            plugin_status(&host, "good.so").filter(|s| s.loads == round + 2)
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap_or_else(|e| panic!("caller task: {e}"));
    }
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(failures, Vec::<String>::new());
    assert!(
        calls.load(Ordering::SeqCst) > 100,
        "callers made too few calls"
    );
    let status = plugin_status(&host, "good.so").unwrap_or_else(|| panic!("no status"));
    assert_eq!((status.loads, status.load_errors.len()), (51, 0));
    host.shutdown().await;
}

/// The lead names in `records` (panics on any other kind).
fn lead_names(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| match r {
            Record::Lead(lead) => lead.name.clone(),
            other => panic!("expected a lead, got {other:?}"),
        })
        .collect()
}

async fn begin(host: &PluginHost, instance: &str) -> ParseSession {
    match host.parse_begin(instance, "leads.good").await {
        Ok(session) => session,
        Err(e) => panic!("{instance}: parse_begin: {e}"),
    }
}

async fn live_parsers(host: &PluginHost, instance: &str) -> Option<u64> {
    host.call(instance, "live_parsers", Value::Null)
        .await
        .ok()
        .and_then(|v| v.as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_sessions_stream_natively_and_by_fallback_in_both_isolation_modes() {
    let dir = test_dir();
    install(&dir, "good");
    let host = start(config(
        &dir,
        vec![
            connector("native-proc", "good", Isolation::Process, Value::Null),
            connector("native-inproc", "good", Isolation::InProcess, Value::Null),
            connector(
                "fallback-proc",
                "good",
                Isolation::Process,
                json!({"stream": false}),
            ),
            connector(
                "fallback-inproc",
                "good",
                Isolation::InProcess,
                json!({"stream": false}),
            ),
        ],
    ))
    .await;
    let chunks: [&[u8]; 3] = [b"Ann\nBo", b"b\r\nCy", b""];
    for instance in [
        "native-proc",
        "native-inproc",
        "fallback-proc",
        "fallback-inproc",
    ] {
        let native = instance.starts_with("native");
        let mut session = begin(&host, instance).await;
        let mut fed = Vec::new();
        for chunk in chunks {
            match session.feed(chunk).await {
                Ok(records) => fed.push(lead_names(&records)),
                Err(e) => panic!("{instance}: feed: {e}"),
            }
        }
        let expected: Vec<Vec<String>> = if native {
            vec![vec!["Ann".into()], vec!["Bob".into()], vec![]]
        } else {
            vec![vec![], vec![], vec![]]
        };
        assert_eq!(fed, expected, "{instance}: records per feed");
        let rest = session
            .finish()
            .await
            .unwrap_or_else(|e| panic!("{instance}: finish: {e}"));
        let rest = lead_names(&rest);
        let all: Vec<String> = fed.into_iter().flatten().chain(rest).collect();
        let whole = host
            .parse(
                instance,
                FileRequest {
                    name: "leads.good".into(),
                    content: chunks.concat(),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{instance}: parse: {e}"));
        assert_eq!(all, lead_names(&whole.records), "{instance}: same as parse");
        assert_eq!(all, ["Ann", "Bob", "Cy"], "{instance}");

        // A bad line fails the session like `parse` fails the file: at the feed that completes it
        // natively, at the end with the fallback.
        let mut bad = begin(&host, instance).await;
        let fed = bad.feed(b"ok\n\xff\n").await;
        let failed = if native {
            fed.map(|_| ())
        } else {
            assert!(fed.is_ok_and(|r| r.is_empty()), "{instance}");
            bad.finish().await.map(|_| ())
        };
        assert!(
            matches!(&failed, Err(CallError::Plugin(e)) if e.code == "bad_input"),
            "{instance}: {failed:?}"
        );
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_abort_and_dropping_a_session_free_the_plugin_state() {
    let dir = test_dir();
    install(&dir, "good");
    let host = start(config(
        &dir,
        vec![
            connector("proc", "good", Isolation::Process, Value::Null),
            connector("inproc", "good", Isolation::InProcess, Value::Null),
        ],
    ))
    .await;
    for instance in ["proc", "inproc"] {
        let mut kept = begin(&host, instance).await;
        let aborted = begin(&host, instance).await;
        let dropped = begin(&host, instance).await;
        assert!(kept.feed(b"a\nb").await.is_ok(), "{instance}");
        assert_eq!(live_parsers(&host, instance).await, Some(3), "{instance}");
        aborted.abort().await;
        assert_eq!(live_parsers(&host, instance).await, Some(2), "{instance}");
        drop(dropped);
        // The abort of a dropped session runs in the background.
        let deadline = Instant::now() + Duration::from_secs(30);
        while live_parsers(&host, instance).await != Some(1) {
            assert!(
                Instant::now() < deadline,
                "{instance}: dropped session still open"
            );
            tokio::task::yield_now().await;
        }
        let rest = kept.finish().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lead_names(&rest), ["b"], "{instance}");
        assert_eq!(live_parsers(&host, instance).await, Some(0), "{instance}");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_restart_mid_session_fails_the_session_with_a_clear_error() {
    let dir = test_dir();
    install(&dir, "aborts");
    let host = start(config(
        &dir,
        vec![connector("proc", "aborts", Isolation::Process, Value::Null)],
    ))
    .await;
    let lost = "plugin restarted during the parse session; the file was not imported";
    let is_lost = |result: &Result<Vec<Record>, CallError>| matches!(result, Err(CallError::Crashed { detail, .. }) if detail == lost);

    // The child dies between two feeds: the next feed must not go to its replacement.
    let mut session = begin(&host, "proc").await;
    assert!(session.feed(b"first half").await.is_ok());
    let crashed = host.call("proc", "abort", Value::Null).await;
    assert!(
        matches!(crashed, Err(CallError::Crashed { .. })),
        "{crashed:?}"
    );
    let fed = session.feed(b"second half").await;
    assert!(is_lost(&fed), "{fed:?}");
    let finished = session.finish().await;
    assert!(is_lost(&finished), "{finished:?}");

    // Same when another call has already restarted the child before the session's next call.
    let mut session = begin(&host, "proc").await;
    assert!(session.feed(b"first half").await.is_ok());
    assert!(host.call("proc", "abort", Value::Null).await.is_err());
    assert_eq!(echo(&host, "proc", json!(1)).await.ok(), Some(json!(1)));
    let fed = session.feed(b"second half").await;
    assert!(is_lost(&fed), "{fed:?}");

    // A session begun in the new child works.
    let mut session = begin(&host, "proc").await;
    assert!(session.feed(b"x").await.is_ok());
    let unsupported = session.finish().await;
    assert!(
        matches!(&unsupported, Err(CallError::Plugin(e)) if e.code == "unsupported"),
        "the aborts fixture cannot parse: {unsupported:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_built_for_abi_1_0_are_buffered_by_the_host_and_parsed_at_the_end() {
    let dir = test_dir();
    install(&dir, "abi-minor-0");
    let host = start(config(
        &dir,
        vec![
            connector("proc", "abi-minor-0", Isolation::Process, Value::Null),
            connector("inproc", "abi-minor-0", Isolation::InProcess, Value::Null),
        ],
    ))
    .await;
    let status = plugin_status(&host, "abi-minor-0.so")
        .unwrap_or_else(|| panic!("no status for the fixture"));
    assert_eq!(status.abi.as_deref(), Some("1.0"));
    for instance in ["proc", "inproc"] {
        // The fixture refuses session operations, as a 1.0 plugin would.
        let direct = host
            .call(instance, "parse_begin", json!({"name": "x"}))
            .await;
        assert!(
            matches!(&direct, Err(CallError::Plugin(e)) if e.code == "unsupported"),
            "{direct:?}"
        );
        let mut session = begin(&host, instance).await;
        for chunk in [&b"Ann\nBo"[..], b"b\nCy"] {
            let fed = session.feed(chunk).await;
            assert!(fed.is_ok_and(|r| r.is_empty()), "{instance}");
        }
        let records = session.finish().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lead_names(&records), ["Ann", "Bob", "Cy"], "{instance}");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_frame_limit_is_refused_by_the_host_and_never_counts_towards_quarantine()
{
    let dir = test_dir();
    install(&dir, "good");
    let mut cfg = config(
        &dir,
        vec![connector("p", "good", Isolation::Process, Value::Null)],
    );
    // One counted failure would quarantine the instance.
    cfg.quarantine_after = 1;
    let host = start(cfg).await;
    // More than the child reads in one frame: sending it would kill the child, so the host refuses it.
    let huge = Value::String("a".repeat(settled_plugin_api::abi::MAX_OUTPUT + 1));
    let call = echo(&host, "p", huge).await;
    assert!(matches!(call, Err(CallError::TooLarge { .. })), "{call:?}");
    assert!(!call.as_ref().is_err_and(CallError::counts_against_plugin));
    let status = instance_status(&host, "p").unwrap_or_else(|| panic!("no status"));
    assert_eq!((status.state, status.calls), (InstanceState::Running, 0));
    assert_eq!(echo(&host, "p", json!(7)).await.ok(), Some(json!(7)));
    host.shutdown().await;
}
