//! A private Dovecot IMAP server for the mailbox tests: its own config file in a temp dir, a free loopback port,
//! one user (`sales`, password `secret`), mail delivered with `dovecot-lda`; stopped when dropped.
//! Needs `dovecot-imapd` and a `vmail` system user (`.ci/run` installs both).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::free_port;

pub const USER: &str = "sales";
pub const PASSWORD: &str = "secret";

pub struct Dovecot {
    pub dir: tempfile::TempDir,
    /// The plain IMAP port (STARTTLS offered when started with TLS).
    pub port: u16,
    /// With TLS: the implicit-TLS (IMAPS) port and the PEM file of the CA that signed the server's certificate.
    pub tls: Option<(u16, PathBuf)>,
    config: PathBuf,
    running: bool,
}

impl Dovecot {
    /// A server without TLS.
    pub fn start() -> Dovecot {
        Dovecot::start_with(false)
    }

    /// A server with a certificate for `127.0.0.1` and `localhost` signed by a CA made for the test (openssl CLI):
    /// STARTTLS on [`Dovecot::port`], implicit TLS on the port in [`Dovecot::tls`].
    pub fn start_tls() -> Dovecot {
        Dovecot::start_with(true)
    }

    fn start_with(tls: bool) -> Dovecot {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let port = free_port();
        let root = dir.path();
        let tls = tls.then(|| (free_port(), make_certificates(&root.join("tls"))));
        let (ssl, imaps) = match &tls {
            Some((imaps_port, _)) => (
                format!(
                    "ssl = yes\nssl_cert = <{d}/tls/server.pem\nssl_key = <{d}/tls/server.key\n",
                    d = root.display()
                ),
                format!("address = 127.0.0.1\n    port = {imaps_port}\n    ssl = yes"),
            ),
            None => ("ssl = no\n".to_string(), "port = 0".to_string()),
        };
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir_all(root.join(sub)).unwrap_or_else(|e| panic!("mkdir {sub}: {e}"));
        }
        // The mail folder belongs to the user Dovecot delivers and reads as.
        let chown = Command::new("chown")
            .args(["-R", "vmail:vmail"])
            .arg(root.join("mail"))
            .status()
            .unwrap_or_else(|e| panic!("chown: {e}"));
        assert!(
            chown.success(),
            "chown vmail failed: is the vmail user there? (.ci/run creates it)"
        );
        // Dovecot checks that every folder above the mail folder is reachable by the mail user.
        let _ = Command::new("chmod").arg("755").arg(root).status();
        std::fs::write(root.join("users"), format!("{USER}:{{PLAIN}}{PASSWORD}\n"))
            .unwrap_or_else(|e| panic!("users file: {e}"));
        let config = root.join("dovecot.conf");
        let d = root.display();
        std::fs::write(
            &config,
            format!(
                "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\ninfo_log_path = {d}/dovecot.log\n\
                 instance_name = settled-test-{port}\nlisten = 127.0.0.1\nprotocols = imap\n{ssl}\
                 disable_plaintext_auth = no\nauth_mechanisms = plain login\nfirst_valid_uid = 1\n\
                 mail_location = maildir:{d}/mail/%n/Maildir\npostmaster_address = postmaster@example.org\nlda_mailbox_autocreate = yes\n\
                 passdb {{\n  driver = passwd-file\n  args = {d}/users\n}}\n\
                 userdb {{\n  driver = static\n  args = uid=vmail gid=vmail home={d}/mail/%n\n}}\n\
                 service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  \
                 inet_listener imaps {{\n    {imaps}\n  }}\n}}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("dovecot config: {e}"));
        let mut dovecot = Dovecot {
            dir,
            port,
            tls,
            config,
            running: false,
        };
        dovecot.run_master();
        dovecot
    }

    /// Start the master process (again) and wait until the port answers.
    pub fn run_master(&mut self) {
        // Its stdout/stderr go to a file: the master keeps them open, and a pipe would never close.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dovecot.stderr"))
            .unwrap_or_else(|e| panic!("dovecot log: {e}"));
        let status = Command::new("dovecot")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("running dovecot (apt-get install dovecot-imapd): {e}"));
        assert!(
            status.success(),
            "dovecot did not start: {status}\n{}",
            self.log_text()
        );
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not listen on {}\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server and wait until its port is closed.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = Command::new("dovecot")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deliver one message to the user's INBOX with `dovecot-lda`.
    pub fn deliver(&self, message: &str) {
        self.deliver_to("INBOX", message);
    }

    /// Deliver one message to a folder (created if missing) with `dovecot-lda`.
    pub fn deliver_to(&self, folder: &str, message: &str) {
        let mut child = Command::new("/usr/lib/dovecot/dovecot-lda")
            .arg("-c")
            .arg(&self.config)
            .args(["-d", USER, "-m", folder])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running dovecot-lda: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(message.replace('\n', "\r\n").as_bytes())
                .unwrap_or_else(|e| panic!("writing to dovecot-lda: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("dovecot-lda: {e}"));
        assert!(
            out.status.success(),
            "dovecot-lda failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `doveadm mailbox update --uid-validity`: the server renumbers the folder.
    pub fn set_uid_validity(&self, folder: &str, value: u32) {
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(&self.config)
            .args([
                "mailbox",
                "update",
                "-u",
                USER,
                "--uid-validity",
                &value.to_string(),
                folder,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("doveadm: {e}"));
        assert!(
            out.status.success(),
            "doveadm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The user's Maildir on disk (`cur/`, `new/`).
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail").join(USER).join("Maildir")
    }

    pub fn log_text(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}{}",
            read(&self.dir.path().join("dovecot.log")),
            read(&self.dir.path().join("dovecot.stderr"))
        )
    }

    /// The `[[connector]]` table of a `mail-lead` instance reading this server's INBOX in plain text.
    pub fn connector(&self, name: &str, password_file: &Path, extra: &str) -> String {
        self.connector_via(
            name,
            password_file,
            extra,
            &format!("host = \"127.0.0.1\"\nport = {}\ntls = \"none\"", self.port),
        )
    }

    /// [`Dovecot::connector`] with the lines of `[connector.mailbox.imap]` that say how to reach the server.
    pub fn connector_via(
        &self,
        name: &str,
        password_file: &Path,
        extra: &str,
        transport: &str,
    ) -> String {
        format!(
            "[[connector]]\nname = \"{name}\"\nplugin = \"mail-lead\"\n[connector.mailbox]\npoll_secs = 5\n\
             max_backoff_secs = 1\n{extra}\n[connector.mailbox.imap]\n{transport}\nuser = \"{USER}\"\n\
             password_file = \"{file}\"\n",
            file = password_file.display()
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dovecot log\n{}", self.log_text());
        }
        self.stop();
    }
}

/// A CA and a server certificate it signed, for `127.0.0.1` and `localhost`, in `dir` (`ca.pem`, `server.pem`,
/// `server.key`); the CA's PEM file.
fn make_certificates(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running openssl (it comes with dovecot-core): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=settled test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "-keyout",
        "server.key",
        "-out",
        "server.pem",
        "-subj",
        "/CN=localhost",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
    ]);
    dir.join("ca.pem")
}

/// An enquiry from `sender` with a Message-ID of its own.
pub fn enquiry(sender: &str, id: &str, subject: &str) -> String {
    format!(
        "From: Customer {id} <{sender}>\nTo: sales@example.com\nSubject: {subject}\nMessage-ID: <{id}@customers.example>\n\
         Date: Sun, 6 Dec 2026 10:00:00 +0000\nContent-Type: text/plain; charset=utf-8\n\nPlease send us a quote.\n"
    )
}
