//! Mailboxes: IMAP folders and Maildir folders whose messages go to a connector's `mail` plugin.
//!
//! The host owns the sockets and files; the plugin only sees the raw message. A message's records, its dedupe key
//! (`mail:<connector>:<Message-ID or content hash>`) and, for IMAP, the folder cursor (UIDVALIDITY and last UID) are
//! committed in one write set, so a crash between fetch and commit re-reads the message and never skips one, and a
//! message read twice (a duplicate delivery, a UIDVALIDITY change, the same mail in two folders) creates nothing twice.
//! Only after the commit is the message flagged `\Seen` or moved (IMAP) or moved to `cur/` (Maildir).

mod imap;
mod maildir;
mod status;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use settled_plugin_api::{MailAttachment, MailOutcome, MailRequest};

pub use status::{FolderCursor, MailboxStatus, Mailboxes};

use crate::api::AppState;
use crate::engine::{MailMessage, MailVerdict};
use crate::plugin_host::{CallError, PluginHost};

/// A connector's mailbox (`[connector.mailbox]`): an IMAP account or a Maildir folder, exactly one of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    /// An IMAP account (`[connector.mailbox.imap]`).
    #[serde(default)]
    pub imap: Option<ImapConfig>,
    /// A Maildir folder (holding `new/`, `cur/`, `tmp/`): messages in `new/` are read and moved to `cur/` with the `S`
    /// flag once their records are committed.
    #[serde(default)]
    pub maildir: Option<PathBuf>,
    /// Messages larger than this (MiB) are not parsed: recorded once as failed, with the reason. Default 25.
    #[serde(default = "default_max_message_mib")]
    pub max_message_mib: u64,
    /// Messages per committed batch (default 50): bounds memory and how much a crash makes the daemon re-read.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Seconds between checks where the server has no IMAP IDLE, or several folders are read (default 60); also how long
    /// one IDLE lasts before it is renewed.
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// Longest wait between reconnection attempts, in seconds (default 300); waits start at 1 s and double.
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
}

/// An IMAP account.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Server name or address.
    pub host: String,
    /// Port; default 993 with `tls = "required"`, else 143.
    #[serde(default)]
    pub port: Option<u16>,
    /// Login name.
    pub user: String,
    /// File holding the password (trailing newline ignored). One of `password_file` and `password_env` is required.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// `required` (default: TLS from the first byte, port 993), `starttls` (upgrade before login, port 143) or `none`
    /// (plain text, allowed only for a loopback address).
    #[serde(default)]
    pub tls: Tls,
    /// PEM file of certificate authorities to trust for this server, besides the public ones (Mozilla's list, built in):
    /// for a server with a self-signed or company CA certificate. Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Folders to read (default `["INBOX"]`). IDLE is used when there is one folder and the server offers it.
    #[serde(default = "default_folders")]
    pub folders: Vec<String>,
    /// After its records are committed, move a message to this folder; without it the message is flagged `\Seen`.
    #[serde(default)]
    pub move_to: Option<String>,
}

/// How an IMAP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    /// Implicit TLS (IMAPS).
    #[default]
    Required,
    /// Plain connection upgraded with STARTTLS before the password is sent.
    Starttls,
    /// No encryption: loopback addresses only.
    None,
}

fn default_max_message_mib() -> u64 {
    25
}
fn default_batch() -> usize {
    50
}
fn default_poll_secs() -> u64 {
    60
}
fn default_max_backoff_secs() -> u64 {
    300
}
fn default_folders() -> Vec<String> {
    vec!["INBOX".into()]
}

impl MailboxConfig {
    /// A Maildir folder with every other key at its default.
    pub fn maildir(dir: PathBuf) -> MailboxConfig {
        MailboxConfig {
            imap: None,
            maildir: Some(dir),
            max_message_mib: default_max_message_mib(),
            batch: default_batch(),
            poll_secs: default_poll_secs(),
            max_backoff_secs: default_max_backoff_secs(),
        }
    }

    /// Check the table; the error names the key below `mailbox.` and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
        match (&self.imap, &self.maildir) {
            (Some(_), Some(_)) => return bad("imap", "give either `imap` or `maildir`, not both"),
            (None, None) => return bad("imap", "give `imap` or `maildir`"),
            _ => {}
        }
        if self.max_message_mib == 0 {
            return bad("max_message_mib", "must be more than 0");
        }
        if self.batch == 0 {
            return bad("batch", "must be more than 0");
        }
        if self.poll_secs == 0 {
            return bad("poll_secs", "must be more than 0");
        }
        if self.max_backoff_secs == 0 {
            return bad("max_backoff_secs", "must be more than 0");
        }
        if let Some(imap) = &self.imap {
            if imap.host.trim().is_empty() {
                return bad("imap.host", "must not be empty");
            }
            if imap.user.is_empty() {
                return bad("imap.user", "must not be empty");
            }
            if imap.password_file.is_some() == imap.password_env.is_some() {
                return bad(
                    "imap.password_file",
                    "give exactly one of `password_file` and `password_env`",
                );
            }
            if imap.folders.is_empty() {
                return bad("imap.folders", "name at least one folder");
            }
            if imap.ca_file.is_some() && imap.tls == Tls::None {
                return bad(
                    "imap.ca_file",
                    "trusts a certificate authority for TLS, but `tls` is `none`",
                );
            }
            if imap.tls == Tls::None && !is_loopback(&imap.host) {
                return bad(
                    "imap.tls",
                    "`none` sends the password in clear text and is allowed only for a loopback address",
                );
            }
        }
        Ok(())
    }

    fn max_bytes(&self) -> u64 {
        self.max_message_mib.saturating_mul(1024 * 1024)
    }
}

impl ImapConfig {
    fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            Tls::Required => 993,
            Tls::Starttls | Tls::None => 143,
        })
    }

    fn password(&self) -> Result<String, String> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!("reading mailbox.imap.password_file {}: {e}", path.display())
            })?;
            return Ok(text.trim_end_matches(['\r', '\n']).to_string());
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var).map_err(|_| {
                format!("environment variable {var} (mailbox.imap.password_env) is not set")
            });
        }
        Err("no password configured".into())
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What every mailbox task needs.
#[derive(Clone)]
struct Mailbox {
    state: AppState,
    host: Arc<PluginHost>,
    connector: String,
    plugin: String,
    config: MailboxConfig,
}

/// Why a message could not be handed over now (the plugin host is down, the store failed): nothing is committed and
/// the message is read again later.
struct Retry(String);

/// Why a mail's attachments were not imported.
enum AttachmentError {
    /// The attachment itself is at fault: the mail is recorded as failed with the reason.
    Bad(String),
    /// The environment failed: nothing is committed and the mail is read again later.
    Retry(String),
}

/// Read every configured mailbox until cancelled; each runs on its own, so one failing never stops another.
pub async fn run(state: AppState, host: Arc<PluginHost>, cancel: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for connector in &state.engine.config().connectors {
        let Some(config) = connector.mailbox.clone() else {
            continue;
        };
        let mailbox = Mailbox {
            state: state.clone(),
            host: host.clone(),
            connector: connector.name.clone(),
            plugin: connector.plugin.clone(),
            config,
        };
        let mailboxes = &state.metrics.mailboxes;
        if let Some(imap) = mailbox.config.imap.clone() {
            let target = format!("imap://{}@{}:{}", imap.user, imap.host, imap.port());
            mailboxes.add(&mailbox.connector, "imap", target);
            tasks.spawn(imap::run(mailbox, imap, cancel.clone()));
        } else if let Some(dir) = mailbox.config.maildir.clone() {
            mailboxes.add(&mailbox.connector, "maildir", dir.display().to_string());
            tasks.spawn(maildir::run(mailbox, dir, cancel.clone()));
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "mailbox task ended abnormally");
        }
    }
}

impl Mailbox {
    fn status(&self) -> &Mailboxes {
        &self.state.metrics.mailboxes
    }

    /// Hand one message to the plugin (and its attachments to the file pipeline).
    async fn judge(&self, raw: Vec<u8>, location: String) -> Result<MailMessage, Retry> {
        let key = message_key(&raw);
        let verdict = match self.host.mail(&self.connector, MailRequest { raw }).await {
            Ok(MailOutcome::NotMine) => MailVerdict::NotMine,
            Ok(MailOutcome::Records {
                records,
                attachments,
            }) => match self.import_attachments(&key, attachments).await {
                Ok(()) => MailVerdict::Records(records),
                Err(AttachmentError::Bad(reason)) => MailVerdict::Failed(reason),
                Err(AttachmentError::Retry(reason)) => return Err(Retry(reason)),
            },
            Err(CallError::Plugin(e)) => {
                MailVerdict::Failed(format!("plugin {}: {e}", self.plugin))
            }
            Err(e) => return Err(Retry(e.to_string())),
        };
        Ok(MailMessage {
            key,
            location,
            verdict,
        })
    }

    /// A message not parsed because of its size.
    fn oversized(&self, key: String, location: String, size: u64) -> MailMessage {
        MailMessage {
            key,
            location,
            verdict: MailVerdict::Failed(format!(
                "message is {size} bytes, over the limit of {} MiB (mailbox.max_message_mib); not parsed",
                self.config.max_message_mib
            )),
        }
    }

    /// Import attached statements like dropped files; they commit (and dedupe) on their own, before the message.
    async fn import_attachments(
        &self,
        key: &str,
        attachments: Vec<MailAttachment>,
    ) -> Result<(), AttachmentError> {
        if attachments.is_empty() {
            return Ok(());
        }
        let dir = self
            .state
            .engine
            .config()
            .data_dir()
            .join("mail-attachments");
        std::fs::create_dir_all(&dir)
            .map_err(|e| AttachmentError::Retry(format!("creating {}: {e}", dir.display())))?;
        for a in attachments {
            let name: String = a
                .name
                .chars()
                .map(|c| {
                    if c == '/' || c == '\\' || c.is_control() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            let hash = hex::encode(&Sha256::digest(key.as_bytes())[..6]);
            let path = dir.join(format!("{}-{hash}-{name}", self.connector));
            std::fs::write(&path, &a.content)
                .map_err(|e| AttachmentError::Retry(format!("writing {}: {e}", path.display())))?;
            let result = self
                .state
                .pipeline(&self.host)
                .import(&name, a.connector.as_deref(), &path)
                .await;
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove imported mail attachment");
            }
            match result {
                Ok(summary) => {
                    tracing::info!(connector = %self.connector, attachment = %name, new = summary.new,
                    duplicates = summary.duplicates, "mail attachment imported")
                }
                // A bad file fails its mail; the environment failing (a plugin unavailable, the store) is tried again.
                Err(e) if e.is_bad_file() => {
                    return Err(AttachmentError::Bad(format!("attachment {name}: {e}")))
                }
                Err(e) => return Err(AttachmentError::Retry(format!("attachment {name}: {e}"))),
            }
        }
        Ok(())
    }

    async fn backoff(&self, delay: &mut Duration, cancel: &CancellationToken) -> bool {
        let wait = *delay;
        *delay = (*delay * 2).min(Duration::from_secs(self.config.max_backoff_secs));
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

/// The dedupe key of a message: its Message-ID, else a hash of its bytes.
pub fn message_key(raw: &[u8]) -> String {
    match message_id(raw) {
        Some(id) => format!("id:{id}"),
        None => format!("sha256:{}", hex::encode(Sha256::digest(raw))),
    }
}

/// The Message-ID header's value without angle brackets, from the header block (folded lines joined).
fn message_id(raw: &[u8]) -> Option<String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut value: Option<String> = None;
    for line in head.lines() {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((name, rest)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("message-id") {
                value = Some(rest.trim().to_string());
            }
        }
    }
    let id = value?
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_string();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_is_the_key_and_content_hashes_stand_in_without_one() {
        let with = b"From: a@b.c\r\nMessage-ID:\r\n <abc@example.org>\r\nSubject: x\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_key(with), "id:abc@example.org");
        let without = b"From: a@b.c\n\nMessage-ID: <body@x>\n";
        assert!(
            message_key(without).starts_with("sha256:"),
            "{}",
            message_key(without)
        );
        assert_ne!(message_key(without), message_key(b"From: a@b.c\n\nother\n"));
    }

    #[test]
    fn plain_text_imap_is_refused_for_a_remote_host() {
        let config: MailboxConfig = toml::from_str(
            "[imap]\nhost = \"mail.example.org\"\nuser = \"u\"\npassword_env = \"P\"\ntls = \"none\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (key, message) = config.validate().err().unwrap_or_default();
        assert_eq!(key, "imap.tls");
        assert!(message.contains("loopback"), "{message}");
        let local: MailboxConfig = toml::from_str(
            "[imap]\nhost = \"127.0.0.1\"\nuser = \"u\"\npassword_env = \"P\"\ntls = \"none\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(local.validate(), Ok(()));
    }

    #[test]
    fn a_ca_file_without_tls_is_refused() {
        let config: MailboxConfig = toml::from_str(
            "[imap]\nhost = \"127.0.0.1\"\nuser = \"u\"\npassword_env = \"P\"\ntls = \"none\"\nca_file = \"/etc/ca.pem\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (key, message) = config.validate().err().unwrap_or_default();
        assert_eq!(key, "imap.ca_file");
        assert!(message.contains("`tls` is `none`"), "{message}");
    }
}
