//! Mailboxes against a real Dovecot (and a real Maildir): enquiries become leads exactly once, whatever happens to
//! the delivery, the folder, the server or the daemon.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dovecot::{enquiry, Dovecot, PASSWORD};
use crate::harness::{Daemon, Setup};

fn password_file(dovecot: &Dovecot, password: &str) -> PathBuf {
    let path = dovecot.dir.path().join("imap-password");
    std::fs::write(&path, format!("{password}\n")).unwrap_or_else(|e| panic!("password file: {e}"));
    path
}

fn daemon_for(dovecot: &Dovecot, extra: &str) -> Daemon {
    let password = password_file(dovecot, PASSWORD);
    Daemon::start(Setup {
        plugins: vec!["mail-lead"],
        config: dovecot.connector("sales-mail", &password, extra),
    })
}

/// Leads with source `email`, by external id (the Message-ID).
fn email_leads(d: &Daemon) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page = d.ok("GET", &format!("/v1/leads?limit=1000&after={after}"), None);
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let Some(last) = items
            .last()
            .and_then(|l| l["id"].as_str())
            .map(str::to_string)
        else {
            break;
        };
        all.extend(items.into_iter().filter(|l| l["source"] == "email"));
        after = last;
    }
    all
}

fn wait_for_leads(d: &Daemon, n: usize) -> Vec<Value> {
    d.eventually(&format!("{n} email leads"), || {
        let leads = email_leads(d);
        (leads.len() >= n).then_some(leads)
    })
}

fn mailbox(d: &Daemon, connector: &str) -> Value {
    let plugins = d.ok("GET", "/v1/plugins", None);
    plugins["mailboxes"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["connector"] == connector).cloned())
        .unwrap_or(Value::Null)
}

fn wait_for_mailbox(d: &Daemon, connector: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    d.eventually(what, || Some(mailbox(d, connector)).filter(|m| ok(m)))
}

/// What `settled plugins` prints.
fn settled_plugins(d: &Daemon) -> String {
    let status = crate::harness::run({
        let mut cmd = crate::harness::settled(d.dir.path());
        cmd.args(["plugins", "--url", &d.url("")])
            .env("SETTLED_API_TOKEN", crate::harness::TOKEN);
        cmd
    });
    assert!(status.status.success(), "{status}");
    status.stdout
}

/// A Maildir with `tmp/`, `new/` and `cur/` below `dir`.
fn make_maildir(dir: &std::path::Path) -> PathBuf {
    let maildir = dir.join("Maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap_or_else(|e| panic!("{e}"));
    }
    maildir
}

/// Deliver a message to a Maildir the Maildir way: written to `tmp/`, renamed into `new/`.
fn drop_mail(maildir: &std::path::Path, name: &str, raw: &[u8]) {
    let at = maildir.join("tmp").join(name);
    std::fs::write(&at, raw).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&at, maildir.join("new").join(name)).unwrap_or_else(|e| panic!("{e}"));
}

/// Each `mail.failed` event in the audit log, oldest first, as "<location> <reason>".
fn mail_failures(d: &Daemon) -> Vec<String> {
    let events = d.ok("GET", "/v1/events?limit=1000", None);
    events["items"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|e| e["type"] == "mail.failed")
                .map(|e| format!("{} {}", e["data"]["location"], e["data"]["reason"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The external ids of the leads, each must appear once.
fn assert_each_once(leads: &[Value], expected: usize) {
    let mut ids: Vec<&str> = leads
        .iter()
        .filter_map(|l| l["external_id"].as_str())
        .collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "a message made two leads: {leads:?}");
    assert_eq!(leads.len(), expected, "{leads:#?}");
}

#[test]
fn imap_enquiries_become_leads_and_a_duplicate_delivery_makes_nothing_twice() {
    let dovecot = Dovecot::start();
    dovecot.deliver(&enquiry("anna@berg.example", "m1", "Quote for 40 chairs"));
    dovecot.deliver(&enquiry("ben@ost.example", "m2", "Desks"));
    // The same message delivered a second time (a retrying sender): a new UID, the same Message-ID.
    dovecot.deliver(&enquiry("anna@berg.example", "m1", "Quote for 40 chairs"));
    let d = daemon_for(&dovecot, "");
    let status = wait_for_mailbox(&d, "sales-mail", "three messages processed", |m| {
        m["seen"].as_u64().unwrap_or(0) + m["duplicates"].as_u64().unwrap_or(0) >= 3
            && m["folders"]["INBOX"]["last_uid"] == 3
    });
    assert_eq!(status["seen"], 2, "{status}");
    assert_eq!(status["duplicates"], 1, "{status}");
    assert_eq!(status["folders"]["INBOX"]["last_uid"], 3, "{status}");
    let leads = email_leads(&d);
    assert_each_once(&leads, 2);
    let anna = leads
        .iter()
        .find(|l| l["email"] == "anna@berg.example")
        .cloned()
        .unwrap_or_default();
    assert_eq!(anna["name"], "Customer m1", "{anna}");
    assert_eq!(anna["external_id"], "m1@customers.example", "{anna}");
    assert!(
        anna["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Quote for 40 chairs"),
        "{anna}"
    );
    // Committed messages are flagged \Seen on the server (Maildir flag S).
    let cur = dovecot.maildir().join("cur");
    d.eventually("three messages flagged seen on the server", || {
        let names: Vec<String> = std::fs::read_dir(&cur)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        (names
            .iter()
            .filter(|n| n.rsplit(":2,").next().is_some_and(|f| f.contains('S')))
            .count()
            == 3)
            .then_some(())
    });
    let metrics = d.metrics().unwrap_or_default();
    assert!(
        metrics
            .contains("settled_mailbox_messages_total{connector=\"sales-mail\",outcome=\"new\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_uidvalidity_change_rereads_the_folder_and_creates_nothing_twice() {
    let dovecot = Dovecot::start();
    for i in 0..3 {
        dovecot.deliver(&enquiry(
            &format!("c{i}@uv.example"),
            &format!("uv{i}"),
            "Enquiry",
        ));
    }
    let d = daemon_for(&dovecot, "");
    wait_for_leads(&d, 3);
    dovecot.set_uid_validity("INBOX", 777);
    dovecot.deliver(&enquiry(
        "new@uv.example",
        "uv-new",
        "After the renumbering",
    ));
    let status = wait_for_mailbox(
        &d,
        "sales-mail",
        "the folder read again under its new UIDVALIDITY",
        |m| m["folders"]["INBOX"]["uid_validity"] == 777 && m["seen"] == 4,
    );
    assert_eq!(
        status["duplicates"], 3,
        "the three old messages are recognised: {status}"
    );
    assert_each_once(&email_leads(&d), 4);
}

#[test]
fn kill_9_in_the_middle_of_a_backlog_then_restart_makes_every_message_exactly_one_lead() {
    const TOTAL: usize = 120;
    let dovecot = Dovecot::start();
    for i in 0..TOTAL {
        dovecot.deliver(&enquiry(
            &format!("k{i}@kill.example"),
            &format!("k{i}"),
            "Backlog",
        ));
    }
    // One message per committed batch: many commits, so the kill lands in the middle of the backlog.
    let mut d = daemon_for(&dovecot, "batch = 1");
    let at_kill = d.eventually("the first leads", || {
        let n = email_leads(&d).len();
        (n > 0).then_some(n)
    });
    d.kill9();
    assert!(
        at_kill < TOTAL,
        "the backlog was drained before the kill ({at_kill} leads): nothing was interrupted"
    );
    d.spawn();
    let leads = wait_for_leads(&d, TOTAL);
    // Give a would-be duplicate the chance to show up: the folder is idle once its cursor is at the end.
    wait_for_mailbox(&d, "sales-mail", "the cursor at the last message", |m| {
        m["folders"]["INBOX"]["last_uid"] == TOTAL as u64 && m["state"] == "idle"
    });
    assert_each_once(&email_leads(&d), TOTAL);
    assert_eq!(leads.len(), TOTAL);
}

#[test]
fn the_mailbox_reconnects_by_itself_when_dovecot_restarts_while_it_idles() {
    let mut dovecot = Dovecot::start();
    dovecot.deliver(&enquiry("first@restart.example", "r1", "Before"));
    let d = daemon_for(&dovecot, "");
    wait_for_leads(&d, 1);
    wait_for_mailbox(&d, "sales-mail", "idling", |m| m["state"] == "idle");
    dovecot.stop();
    let down = wait_for_mailbox(
        &d,
        "sales-mail",
        "backing off while the server is down",
        |m| m["state"] == "backing_off",
    );
    assert!(
        down["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    dovecot.run_master();
    dovecot.deliver(&enquiry("second@restart.example", "r2", "After"));
    let leads = wait_for_leads(&d, 2);
    assert_each_once(&leads, 2);
    let up = wait_for_mailbox(&d, "sales-mail", "idling again", |m| m["state"] == "idle");
    assert_eq!(up["last_error"], Value::Null, "{up}");
    assert!(up["reconnects"].as_u64().unwrap_or(0) >= 1, "{up}");
}

#[test]
fn a_wrong_password_shows_in_the_mailbox_state_and_stops_nothing_else() {
    let dovecot = Dovecot::start();
    dovecot.deliver(&enquiry("x@wrong.example", "w1", "Never read"));
    let wrong = password_file(&dovecot, "not-the-password");
    let maildir = dovecot.dir.path().join("other-maildir");
    let config = format!(
        "{}\n[[connector]]\nname = \"other-mail\"\nplugin = \"mail-lead\"\n[connector.mailbox]\nmaildir = \"{}\"\n",
        dovecot.connector("sales-mail", &wrong, ""),
        maildir.display()
    );
    let d = Daemon::start(Setup {
        plugins: vec!["mail-lead"],
        config,
    });
    let state = wait_for_mailbox(&d, "sales-mail", "the login refusal in the state", |m| {
        m["state"] == "backing_off"
            && m["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("login as sales refused"))
    });
    assert_eq!(state["seen"], 0, "{state}");
    // The other mailbox and the API go on.
    std::fs::create_dir_all(maildir.join("tmp")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(maildir.join("new")).unwrap_or_else(|e| panic!("{e}"));
    let tmp = maildir.join("tmp").join("1.M1.test");
    std::fs::write(
        &tmp,
        enquiry("ok@other.example", "o1", "Fine").replace('\n', "\r\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, maildir.join("new").join("1.M1.test")).unwrap_or_else(|e| panic!("{e}"));
    let leads = wait_for_leads(&d, 1);
    assert_eq!(leads[0]["email"], "ok@other.example");
    assert!(
        d.log_text().contains("login as sales refused"),
        "{}",
        d.log_text()
    );
    let status = settled_plugins(&d);
    assert!(
        status.contains("sales-mail") && status.contains("login as sales refused"),
        "{status}"
    );
    // A mailbox backing off does not hold up a clean stop.
    let mut d = d;
    let exit = d.terminate();
    assert!(exit.success(), "settled exited with {exit}");
}

#[test]
fn a_message_without_a_sender_and_an_oversized_message_are_recorded_failed_and_the_rest_go_on() {
    let dovecot = Dovecot::start();
    dovecot.deliver(&enquiry("one@fail.example", "f1", "First"));
    dovecot.deliver(
        "To: sales@example.com\nSubject: who sent this\nMessage-ID: <nofrom@x>\n\nno sender\n",
    );
    let big = format!(
        "From: big@fail.example\nSubject: huge\nMessage-ID: <big@x>\n\n{}\n",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(24 * 1024)
    );
    dovecot.deliver(&big);
    dovecot.deliver(&enquiry("two@fail.example", "f2", "Second"));
    let d = daemon_for(&dovecot, "max_message_mib = 1");
    let status = wait_for_mailbox(&d, "sales-mail", "four messages processed", |m| {
        m["folders"]["INBOX"]["last_uid"] == 4
    });
    assert_eq!(status["seen"], 2, "{status}");
    assert_eq!(status["failed"], 2, "{status}");
    assert_each_once(&email_leads(&d), 2);
    let failures = mail_failures(&d);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].contains("INBOX uid 2") && failures[0].contains("no sender"),
        "{failures:?}"
    );
    assert!(
        failures[1].contains("INBOX uid 3") && failures[1].contains("over the limit of 1 MiB"),
        "{failures:?}"
    );
    // Failed messages are not retried: a restart reads nothing again.
    let mut d = d;
    d.terminate();
    d.spawn();
    let again = wait_for_mailbox(&d, "sales-mail", "idle after the restart", |m| {
        m["state"] == "idle"
    });
    assert_eq!(again["failed"], 0, "{again}");
    assert_eq!(again["seen"], 0, "{again}");
}

#[test]
fn maildir_messages_become_leads_and_move_to_cur_with_the_seen_flag() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let maildir = tmp.path().join("Maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap_or_else(|e| panic!("{e}"));
    }
    let drop_mail = |name: &str, text: &str| {
        let at = maildir.join("tmp").join(name);
        std::fs::write(&at, text.replace('\n', "\r\n")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&at, maildir.join("new").join(name)).unwrap_or_else(|e| panic!("{e}"));
    };
    drop_mail("100.M1.host", &enquiry("a@maildir.example", "md1", "Hello"));
    drop_mail(
        "101.M2.host",
        "From: MAILER-DAEMON@maildir.example\nSubject: Undelivered\n\nbounce\n",
    );
    // The same message again under another file name: recognised by its Message-ID.
    drop_mail("102.M3.host", &enquiry("a@maildir.example", "md1", "Hello"));
    let d = Daemon::start(Setup {
        plugins: vec!["mail-lead"],
        config: format!(
            "[[connector]]\nname = \"md\"\nplugin = \"mail-lead\"\n[connector.mailbox]\nmaildir = \"{}\"\n",
            maildir.display()
        ),
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let cur = loop {
        let mut cur: Vec<String> = std::fs::read_dir(maildir.join("cur"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        cur.sort();
        if cur.len() == 3 || Instant::now() > deadline {
            break cur;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        cur,
        ["100.M1.host:2,S", "101.M2.host:2,S", "102.M3.host:2,S"],
        "{}",
        d.log_text()
    );
    let status = mailbox(&d, "md");
    assert_eq!(
        (
            status["seen"].as_u64(),
            status["not_mine"].as_u64(),
            status["duplicates"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{status}"
    );
    let leads = email_leads(&d);
    assert_each_once(&leads, 1);
    assert_eq!(leads[0]["email"], "a@maildir.example");
}

#[test]
fn the_same_message_in_two_folders_makes_one_lead() {
    let dovecot = Dovecot::start();
    dovecot.deliver(&enquiry("twice@folders.example", "two1", "Filed twice"));
    dovecot.deliver_to(
        "Sales",
        &enquiry("twice@folders.example", "two1", "Filed twice"),
    );
    dovecot.deliver_to(
        "Sales",
        &enquiry("only@folders.example", "two2", "Only here"),
    );
    let password = password_file(&dovecot, PASSWORD);
    let config =
        dovecot.connector("sales-mail", &password, "") + "folders = [\"INBOX\", \"Sales\"]\n";
    let d = Daemon::start(Setup {
        plugins: vec!["mail-lead"],
        config,
    });
    // Several folders are polled (IDLE watches one folder only).
    let status = wait_for_mailbox(&d, "sales-mail", "both folders read", |m| {
        m["folders"]["INBOX"]["last_uid"] == 1
            && m["folders"]["Sales"]["last_uid"] == 2
            && m["state"] == "polling"
    });
    assert_eq!(status["seen"], 2, "{status}");
    assert_eq!(status["duplicates"], 1, "{status}");
    assert_each_once(&email_leads(&d), 2);
}

/// A message with a statement attached, base64 as mail clients send it.
fn statement_mail(id: &str, file_name: &str, content: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "From: statements@bank.example\nSubject: Your statement\nMessage-ID: <{id}@bank.example>\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"sep\"\n\n--sep\nContent-Type: text/plain\n\nAttached.\n--sep\n\
         Content-Type: application/xml\nContent-Disposition: attachment; filename=\"{file_name}\"\n\
         Content-Transfer-Encoding: base64\n\n{}\n--sep--\n",
        lines.join("\n")
    )
}

#[test]
fn a_mailed_statement_is_reconciled_and_a_broken_one_fails_its_mail_only() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let maildir = tmp.path().join("Maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap_or_else(|e| panic!("{e}"));
    }
    let good = std::fs::read(crate::harness::fixture("real/camt/camt053.v8.xml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let broken = b"<?xml version=\"1.0\"?>\n<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.053.001.08\"><BkToCstmrStmt><Stmt><Ntry><Amt Ccy=\"EUR\">12,x</Amt>";
    for (name, text) in [
        (
            "200.M1.host",
            statement_mail("broken", "broken.xml", broken),
        ),
        ("201.M2.host", statement_mail("good", "camt053.xml", &good)),
    ] {
        let at = maildir.join("tmp").join(name);
        std::fs::write(&at, text.replace('\n', "\r\n")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&at, maildir.join("new").join(name)).unwrap_or_else(|e| panic!("{e}"));
    }
    let d = Daemon::start(Setup {
        plugins: vec!["payment-mail", "camt"],
        config: format!(
            "[[connector]]\nname = \"bank\"\nplugin = \"camt\"\n\n[[connector]]\nname = \"bank-mail\"\nplugin = \"payment-mail\"\n\
             settings = {{ file_connector = \"bank\" }}\n[connector.mailbox]\nmaildir = \"{}\"\n",
            maildir.display()
        ),
    });
    let status = wait_for_mailbox(&d, "bank-mail", "both mails processed", |m| {
        m["seen"] == 1 && m["failed"] == 1
    });
    let failure = status["last_failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("new/200.M1.host") && failure.contains("attachment broken.xml"),
        "{status}"
    );
    let payments = d.ok("GET", "/v1/payments?limit=1000", None);
    let from_mail = payments["items"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        from_mail > 0,
        "the mailed statement made no payments: {payments}"
    );
    // The same statement mailed again is recognised line by line: no new payments.
    let again = maildir.join("tmp").join("202.M3.host");
    std::fs::write(
        &again,
        statement_mail("good-again", "camt053.xml", &good).replace('\n', "\r\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&again, maildir.join("new").join("202.M3.host"))
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_mailbox(&d, "bank-mail", "the second mail processed", |m| {
        m["seen"] == 2
    });
    let payments = d.ok("GET", "/v1/payments?limit=1000", None);
    assert_eq!(
        payments["items"].as_array().map(Vec::len).unwrap_or(0),
        from_mail,
        "{payments}"
    );
}

#[test]
fn a_reply_in_an_enquiry_thread_is_added_to_its_lead_not_a_new_one() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let maildir = tmp.path().join("Maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap_or_else(|e| panic!("{e}"));
    }
    let reply = "From: Customer t1 <thread@reply.example>\nTo: sales@example.com\nSubject: Re: Chairs\n\
                 Message-ID: <t1-reply@customers.example>\nIn-Reply-To: <t1-answer@example.com>\n\
                 References: <t1@customers.example> <t1-answer@example.com>\n\nMake it 60 chairs, please.\n";
    for (name, text) in [
        (
            "300.M1.host",
            enquiry("thread@reply.example", "t1", "Chairs"),
        ),
        ("301.M2.host", reply.to_string()),
    ] {
        let at = maildir.join("tmp").join(name);
        std::fs::write(&at, text.replace('\n', "\r\n")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&at, maildir.join("new").join(name)).unwrap_or_else(|e| panic!("{e}"));
    }
    let d = Daemon::start(Setup {
        plugins: vec!["mail-lead"],
        config: format!(
            "[[connector]]\nname = \"md\"\nplugin = \"mail-lead\"\n[connector.mailbox]\nmaildir = \"{}\"\n",
            maildir.display()
        ),
    });
    wait_for_mailbox(&d, "md", "both messages committed", |m| m["seen"] == 2);
    let leads = email_leads(&d);
    assert_eq!(leads.len(), 1, "{leads:#?}");
    assert_eq!(leads[0]["merged_count"], 1, "{}", leads[0]);
    let text = leads[0]["message"].as_str().unwrap_or_default();
    assert!(
        text.contains("Please send us a quote.") && text.contains("Make it 60 chairs"),
        "{text}"
    );
}

#[test]
fn imap_over_tls_and_starttls_trusts_the_ca_file_and_an_untrusted_certificate_is_refused_plainly() {
    let dovecot = Dovecot::start_tls();
    let (imaps, ca) = dovecot.tls.clone().unwrap_or_else(|| panic!("no tls"));
    dovecot.deliver(&enquiry("tls@secure.example", "tls1", "Over TLS"));
    let password = password_file(&dovecot, PASSWORD);
    let via = |name: &str, port: u16, tls: &str, ca_file: Option<&std::path::Path>| {
        let ca = ca_file
            .map(|f| format!("\nca_file = \"{}\"", f.display()))
            .unwrap_or_default();
        dovecot.connector_via(
            name,
            &password,
            "",
            &format!("host = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"{ca}"),
        )
    };
    let config = [
        via("tls-mail", imaps, "required", Some(&ca)),
        via("starttls-mail", dovecot.port, "starttls", Some(&ca)),
        via("untrusted-mail", imaps, "required", None),
    ]
    .join("\n");
    let d = Daemon::start(Setup {
        plugins: vec!["mail-lead"],
        config,
    });
    for connector in ["tls-mail", "starttls-mail"] {
        let status = wait_for_mailbox(&d, connector, "the message read over tls", |m| {
            m["folders"]["INBOX"]["last_uid"] == 1 && m["state"] == "idle"
        });
        assert_eq!(status["last_error"], Value::Null, "{status}");
    }
    assert_each_once(&email_leads(&d), 1);
    let untrusted = wait_for_mailbox(
        &d,
        "untrusted-mail",
        "the untrusted certificate refused",
        |m| m["state"] == "backing_off" && m["last_error"].is_string(),
    );
    let error = untrusted["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("tls handshake with 127.0.0.1")
            && error.contains("certificate is not trusted")
            && error.contains("mailbox.imap.ca_file"),
        "{untrusted}"
    );
    assert_eq!(untrusted["folders"], serde_json::json!({}), "{untrusted}");
    let shown = settled_plugins(&d);
    assert!(
        shown.contains("untrusted-mail") && shown.contains("certificate is not trusted"),
        "{shown}"
    );
}

#[test]
fn a_malformed_message_and_a_30_mib_message_are_recorded_failed_and_the_rest_go_on() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let maildir = make_maildir(tmp.path());
    // No header block at all: binary junk where a message should be.
    drop_mail(
        &maildir,
        "400.M1.host",
        b"\x00\x01\x02\xff\xfe not a message\r\n\r\n\x00",
    );
    // 30 MiB, over the default limit of 25 MiB: not parsed at all.
    let mut big = enquiry("big@size.example", "big1", "Large").into_bytes();
    big.extend(std::iter::repeat_n(b'x', 30 << 20));
    drop_mail(&maildir, "401.M2.host", &big);
    drop_mail(
        &maildir,
        "402.M3.host",
        enquiry("fine@size.example", "ok1", "Fine")
            .replace('\n', "\r\n")
            .as_bytes(),
    );
    let d = Daemon::start(Setup {
        plugins: vec!["mail-lead"],
        config: format!(
            "[[connector]]\nname = \"md\"\nplugin = \"mail-lead\"\n[connector.mailbox]\nmaildir = \"{}\"\n",
            maildir.display()
        ),
    });
    let status = wait_for_mailbox(&d, "md", "three messages processed", |m| {
        m["seen"].as_u64().unwrap_or(0) + m["failed"].as_u64().unwrap_or(0) >= 3
    });
    assert_eq!(
        (status["seen"].as_u64(), status["failed"].as_u64()),
        (Some(1), Some(2)),
        "{status}"
    );
    let leads = email_leads(&d);
    assert_each_once(&leads, 1);
    assert_eq!(leads[0]["email"], "fine@size.example");
    let failures = mail_failures(&d);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].contains("new/400.M1.host") && failures[0].contains("not an rfc 822 message"),
        "{failures:?}"
    );
    assert!(
        failures[1].contains("new/401.M2.host") && failures[1].contains("over the limit of 25 MiB"),
        "{failures:?}"
    );
    // Every message left new/, the failed ones too: nothing is read again and again.
    d.eventually("new/ empty", || {
        (std::fs::read_dir(maildir.join("new"))
            .map(|r| r.count())
            .unwrap_or(1)
            == 0)
            .then_some(())
    });
}

#[test]
fn a_paypal_notice_becomes_a_payment_that_pays_its_invoice_once() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let maildir = make_maildir(tmp.path());
    let d = Daemon::start(Setup {
        plugins: vec!["payment-mail"],
        config: format!(
            "[[connector]]\nname = \"paypal-mail\"\nplugin = \"payment-mail\"\n[connector.mailbox]\nmaildir = \"{}\"\n",
            maildir.display()
        ),
    });
    let inv = crate::harness::issue_invoice(&d, "Nordwind", crate::harness::one_line("238.00"));
    let number = inv["number"].as_str().unwrap_or_default().to_string();
    let sample =
        std::fs::read_to_string(crate::harness::fixture("mail/paypal-payment-received.eml"))
            .unwrap_or_else(|e| panic!("{e}"));
    // The payer's note names the invoice just issued.
    let notice = sample.replace("INV-2026-001", &number);
    drop_mail(&maildir, "500.M1.host", notice.as_bytes());
    let paid = d.eventually("the invoice paid by the notice", || {
        let now = crate::harness::invoice(&d, &inv);
        (now["payment_status"] == "paid").then_some(now)
    });
    assert_eq!(paid["balance"], "0.00", "{paid}");
    let payments = d.ok("GET", "/v1/payments?limit=1000", None);
    let items = payments["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{payments}");
    assert_eq!(items[0]["amount"], "238.00", "{payments}");
    assert_eq!(
        items[0]["external_id"], "paypal:7LK63455XR1234567",
        "{payments}"
    );
    // The same notice delivered again (a second copy, another file): recognised, no second payment.
    drop_mail(&maildir, "501.M2.host", notice.as_bytes());
    wait_for_mailbox(&d, "paypal-mail", "the copy processed", |m| {
        m["seen"].as_u64().unwrap_or(0) + m["duplicates"].as_u64().unwrap_or(0) >= 2
    });
    let payments = d.ok("GET", "/v1/payments?limit=1000", None);
    assert_eq!(
        payments["items"].as_array().map(Vec::len),
        Some(1),
        "{payments}"
    );
}
