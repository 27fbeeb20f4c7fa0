//! A webhook receiver on loopback for the outbox tests: records every request, answers from a script, and checks
//! each Standard Webhooks signature with its own implementation of the specification (not settled's code):
//! `base64(HMAC-SHA256(key = base64-decode(secret without "whsec_"), "<webhook-id>.<webhook-timestamp>.<body>"))`,
//! compared with every `v1,<signature>` of the space-separated `webhook-signature` header.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// A signing secret in the `whsec_` form (24 random-looking bytes).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, with these headers.
    Status(u16, Vec<(String, String)>),
    /// Read the request, record it, never answer (until the receiver stops).
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub signature_valid: bool,
    pub body: Value,
    pub at: Instant,
    /// The status it was answered with (`None`: no answer).
    pub answered: Option<u16>,
}

impl Received {
    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Received>,
    script: VecDeque<Reply>,
    /// Answer these statuses to requests whose body contains the text, while the rule is set.
    fail_matching: Option<(String, u16)>,
}

pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Listen on a fresh loopback port.
    pub fn start() -> Receiver {
        Receiver::start_on(0)
    }

    /// Listen on `port` (0: any free one).
    pub fn start_on(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (st, sp) = (Arc::clone(&st), Arc::clone(&sp));
                        std::thread::spawn(move || serve(stream, &st, &sp));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Receiver { port, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answer the next requests like this, in order; after the script, 200.
    pub fn script(&self, replies: Vec<Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Answer `status` to every request whose body contains `text` (until cleared with `None`).
    pub fn fail_matching(&self, rule: Option<(&str, u16)>) {
        self.state.lock().unwrap().fail_matching = rule.map(|(t, s)| (t.to_string(), s));
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Poll until at least `n` requests came, or panic after 30 s.
    pub fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} requests, expected {n}: {got:#?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((_, headers, body)) = read_request(&mut stream) else {
        return;
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let signature_valid = verify(SECRET, &id, &timestamp, &body, &signature);
    let text = String::from_utf8_lossy(&body).to_string();
    let reply = {
        let mut st = state.lock().unwrap();
        let reply = match &st.fail_matching {
            Some((needle, status)) if text.contains(needle.as_str()) => {
                Reply::Status(*status, Vec::new())
            }
            _ => st
                .script
                .pop_front()
                .unwrap_or(Reply::Status(200, Vec::new())),
        };
        st.requests.push(Received {
            id,
            signature_valid,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at: Instant::now(),
            answered: match &reply {
                Reply::Status(s, _) => Some(*s),
                Reply::Hang => None,
            },
        });
        reply
    };
    match reply {
        Reply::Status(status, extra) => {
            let mut head =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n");
            for (k, v) in extra {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
        }
        Reply::Hang => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Header name/value pairs, names lower case.
pub type Headers = Vec<(String, String)>;

/// Answer `status` with a JSON content type and `body`, closing the connection.
pub fn write_response(stream: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

/// One HTTP/1.1 request: its request line (`PUT /add HTTP/1.1`), headers and body (by `content-length`).
pub fn read_request(stream: &mut TcpStream) -> Option<(String, Headers, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let headers: Headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((request_line, headers, body))
}

/// The Standard Webhooks check, from the specification: the timestamp is within five minutes of now, and one of the
/// `v1,` signatures equals the HMAC of `id.timestamp.body` under the decoded secret.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (now - ts).abs() > 300 || id.is_empty() {
        return false;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let Ok(key) = b64.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = b64.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| sig == expected)
}
