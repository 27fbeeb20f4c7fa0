//! The daemon's edges against anonymous senders and a careless setup, through the real binary: intake body limits and
//! memory, rate limits, slow and idle sockets, the connection reserve of the API, the API token's rules, and folders
//! that are symlinks or writable by others.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{free_port, run, settled, Daemon, Setup, TOKEN};

/// A lead form post the web-form plugin accepts.
const LEAD: &str = "name=Grace+Hopper&email=grace%40navy.example&company=Navy";

/// Sends `head` (request line and headers, without the blank line) and then what `body` writes, on one thread, while
/// another reads the answer: a server that answers early and closes is heard even if the rest of the body is refused.
/// Returns the status line and everything read.
fn raw_request(
    port: u16,
    head: &str,
    body: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut writer = stream.try_clone().expect("clone");
    let head = format!("{head}\r\n\r\n");
    let sending = std::thread::spawn(move || {
        if writer.write_all(head.as_bytes()).is_ok() {
            body(&mut writer);
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    drop(stream);
    sending.join().expect("sender thread");
    String::from_utf8_lossy(&answer).to_string()
}

/// Writes `total` bytes of form data as HTTP chunks of 64 KiB, stopping at the first write error (the server hung up).
fn chunked(total: usize) -> impl FnOnce(&mut TcpStream) + Send + 'static {
    move |w: &mut TcpStream| {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let head = format!("{:x}\r\n", chunk.len());
            if w.write_all(head.as_bytes()).is_err()
                || w.write_all(&chunk).is_err()
                || w.write_all(b"\r\n").is_err()
            {
                return;
            }
            sent += chunk.len();
        }
        let _ = w.write_all(b"0\r\n\r\n");
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`: the peak resident set).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

fn instance<'a>(plugins: &'a Value, name: &str) -> &'a Value {
    plugins["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["instances"].as_array().into_iter().flatten())
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("instance {name} in {plugins}"))
}

fn post_lead(d: &Daemon, connector: &str) -> reqwest::blocking::Response {
    d.http()
        .post(d.url(&format!("/intake/{connector}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(LEAD)
        .send()
        .unwrap_or_else(|e| panic!("posting a lead: {e}\n{}", d.log_text()))
}

#[test]
fn oversized_intake_posts_get_413_before_the_plugin_and_leave_memory_small_and_the_form_running() {
    let d = Daemon::start(Setup {
        plugins: vec!["webform"],
        config: String::new(),
    });
    let pid = d.child.as_ref().expect("running").id();
    // 200 MB, chunked: no Content-Length to refuse it by, so it is cut off as it streams.
    let answer = raw_request(
        d.port,
        "POST /intake/webform HTTP/1.1\r\nHost: settled\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked",
        chunked(200 * 1000 * 1000),
    );
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{answer}\n{}",
        d.log_text()
    );
    assert!(answer.contains("max_body_kib"), "{answer}");
    // The daemon never held the body: its peak resident set stayed far below what arrived.
    let peak_kib = proc_status_kib(pid, "VmHWM");
    eprintln!("peak resident set of the daemon after a 200 MB post: {peak_kib} KiB");
    assert!(
        peak_kib < 160 * 1024,
        "peak resident set {peak_kib} KiB after a 200 MB post\n{}",
        d.log_text()
    );
    // Five more, over the limit by Content-Length and while streaming: answered 413, the plugin never called.
    for i in 0..5 {
        let size = 2 * 1024 * 1024;
        let answer = if i % 2 == 0 {
            raw_request(
                d.port,
                &format!("POST /intake/webform HTTP/1.1\r\nHost: settled\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {size}"),
                move |w: &mut TcpStream| {
                    let _ = w.write_all(&vec![b'a'; size]);
                },
            )
        } else {
            raw_request(
                d.port,
                "POST /intake/webform HTTP/1.1\r\nHost: settled\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked",
                chunked(size),
            )
        };
        assert!(answer.starts_with("HTTP/1.1 413"), "post {i}: {answer}");
    }
    let plugins = d.ok("GET", "/v1/plugins", None);
    let form = instance(&plugins, "webform");
    assert_eq!(form["state"], "running", "{plugins}");
    assert_eq!(
        form["calls"], 0,
        "no big post reached the plugin: {plugins}"
    );
    // A real lead still gets in.
    let resp = post_lead(&d, "webform");
    assert!(resp.status().is_success(), "{}", resp.status());
    let leads = d.ok("GET", "/v1/leads", None);
    assert_eq!(leads["items"].as_array().map(Vec::len), Some(1), "{leads}");
}

#[test]
fn intake_over_its_rate_gets_429_with_retry_after_per_connector_and_sender() {
    let d = Daemon::start(Setup {
        plugins: vec!["webform"],
        config: r#"
[[connector]]
name = "site"
plugin = "webform"
[connector.intake]
rate_per_minute = 1
burst = 2

[[connector]]
name = "other"
plugin = "webform"
"#
        .into(),
    });
    for _ in 0..2 {
        let resp = post_lead(&d, "site");
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    let resp = post_lead(&d, "site");
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Another connector, and another sender address of the same connector, have buckets of their own.
    assert!(post_lead(&d, "other").status().is_success());
    let other_sender = reqwest::blocking::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let resp = other_sender
        .post(d.url("/intake/site"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(LEAD)
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

#[test]
fn slow_header_sockets_are_closed_after_the_header_timeout() {
    let d = Daemon::start(Setup {
        plugins: vec!["webform"],
        config: "[http]\nheader_timeout_secs = 1\n".into(),
    });
    let opened = Instant::now();
    let mut sockets: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
            // Headers that never end.
            s.write_all(b"POST /intake/webform HTTP/1.1\r\nHost: settled\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    for (i, s) in sockets.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "socket {i} still open {} ms after it opened: {e}",
                opened.elapsed().as_millis()
            ),
        }
    }
    assert_eq!(d.ok("GET", "/healthz", None)["status"], "ok");
}

#[test]
fn with_every_intake_slot_taken_intake_gets_503_and_the_api_and_healthz_still_answer() {
    let d = Daemon::start(Setup {
        plugins: vec!["webform"],
        config:
            "[http]\nmax_connections = 16\napi_reserve = 6\n[intake]\nbody_timeout_secs = 300\n"
                .into(),
    });
    // Ten senders whose bodies never finish take the ten intake slots.
    let _held: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
            s.write_all(b"POST /intake/webform HTTP/1.1\r\nHost: settled\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nname=Slow")
                .unwrap();
            s
        })
        .collect();
    d.eventually("ten intake requests in progress", || {
        let metrics = d.metrics()?;
        metrics
            .lines()
            .any(|l| l == "settled_intake_in_progress 10")
            .then_some(())
    });
    let refused = post_lead(&d, "webform");
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().unwrap();
    assert_eq!(body["error"]["code"], "busy", "{body}");
    assert_eq!(d.ok("GET", "/healthz", None)["status"], "ok");
    d.ok("GET", "/v1/leads", None);
}

/// Runs `settled run` with `config`, expecting it to refuse to start; its stderr.
fn refused_start(dir: &std::path::Path, config: &str, env_token: Option<&str>) -> String {
    let path = dir.join("settled.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd: Command = settled(dir);
    cmd.args(["run", "--config"]).arg(&path);
    if let Some(token) = env_token {
        cmd.env("SETTLED_API_TOKEN", token);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(!status.success(), "started: {stderr}");
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("settled started although it should have refused its token");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_short_token_or_a_token_file_others_can_read_stops_start_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api-token");
    let config = format!(
        "data_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\napi_token_file = \"{}\"\n[plugins]\nwatch = false\n",
        dir.path().join("data").display(),
        free_port(),
        token_file.display()
    );
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused_start(dir.path(), &config, None);
    assert!(err.contains(&token_file.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", token_file.display())),
        "{err}"
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&token_file, "short-token\n").unwrap();
    let err = refused_start(dir.path(), &config, None);
    assert!(err.contains("32 bytes"), "{err}");
    let err = refused_start(dir.path(), &config, Some("also-too-short"));
    assert!(
        err.contains("SETTLED_API_TOKEN") && err.contains("32 bytes"),
        "{err}"
    );
}

#[test]
fn settled_init_writes_a_long_private_token_and_near_misses_of_a_token_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = settled(dir.path());
    cmd.args(["init", "--data-dir"]).arg(&data);
    let r = run(cmd);
    assert!(r.status.success(), "{r}");
    let token_file = data.join("api-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.trim().len() >= 32, "{token}");
    // A daemon accepts its token and nothing shorter (a prefix), longer or empty.
    let d = Daemon::start(Setup {
        plugins: vec![],
        config: String::new(),
    });
    let status = |token: &str| {
        d.http()
            .get(d.url("/v1/leads"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(TOKEN), 200);
    assert_eq!(status(&TOKEN[..TOKEN.len() - 1]), 401);
    assert_eq!(status(&format!("{TOKEN}0")), 401);
    assert_eq!(status(""), 401);
}

#[test]
fn an_inbox_whose_done_folder_is_a_symlink_is_refused_and_its_file_stays() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("data").join("inbox");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(inbox.join("failed")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, inbox.join("done")).unwrap();
    let d = Daemon::start_in(
        dir,
        Setup {
            plugins: vec!["bank-csv"],
            config: "[imports]\ninbox_settle_ms = 100\n".into(),
        },
    );
    let file = inbox.join("statement.csv");
    std::fs::write(
        &file,
        "Date,Amount,Currency,Counterparty,Description,Transaction Id\n2026-03-05,10.00,EUR,Payer,transfer,T1\n",
    )
    .unwrap();
    let done = inbox.join("done").display().to_string();
    d.eventually("the refusal naming done/", || {
        d.log_text()
            .lines()
            .any(|l| l.contains("statement.csv") && l.contains(&done) && l.contains("symlink"))
            .then_some(())
    });
    assert!(file.exists(), "the file stays in the inbox");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    let payments = d.ok("GET", "/v1/payments", None);
    assert_eq!(
        payments["items"].as_array().map(Vec::len),
        Some(0),
        "{payments}"
    );
}

#[test]
fn a_plugin_folder_writable_by_others_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = Daemon::start_in(
        dir,
        Setup {
            plugins: vec!["webform"],
            config: String::new(),
        },
    );
    let status = d.ok("GET", "/v1/plugins", None);
    let errors = status["items"].to_string();
    assert!(
        errors.contains(&format!("its folder {}", plugins.display()))
            && errors.contains("world-writable"),
        "{status}"
    );
    assert!(!post_lead(&d, "webform").status().is_success());
}

/// CPU time the process `pid` has used so far (all its threads), in clock ticks (`utime` + `stime` of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at the state, field 3; utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn out_of_file_descriptors_the_accept_loop_backs_off_instead_of_spinning_and_serves_again() {
    let d = Daemon::start(Setup {
        plugins: vec!["webform"],
        config: String::new(),
    });
    let pid = d.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing the daemon's descriptors")
        .count();
    // A few descriptors left: the connections below use them up, and every accept after that fails with EMFILE while
    // the rest of the connections wait in the listen backlog.
    let limit = open + 4;
    let soft = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .expect("reading /proc/PID/limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .expect("the soft limit on open files");
    // Only the soft limit: raising it back needs no privilege.
    let lowered = Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={limit}:")])
        .status()
        .expect("running prlimit");
    assert!(lowered.success(), "prlimit failed");
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", d.port)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    // A loop retrying accept at once would burn a whole core: about 200 ticks in these 2 s (100 ticks a second).
    assert!(
        used < 50,
        "the daemon used {used} clock ticks of CPU in 2 s with accept failing: it spins instead of backing off"
    );
    drop(held);
    let raised = Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={soft}:")])
        .status()
        .expect("running prlimit");
    assert!(raised.success(), "prlimit failed");
    d.eventually("/healthz answering again once descriptors are free", || {
        let answer = d.http().get(d.url("/healthz")).send().ok()?;
        answer.status().is_success().then_some(())
    });
}
