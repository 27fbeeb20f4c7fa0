//! An HTTP proxy on loopback in front of a real peer (hledger-web, Tryton), for the faults a real peer will not
//! produce on demand: it can garble the peer's answers to reads, and hold the peer's answer to a write (the next one,
//! or the next whose body holds given strings) after the peer took it (so the test can kill the daemon between the
//! peer's 2xx and the daemon's cursor commit).
//!
//! One request per connection (`connection: close`), forwarded with a blocking reqwest client.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::receiver::{read_request, write_response};

/// One request as forwarded, with the peer's status.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub method: String,
    pub path: String,
    pub peer_status: u16,
}

#[derive(Default)]
struct State {
    /// Answer this many `GET`s with `200` and this body instead of the peer's answer.
    garble: Option<(usize, Vec<u8>)>,
    /// Hold the peer's answer to the next `PUT`/`POST` whose body holds each of these strings (any write when
    /// empty) until [`Proxy::release`].
    hold_write: Option<Vec<String>>,
    /// A write is held: the peer's status.
    held: Option<u16>,
    released: bool,
    log: Vec<Forwarded>,
}

pub struct Proxy {
    pub port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forward to `upstream` (`http://127.0.0.1:PORT`) from a fresh loopback port.
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, upstream) = (Arc::clone(&state), Arc::clone(&stop), upstream.to_string());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("proxy client");
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (st, http, upstream) =
                            (Arc::clone(&st), http.clone(), upstream.clone());
                        std::thread::spawn(move || forward(stream, &st, &http, &upstream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answer the next `n` reads (`GET`) with `200` and `body` instead of what the peer said.
    pub fn garble_reads(&self, n: usize, body: &[u8]) {
        self.state.0.lock().unwrap().garble = Some((n, body.to_vec()));
    }

    /// Forward the next write (`PUT`/`POST`) to the peer, then hold its answer until [`Proxy::release`].
    pub fn hold_next_write(&self) {
        self.hold_write_containing(&[]);
    }

    /// Forward the next write whose body holds every one of `needles` to the peer, then hold its answer until
    /// [`Proxy::release`] (Tryton's JSON-RPC calls are all `POST`s: the method and arguments tell them apart).
    pub fn hold_write_containing(&self, needles: &[&str]) {
        self.state.0.lock().unwrap().hold_write =
            Some(needles.iter().map(|n| n.to_string()).collect());
    }

    /// Wait until a held write was answered by the peer; its status.
    pub fn wait_held(&self) -> u16 {
        let (lock, cvar) = &*self.state;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(status) = st.held {
                return status;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no write reached the proxy in 30 s: {:#?}", st.log));
            st = cvar.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Let the held answer go (to whoever is still listening).
    pub fn release(&self) {
        let (lock, cvar) = &*self.state;
        lock.lock().unwrap().released = true;
        cvar.notify_all();
    }

    /// Every request forwarded so far.
    pub fn log(&self) -> Vec<Forwarded> {
        self.state.0.lock().unwrap().log.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.release();
    }
}

fn forward(
    mut stream: TcpStream,
    state: &(Mutex<State>, Condvar),
    http: &reqwest::blocking::Client,
    upstream: &str,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((line, headers, body)) = read_request(&mut stream) else {
        return;
    };
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut req = http.request(
        reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
        format!("{upstream}{path}"),
    );
    for (name, value) in headers
        .iter()
        .filter(|(n, _)| n == "content-type" || n == "accept" || n == "authorization")
    {
        req = req.header(name.as_str(), value.as_str());
    }
    let text = String::from_utf8_lossy(&body).to_string();
    let (peer_status, mut answer) = match req.body(body).send() {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.bytes().map(|b| b.to_vec()).unwrap_or_default())
        }
        Err(e) => (502, e.to_string().into_bytes()),
    };
    let (lock, cvar) = state;
    let mut st = lock.lock().unwrap();
    let mut status = peer_status;
    if method == "GET" {
        if let Some((left, garbage)) = st.garble.as_mut() {
            if *left > 0 {
                *left -= 1;
                status = 200;
                answer = garbage.clone();
            }
        }
    } else if st
        .hold_write
        .as_ref()
        .is_some_and(|needles| needles.iter().all(|n| text.contains(n.as_str())))
    {
        st.hold_write = None;
        st.held = Some(peer_status);
        st.log.push(Forwarded {
            method: method.clone(),
            path: path.clone(),
            peer_status,
        });
        cvar.notify_all();
        while !st.released {
            st = cvar.wait(st).unwrap();
        }
        drop(st);
        let _ = write_response(&mut stream, status, &answer);
        return;
    }
    st.log.push(Forwarded {
        method,
        path,
        peer_status,
    });
    drop(st);
    let _ = write_response(&mut stream, status, &answer);
}
