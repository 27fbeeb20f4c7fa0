//! A private Tryton 6.0 server for the `tryton` connector tests. A template SQLite database is seeded once per test
//! run by `tests/tryton/seed.py` (company, chart of accounts, fiscal year, taxes `VAT 21/10/0`, payment method `Bank`,
//! party `Seeded Customer`; about 10 s); each server copies it into its own temp dir and starts `trytond` on a free
//! loopback port (under 1 s). Stopped when dropped. Needs `tryton-server tryton-modules-account-invoice tryton-proteus`
//! (`tests/run` installs them).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{free_port, target_dir};

pub const DATABASE: &str = "settled";
pub const USER: &str = "admin";
pub const PASSWORD: &str = "admin";

/// The seeded template database, made once per test run.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = target_dir().join("tryton-template");
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tryton/seed.py");
        let out = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "seeding the Tryton template failed (apt-get install tryton-server tryton-modules-account-invoice \
             tryton-proteus):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join(format!("{DATABASE}.sqlite"))
    })
}

/// A running `trytond` on a copy of the template.
pub struct Tryton {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    http: reqwest::blocking::Client,
    session: Option<(String, Value)>,
}

impl Tryton {
    pub fn start() -> Tryton {
        let db = template();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(db, dir.path().join(format!("{DATABASE}.sqlite")))
            .expect("copying the template");
        let port = free_port();
        std::fs::write(
            dir.path().join("trytond.conf"),
            format!(
                "[database]\nuri = sqlite://\npath = {}\n[web]\nlisten = 127.0.0.1:{port}\n",
                dir.path().display()
            ),
        )
        .expect("trytond.conf");
        let mut t = Tryton {
            dir,
            port,
            child: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            session: None,
        };
        t.spawn();
        t
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("trytond.log")
    }

    /// Start the server (again) and wait until it answers.
    pub fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("trytond log");
        let child = Command::new("trytond")
            .arg("-c")
            .arg(self.dir.path().join("trytond.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting trytond (apt-get install tryton-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Any HTTP answer means it listens (calls without a session get 401).
        while self
            .http
            .post(format!("{}/{DATABASE}/", self.url()))
            .send()
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "trytond did not answer within 30 s\n{}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server (the database stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn post(&self, body: Value, auth: Option<&str>) -> Result<Value, String> {
        let mut req = self
            .http
            .post(format!("{}/{DATABASE}/", self.url()))
            .header("content-type", "application/json")
            .json(&body);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        match answer.get("error").filter(|e| !e.is_null()) {
            Some(error) => Err(format!("Tryton error: {error}")),
            None => Ok(answer["result"].clone()),
        }
    }

    /// Call `method` as the admin (logging in on first use); panics on an error.
    pub fn call(&mut self, method: &str, params: Vec<Value>) -> Value {
        if self.session.is_none() {
            use base64::Engine as _;
            let login = self
                .post(json!({"id": 1, "method": "common.db.login", "params": [USER, {"password": PASSWORD}]}), None)
                .expect("admin login");
            let token = base64::engine::general_purpose::STANDARD.encode(format!(
                "{USER}:{}:{}",
                login[0],
                login[1].as_str().unwrap_or_default()
            ));
            let auth = format!("Session {token}");
            let context = self
                .post(json!({"id": 2, "method": "model.res.user.get_preferences", "params": [true, {}]}), Some(&auth))
                .expect("preferences");
            self.session = Some((auth, context));
        }
        let (auth, context) = self.session.clone().expect("session");
        let mut params = params;
        params.push(context);
        self.post(
            json!({"id": 3, "method": method, "params": params}),
            Some(&auth),
        )
        .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Customer invoices (`number`, `reference`, `state`, `total_amount`, `amount_to_pay` as plain strings), by id.
    pub fn invoices(&mut self) -> Vec<Value> {
        let rows = self.call(
            "model.account.invoice.search_read",
            vec![
                json!([["type", "=", "out"]]),
                json!(0),
                json!(null),
                json!([["id", "ASC"]]),
                json!([
                    "id",
                    "number",
                    "reference",
                    "state",
                    "total_amount",
                    "amount_to_pay",
                    "party.name"
                ]),
            ],
        );
        rows.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                json!({"id": r["id"], "number": r["number"], "reference": r["reference"], "state": r["state"],
                    "party": r["party."]["name"], "total": r["total_amount"]["decimal"],
                    "to_pay": r["amount_to_pay"]["decimal"]})
            })
            .collect()
    }

    /// Create and post a customer invoice in Tryton for `party` (by name) with one line of `net` at VAT 21 %; its id
    /// and number.
    pub fn post_invoice(&mut self, party: &str, net: &str) -> (i64, String) {
        let parties = self.call(
            "model.party.party.search_read",
            vec![
                json!([["name", "=", party]]),
                json!(0),
                json!(1),
                json!(null),
                json!(["id", "addresses"]),
            ],
        );
        let party = &parties[0];
        let find = |t: &mut Tryton, model: &str, domain: Value| {
            t.call(
                &format!("model.{model}.search"),
                vec![domain, json!(0), json!(1), json!(null)],
            )[0]
            .clone()
        };
        let journal = find(self, "account.journal", json!([["type", "=", "revenue"]]));
        let receivable = find(
            self,
            "account.account",
            json!([["type.receivable", "=", true]]),
        );
        let revenue = find(
            self,
            "account.account",
            json!([["type.revenue", "=", true]]),
        );
        let tax = find(self, "account.tax", json!([["name", "=", "VAT 21"]]));
        let currency = find(self, "currency.currency", json!([["code", "=", "EUR"]]));
        let term = find(
            self,
            "account.invoice.payment_term",
            json!([["name", "=", "Direct"]]),
        );
        let created = self.call(
            "model.account.invoice.create",
            vec![json!([{"type": "out", "party": party["id"], "invoice_address": party["addresses"][0],
                "journal": journal, "account": receivable, "currency": currency, "payment_term": term,
                "lines": [["create", [{"type": "line", "description": "consulting", "quantity": 1.0,
                    "unit_price": {"__class__": "Decimal", "decimal": net}, "account": revenue,
                    "taxes": [["add", [tax]]]}]]]}])],
        );
        let id = created[0].as_i64().expect("invoice id");
        self.call("model.account.invoice.post", vec![json!([id])]);
        let number = self
            .invoices()
            .into_iter()
            .find(|i| i["id"] == id)
            .expect("posted")["number"]
            .as_str()
            .expect("number")
            .to_string();
        (id, number)
    }

    /// Pay invoice `id` in Tryton by hand (the pay wizard, as a person would), in full or in part.
    pub fn pay(&mut self, id: i64, amount: &str) {
        let wizard = self.call("wizard.account.invoice.pay.create", vec![])[0].clone();
        let (auth, context) = self.session.clone().expect("session");
        let mut ctx = context.clone();
        ctx["active_id"] = json!(id);
        ctx["active_ids"] = json!([id]);
        ctx["active_model"] = json!("account.invoice");
        let exec = |t: &Tryton, data: Value, state: &str| {
            t.post(
                json!({"id": 4, "method": "wizard.account.invoice.pay.execute",
                "params": [wizard, data, state, ctx]}),
                Some(&auth),
            )
            .unwrap_or_else(|e| panic!("pay wizard {state}: {e}"))
        };
        let start = exec(self, json!({}), "start");
        let mut form = strip(&start["view"]["defaults"]);
        form["amount"] = json!({"__class__": "Decimal", "decimal": amount});
        form["payment_method"] = self.call(
            "model.account.invoice.payment.method.search",
            vec![json!([]), json!(0), json!(1), json!(null)],
        )[0]
        .clone();
        form["description"] = json!("paid in Tryton by hand");
        let choice = exec(self, json!({"start": form}), "choice");
        if !choice["view"].is_null() {
            let mut ask = strip(&choice["view"]["defaults"]);
            ask["type"] = json!("partial");
            exec(self, json!({"start": form, "ask": ask}), "pay");
        }
        self.call("wizard.account.invoice.pay.delete", vec![wizard]);
    }

    /// How many payment lines invoice `id` has in Tryton.
    pub fn payment_lines(&mut self, id: i64) -> usize {
        let read = self.call(
            "model.account.invoice.read",
            vec![json!([id]), json!(["payment_lines"])],
        );
        read[0]["payment_lines"].as_array().map_or(0, Vec::len)
    }

    /// End every session (as an expiry would): the next call with an old session gets 401.
    pub fn expire_sessions(&mut self) {
        self.session = None;
        let db = self.dir.path().join(format!("{DATABASE}.sqlite"));
        let out = Command::new("/usr/bin/python3")
            .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('DELETE FROM ir_session'); c.commit()"])
            .arg(&db)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A wizard view's defaults without the `field.` record names Tryton adds for display.
fn strip(defaults: &Value) -> Value {
    let map = defaults
        .as_object()
        .map(|d| {
            d.iter()
                .filter(|(k, _)| !k.contains('.'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    Value::Object(map)
}

impl Drop for Tryton {
    fn drop(&mut self) {
        self.stop();
    }
}
