//! The demo's sync-back peers: a webhook receiver on a loopback port that checks every Standard Webhooks signature
//! itself, and, when `hledger-web` is installed, a private hledger-web keeping a journal in the demo folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;

/// One webhook as it arrived.
#[derive(Debug, Clone)]
pub struct Arrived {
    /// The `webhook-id` header.
    pub id: String,
    /// The JSON body.
    pub body: Value,
    /// Whether one of the `v1,` signatures matched.
    pub signature_valid: bool,
}

#[derive(Clone)]
struct Inbox {
    key: Arc<Vec<u8>>,
    got: Arc<Mutex<Vec<Arrived>>>,
    notify: Arc<Notify>,
}

/// A webhook receiver on `127.0.0.1:<free port>/hook`, stopped on drop.
pub struct Receiver {
    /// Where the `webhook` sink posts.
    pub url: String,
    /// The signing secret in the `whsec_` form, fresh for each demo.
    pub secret: String,
    inbox: Inbox,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listen on a free loopback port.
    pub async fn start() -> anyhow::Result<Receiver> {
        let mut key = vec![0u8; 24];
        rand::thread_rng().fill_bytes(&mut key);
        let b64 = base64::engine::general_purpose::STANDARD;
        let secret = format!("whsec_{}", b64.encode(&key));
        let inbox = Inbox {
            key: Arc::new(key),
            got: Arc::default(),
            notify: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo's webhook receiver")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inbox.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("demo webhook receiver stopped: {e}");
            }
        });
        Ok(Receiver {
            url,
            secret,
            inbox,
            task,
        })
    }

    /// Every webhook so far, in arrival order.
    pub fn arrived(&self) -> Vec<Arrived> {
        self.inbox
            .got
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Wait up to `limit` for a webhook satisfying `done`; every webhook so far.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&Arrived) -> bool) -> Vec<Arrived> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inbox.notify.notified();
            let got = self.arrived();
            if got.iter().any(&done) || tokio::time::Instant::now() >= deadline {
                return got;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let id = header("webhook-id");
    let signature_valid = verify(
        &inbox.key,
        &id,
        &header("webhook-timestamp"),
        &body,
        &header("webhook-signature"),
    );
    let arrived = Arrived {
        id,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signature_valid,
    };
    inbox
        .got
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(arrived);
    inbox.notify.notify_waiters();
    if signature_valid {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// The receiver's side of Standard Webhooks: the HMAC-SHA256 of `id.timestamp.body` under the secret's key equals one
/// of the space-separated `v1,<base64>` signatures, and the timestamp is within five minutes of now.
fn verify(key: &[u8], id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if id.is_empty() || (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return false;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|sig| b64.decode(sig).ok())
        .any(|sig| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                return false;
            };
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            mac.verify_slice(&sig).is_ok()
        })
}

/// A private `hledger-web --serve-api` on a free loopback port, killed on drop.
pub struct Books {
    /// Its base URL.
    pub url: String,
    /// The journal it keeps.
    pub journal: PathBuf,
    child: Child,
}

impl Books {
    /// Start hledger-web on an empty journal in `dir`, or say why not (not installed, did not come up).
    pub async fn start(dir: &Path) -> Result<Books, String> {
        let journal = dir.join("books.journal");
        std::fs::write(&journal, "").map_err(|e| format!("writing {}: {e}", journal.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let log = std::fs::File::create(dir.join("hledger-web.log"))
            .map_err(|e| format!("creating the hledger-web log: {e}"))?;
        let child = Command::new("hledger-web")
            .arg("-f")
            .arg(&journal)
            .args([
                "--serve-api",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .arg("--capabilities=view,add")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("hledger-web is not installed ({e})"))?;
        let books = Books {
            url: format!("http://127.0.0.1:{port}"),
            journal,
            child,
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let up = http
                .get(format!("{}/transactions", books.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return Ok(books);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "hledger-web did not answer within 20 s (see {})",
            dir.join("hledger-web.log").display()
        ))
    }

    /// `hledger ARGS` on the journal (the CLI), or the journal's text when the CLI is not installed.
    pub fn show(&self, args: &[&str]) -> String {
        match Command::new("hledger")
            .arg("-f")
            .arg(&self.journal)
            .args(args)
            .output()
        {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).to_string(),
            Ok(out) => format!(
                "hledger {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => std::fs::read_to_string(&self.journal).unwrap_or_default(),
        }
    }
}

impl Drop for Books {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
