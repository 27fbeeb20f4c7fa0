//! Runs the real `settled` binary in a fresh temp dir with a cleaned environment, and prints its command,
//! working dir and output when a test fails.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "e2e-test-token-0123456789abcdef0123456789";

/// `target/debug` (or `$CARGO_TARGET_DIR/debug`): where the test binary, `settled` and the plugins are.
pub fn target_dir() -> PathBuf {
    // The test binary runs from target/debug/deps.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .to_path_buf()
}

pub fn settled_bin() -> PathBuf {
    let bin = target_dir().join("settled");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first (the README's test command does)",
        bin.display()
    );
    bin
}

/// The bundled plugin `name` (`camt`, `bank-csv`, ...) as built by `cargo build --workspace`.
pub fn plugin_lib(name: &str) -> PathBuf {
    let lib = target_dir().join(format!("libsettled_plugin_{}.so", name.replace('-', "_")));
    assert!(
        lib.exists(),
        "{} is missing: run `cargo build --workspace` first",
        lib.display()
    );
    lib
}

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `settled` command with a clean environment.
pub fn settled(dir: &Path) -> Command {
    let mut cmd = Command::new(settled_bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("RUST_LOG", "info")
        .current_dir(dir);
    cmd
}

/// Output of a finished command, with everything a failing test should print.
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub describe: String,
}

pub fn run(mut cmd: Command) -> Run {
    let describe = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {describe}: {e}"));
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        describe,
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.describe, self.status, self.stdout, self.stderr
        )
    }
}

/// A running daemon; killed on drop, its log printed if the test panicked.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    /// Extra environment of the process [`Daemon::spawn`] starts next (test-only hooks).
    pub env: Vec<(String, String)>,
    log: PathBuf,
    http: reqwest::blocking::Client,
}

/// Which plugins to install into the daemon's plugin folder, and extra config.
pub struct Setup {
    pub plugins: Vec<&'static str>,
    pub config: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            plugins: vec!["webform", "camt", "mt940", "bank-csv", "ofx"],
            config: String::new(),
        }
    }
}

impl Daemon {
    pub fn start(setup: Setup) -> Daemon {
        Daemon::start_in(tempfile::tempdir().expect("tempdir"), setup)
    }

    /// Like [`Daemon::start`] in a temp dir the test prepared (e.g. with a small filesystem mounted at `data`).
    pub fn start_in(dir: tempfile::TempDir, setup: Setup) -> Daemon {
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).expect("plugin dir");
        for p in &setup.plugins {
            let lib = plugin_lib(p);
            std::fs::copy(&lib, plugins.join(lib.file_name().expect("file name")))
                .expect("copy plugin");
        }
        let port = free_port();
        std::fs::write(
            dir.path().join("settled.toml"),
            config_text(dir.path(), port, &setup.config),
        )
        .expect("config");
        let mut d = Daemon {
            dir,
            port,
            child: None,
            env: Vec::new(),
            log: PathBuf::new(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        };
        d.spawn();
        d
    }

    /// Replace the config file's extra part (what `Setup::config` gave) while the daemon runs: written under a
    /// temporary name and renamed, as an editor or a deployment tool would.
    pub fn rewrite_config(&self, extra: &str) {
        let path = self.dir.path().join("settled.toml");
        let tmp = self.dir.path().join(".settled.toml.tmp");
        std::fs::write(&tmp, config_text(self.dir.path(), self.port, extra)).expect("config");
        std::fs::rename(&tmp, &path).expect("renaming the config");
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// (Re)start the process on the same data.
    pub fn spawn(&mut self) {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.log = self.dir.path().join(format!("daemon-{n}.log"));
        let log = std::fs::File::create(&self.log).expect("log file");
        let mut cmd = settled(self.dir.path());
        cmd.args(["run", "--config"])
            .arg(self.dir.path().join("settled.toml"))
            .env("SETTLED_API_TOKEN", TOKEN)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn settled run"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("settled exited early with {status}\n{}", self.log_text());
                }
            }
            if self
                .http
                .get(self.url("/healthz"))
                .send()
                .map(|r| r.status().is_success())
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("settled did not become ready\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Send a request with the token; returns (status, JSON body).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", self.log_text()));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Like [`Daemon::call`] but panics unless 2xx.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {v}\n{}",
            self.log_text()
        );
        v
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// `GET /metrics` as text, or `None` when it cannot be read.
    pub fn metrics(&self) -> Option<String> {
        self.http
            .get(self.url("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .ok()?
            .text()
            .ok()
    }

    /// Poll until `probe` returns Some, or panic after 30 s.
    pub fn eventually<T>(&self, what: &str, probe: impl FnMut() -> Option<T>) -> T {
        self.eventually_within(what, Duration::from_secs(30), probe)
    }

    /// Poll until `probe` returns Some, or panic after `limit` (for work that takes long on a loaded machine).
    pub fn eventually_within<T>(
        &self,
        what: &str,
        limit: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "settled did not stop within 30 s of SIGTERM\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The config file of a test daemon in `dir`: data and plugin folders there, `port`, then `extra`.
fn config_text(dir: &Path, port: u16, extra: &str) -> String {
    format!(
        "data_dir = \"{data}\"\nlisten = \"127.0.0.1:{port}\"\n[plugins]\ndir = \"{plugins}\"\n{extra}\n",
        data = dir.join("data").display(),
        plugins = dir.join("plugins").display(),
    )
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&self.log) {
                let _ = f.read_to_string(&mut text);
            }
            eprintln!("--- settled log ({})\n{text}", self.log.display());
        }
    }
}

/// Lead -> converted -> quote sent, all over HTTP; returns the quote view.
pub fn sent_quote(d: &Daemon, company: &str, lines: Value) -> Value {
    let email = format!("buyer@{}.example", company.to_lowercase().replace(' ', "-"));
    let lead = d.ok("POST", "/v1/leads", Some(serde_json::json!({"name": "Buyer", "email": email, "company": company, "source": "web"})));
    let conv = d.ok(
        "POST",
        &format!("/v1/leads/{}/convert", lead["id"].as_str().unwrap()),
        Some(serde_json::json!({"opportunity": {"name": "deal", "value": "100.00", "currency": "EUR"}})),
    );
    let q = d.ok("POST", "/v1/quotes", Some(serde_json::json!({"opportunity_id": conv["opportunity_id"], "currency": "EUR", "lines": lines})));
    d.ok(
        "POST",
        &format!("/v1/quotes/{}/send", q["id"].as_str().unwrap()),
        None,
    )
}

/// Lead -> converted -> quote accepted -> order -> invoice issued, all over HTTP; returns the invoice view.
pub fn issue_invoice(d: &Daemon, company: &str, lines: Value) -> Value {
    let q = sent_quote(d, company, lines);
    let qid = q["id"].as_str().unwrap();
    d.ok("POST", &format!("/v1/quotes/{qid}/accept"), None);
    let order = d.ok(
        "POST",
        "/v1/orders",
        Some(serde_json::json!({"quote_id": qid})),
    );
    let inv = d.ok(
        "POST",
        "/v1/invoices",
        Some(serde_json::json!({"order_id": order["id"]})),
    );
    d.ok(
        "POST",
        &format!("/v1/invoices/{}/issue", inv["id"].as_str().unwrap()),
        Some(serde_json::json!({})),
    )
}

pub fn one_line(amount: &str) -> Value {
    serde_json::json!([{"description": "work", "quantity": "1", "unit_price": amount, "tax_rate": "0"}])
}

/// `settled ARGS` against the daemon, with its URL and token, run to the end.
pub fn cli(d: &Daemon, args: &[&str]) -> Run {
    let mut cmd = settled(d.dir.path());
    cmd.args(args)
        .args(["--url", &d.url("")])
        .env("SETTLED_API_TOKEN", TOKEN);
    run(cmd)
}

/// Import one file through `settled import --json`; the file's summary.
pub fn import_json(d: &Daemon, name: &str, content: &str) -> Value {
    let path = d.dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    let r = cli(d, &["import", "--json", path.to_str().unwrap()]);
    assert!(r.status.success(), "{name}: {r}");
    let summary: Value =
        serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{name}: {e}: {r}"));
    if summary.is_array() {
        summary[0].clone()
    } else {
        summary
    }
}

/// The invoice `inv` as the API serves it now.
pub fn invoice(d: &Daemon, inv: &Value) -> Value {
    d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    )
}

/// A payment entered by hand over the API, allocated to `invoice`.
pub fn pay(d: &Daemon, invoice: &Value, amount: &str) -> Value {
    d.ok(
        "POST",
        "/v1/payments",
        Some(
            serde_json::json!({"amount": amount, "currency": "EUR", "payer": "Buyer",
            "allocations": [{"invoice_id": invoice["id"]}]}),
        ),
    )
}

/// Wait for a file in `folder` whose name ends with `name` (done/ and failed/ prefix a time stamp).
pub fn wait_for_file(d: &Daemon, folder: &Path, name: &str) -> PathBuf {
    d.eventually(&format!("{name} in {}", folder.display()), || {
        std::fs::read_dir(folder)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(name))
            })
    })
}

/// One issued invoice of a store seeded by [`seed_open_invoices`].
#[derive(Debug, Clone)]
pub struct Seeded {
    pub number: String,
    pub customer: String,
}

/// Seed `accounts` customers with `per_account` issued invoices each (one order, invoiced line by line) into the
/// store at `data`, in process through the real engine commands (thousands of invoices over HTTP would take minutes).
/// Run it before a daemon opens `data`.
pub fn seed_open_invoices(data: &Path, accounts: usize, per_account: usize) -> Vec<Seeded> {
    use serde_json::json;
    use settled::engine::{Engine, SystemClock};
    use settled::store::{Store, StoreOptions};
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = Store::open(data, &StoreOptions::default()).expect("store");
        let config = settled::config::Config::default();
        let engine = Engine::new(store, config, Box::new(SystemClock)).expect("engine");
        let workers = 16;
        let mut tasks = Vec::new();
        for w in 0..workers {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for a in (w..accounts).step_by(workers) {
                    let customer = format!("Customer {a:06} Ltd");
                    let lead = json!({"name": "Buyer", "email": format!("ap@customer{a:06}.example"),
                        "company": customer, "source": "import"});
                    let (lead, _) = engine
                        .capture_lead(&serde_json::from_value(lead).expect("lead"), "seed")
                        .await
                        .expect("capture");
                    let opp = json!({"opportunity": {"name": "deal", "value": "1000.00", "currency": "EUR"}});
                    let conv = engine
                        .convert_lead(&lead.id, serde_json::from_value(opp).expect("opp"), "seed")
                        .await
                        .expect("convert");
                    let lines: Vec<Value> = (0..per_account)
                        .map(|i| json!({"description": format!("item {i}"), "quantity": "1",
                            "unit_price": format!("{}.{:02}", 50 + (a * 7 + i * 13) % 900, (a + i) % 100), "tax_rate": "0"}))
                        .collect();
                    let quote = json!({"opportunity_id": conv.opportunity_id, "currency": "EUR", "lines": lines});
                    let q = engine
                        .create_quote(serde_json::from_value(quote).expect("quote"), "seed")
                        .await
                        .expect("quote");
                    for action in ["send", "accept"] {
                        engine.quote_action(&q.id, action, None, "seed").await.expect(action);
                    }
                    let order = engine
                        .create_order(serde_json::from_value(json!({"quote_id": q.id})).expect("order"), "seed")
                        .await
                        .expect("order");
                    for line in 1..=per_account {
                        let draft = json!({"order_id": order.id, "lines": [{"line_no": line, "quantity": "1"}]});
                        let draft = engine
                            .create_invoice(serde_json::from_value(draft).expect("draft"), "seed")
                            .await
                            .expect("invoice");
                        let inv = engine
                            .issue_invoice(&draft.id, serde_json::from_value(json!({})).expect("issue"), "seed")
                            .await
                            .expect("issue");
                        out.push(Seeded {
                            number: inv.number.clone().unwrap_or_default(),
                            customer: customer.clone(),
                        });
                    }
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("seed task"));
        }
        engine.store().flush().expect("flush");
        all
    })
}

/// `settled check` with `args` (`--data-dir`, `--config`, `--online`, ...) against the daemon's URL and token.
pub fn check(d: &Daemon, args: &[&str]) -> Run {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    cli(d, &all)
}
