//! The daemon's configuration: one TOML file, unknown keys rejected by name, a sane default for every setting.
//!
//! Every field's `///` doc is also the user documentation; `settled init` writes [`DEFAULT_CONFIG`], a commented file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::domain::lead::ScoreWeights;
use crate::plugin_host::ConnectorConfig;

/// A config error naming the file (and, for TOML errors, the line and key).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names line, column and key).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and key.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the store, API token, plugin cache and inbox live. Default: `$SETTLED_DATA_DIR`, else `$XDG_DATA_HOME/settled`,
    /// else `~/.local/share/settled`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API and intake. Default `127.0.0.1:7878` (loopback only).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File holding the API bearer token. Default `<data_dir>/api-token`. `SETTLED_API_TOKEN` in the environment overrides it.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Log format: `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// sled page cache in MiB (default 16): bounds resident memory. sled counts its pages smaller than they are, so
    /// the cache takes about twice this; a larger cache serves API reads of a large store from memory more often.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
    /// Document number patterns.
    #[serde(default)]
    pub numbering: Numbering,
    /// Invoicing defaults.
    #[serde(default)]
    pub invoicing: Invoicing,
    /// Lead score weights (explainable, rule based).
    #[serde(default)]
    pub scoring: ScoreWeights,
    /// Automatic reconciliation settings.
    #[serde(default)]
    pub reconcile: Reconcile,
    /// Plugin loading.
    #[serde(default)]
    pub plugins: Plugins,
    /// File imports (inbox folders and `settled import`).
    #[serde(default)]
    pub imports: Imports,
    /// Checkpoints of the invoice payment state that ingested payments change (see `[journal]` below).
    #[serde(default)]
    pub journal: Journal,
    /// Delivery of outbox events to sink connectors (retries, timeouts).
    #[serde(default)]
    pub outbox: Outbox,
    /// Connection limits and timeouts of the HTTP listener (API, `/healthz` and intake).
    #[serde(default)]
    pub http: Http,
    /// Limits of `/intake/{connector}` (body size, rate per sender address), for every intake connector; a connector's
    /// `[connector.intake]` table overrides any of them for that connector.
    #[serde(default)]
    pub intake: IntakeLimits,
    /// Connector instances, `[[connector]]` tables. Every plugin in the plugin folder that no `[[connector]]` names also
    /// runs one default instance, named after the plugin, unless `[plugins] defaults = false`.
    /// The daemon re-reads this file when it changes and on SIGHUP: `[[connector]]` tables (and `[plugins] defaults`)
    /// that were added, changed or removed take effect at once; other changes wait for a restart; a file with an
    /// error is refused whole and the running config stays (the error is logged and shown by `/v1/plugins` and `/healthz`).
    /// `allow_partial` (default `false`): when the engine refuses some records of a file (unknown currency, invalid email),
    /// `false` sends the whole file to `failed/` with nothing recorded; `true` keeps the good records and lists the refused
    /// ones in the import summary.
    /// A `mail` connector reads the mailbox of its `[connector.mailbox]` table: `imap` (`host`, `port`, `user`, `password_file`
    /// or `password_env`, `tls` = `required` (default) | `starttls` | `none` (loopback only), `ca_file` (PEM certificates of
    /// authorities to trust besides the public ones, for a self-signed server; default none), `folders` (default `["INBOX"]`),
    /// `move_to`) or `maildir`, plus `max_message_mib` (default 25), `batch` (50), `poll_secs` (60) and `max_backoff_secs`
    /// (300); every key is documented on `mailbox::MailboxConfig`.
    /// A `poll` connector (a plugin with the `poll` role, e.g. `tryton`) is polled every `poll_every_secs` seconds (default
    /// 60, at least 1); a poll that has more pages reads them at once, a failed one is tried again at the next tick.
    #[serde(default, rename = "connector")]
    pub connectors: Vec<ConnectorConfig>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Number series patterns: literal text with `{YYYY}`, `{YY}`, `{MM}` and one `{SEQ}`/`{SEQ:n}`. A year token resets the sequence yearly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Numbering {
    /// Quotes, default `Q-{YYYY}-{SEQ:3}`.
    pub quote: String,
    /// Orders, default `ORD-{SEQ:5}`.
    pub order: String,
    /// Invoices, default `INV-{YYYY}-{SEQ:3}`. Numbers are given at issue time, gap-free.
    pub invoice: String,
    /// Credit notes, default `CN-{YYYY}-{SEQ:3}`.
    pub credit_note: String,
}

impl Default for Numbering {
    fn default() -> Self {
        use crate::domain::numbering::*;
        Numbering {
            quote: QUOTE_PATTERN.into(),
            order: ORDER_PATTERN.into(),
            invoice: INVOICE_PATTERN.into(),
            credit_note: CREDIT_NOTE_PATTERN.into(),
        }
    }
}

/// Invoicing defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Invoicing {
    /// Days from issue to due date when an order gives no payment terms (default 30).
    pub payment_terms_days: u32,
}

impl Default for Invoicing {
    fn default() -> Self {
        Invoicing {
            payment_terms_days: 30,
        }
    }
}

/// Reconciliation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconcile {
    /// Underpayment up to this amount (in the invoice's currency) is written off, recorded as such. Default `"0.00"` (never).
    #[serde(with = "rust_decimal::serde::str")]
    pub writeoff_tolerance: Decimal,
    /// Below this confidence (0-100) a match goes to the review queue. Default 60.
    pub min_confidence: u8,
}

impl Default for Reconcile {
    fn default() -> Self {
        Reconcile {
            writeoff_tolerance: Decimal::ZERO,
            min_confidence: 60,
        }
    }
}

/// Plugin loading settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plugins {
    /// Folder watched for connector plugins (`*.so`). Default `<data_dir>/plugins`; created on first start and filled with the
    /// plugins bundled next to the `settled` binary.
    pub dir: Option<PathBuf>,
    /// Optional SHA-256 allowlist (hex): when set, only these files load.
    pub allowlist: Option<Vec<String>>,
    /// Timeout of one plugin call in milliseconds (default 10000).
    pub call_timeout_ms: u64,
    /// Consecutive failures before a plugin instance is quarantined (default 5).
    pub quarantine_after: u32,
    /// Watch the folder and hot-reload plugins (default true).
    pub watch: bool,
    /// Refuse to run a plugin in `process` isolation unless its child's whole sandbox is in force: an empty environment,
    /// `no_new_privs`, Landlock (Linux 6.12 or later, enabled in the kernel's `lsm=` list) and seccomp. Default false: where
    /// the kernel lacks a part, plugins still load, and every load logs a warning and `settled plugins` shows what is
    /// missing. Set it to true on a machine that runs plugins you do not fully trust.
    pub require_sandbox: bool,
    /// Run one default instance of every plugin in the folder that no `[[connector]]` names (default true), also of a
    /// plugin dropped in while the daemon runs. It is named after the plugin (`camt`, `bank-csv`; a `[[connector]]`
    /// with that name takes precedence) and uses the plugin's default settings (`qif`: `currency = "USD"`). Plugins
    /// that cannot work without settings (`stripe`, `webhook`, `hledger`) get none. `false`: only `[[connector]]` instances run.
    pub defaults: bool,
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins {
            dir: None,
            allowlist: None,
            call_timeout_ms: 10_000,
            quarantine_after: 5,
            watch: true,
            require_sandbox: false,
            defaults: true,
        }
    }
}

/// File import settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Imports {
    /// Files larger than this (KiB) are parsed in a streaming session, twice (validate, then commit), so memory stays bounded
    /// whatever the file's size; smaller files are parsed in one call. Default 8192 (8 MiB).
    pub stream_above_kib: u64,
    /// How long (milliseconds) an inbox file must stay unchanged (size, modification time, inode) before it is imported,
    /// once no local process has it open for writing. Default 2000. Writers the daemon cannot watch (network file systems)
    /// are only covered by this wait, so writers should follow the inbox file protocol: write under a temporary name,
    /// then rename (see the README).
    pub inbox_settle_ms: u64,
}

impl Default for Imports {
    fn default() -> Self {
        Imports {
            stream_above_kib: 8192,
            inbox_settle_ms: 2000,
        }
    }
}

/// Checkpoints. An ingested payment's allocations are written to the journal (the payment, its allocations and its
/// `payment.recorded` event) at once, but the invoices they pay are updated in memory only, and written back to the
/// store in key order by a checkpoint: every `checkpoint_every_secs`, whenever `checkpoint_dirty` changes wait, at the
/// end of every file import, at a clean stop and before `settled backup`. Reads always see the latest state. After a
/// crash the daemon replays the journal after the last checkpoint at start, so nothing is lost or counted twice;
/// fewer seconds or changes mean a shorter replay, more mean faster bulk imports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Journal {
    /// Seconds between background checkpoints while changes wait (default 60, at least 1).
    pub checkpoint_every_secs: u64,
    /// Changed keys (an invoice and its open-invoice rows count about 2) held in memory before a checkpoint starts on its
    /// own thread while writes go on; writers wait for it only when twice as many wait (default 50000, about 35 MiB,
    /// 70 MiB at most; at least 1). 100000 took a 1M-line import no faster and held ~25 MiB more (BENCHMARKS.md).
    pub checkpoint_dirty: usize,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            checkpoint_every_secs: 60,
            checkpoint_dirty: 50_000,
        }
    }
}

/// Outbox delivery settings, shared by every sink connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbox {
    /// Waits in milliseconds before each retry of a failed delivery; after the last one the event becomes a dead letter.
    /// Each wait gets up to 10% jitter either way; a `Retry-After` the receiver sent (429, 503) replaces it. Default: the
    /// Standard Webhooks schedule 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (eight attempts over about 27 hours).
    pub retry_schedule_ms: Vec<u64>,
    /// Timeout of one outbound HTTP request of a sink or a poll connector, connect to last byte, in milliseconds
    /// (default 10000).
    pub request_timeout_ms: u64,
    /// The largest answer body a sink's peer may send, in MiB (default 64). A larger answer is refused with an error
    /// naming the URL and this setting, and the delivery is retried; nothing is cut off and handed to the plugin. The
    /// `hledger` sink reads the whole journal before each write (about 1.3 KiB per transaction), so raise this for
    /// journals of more than about 40,000 transactions.
    pub max_response_mib: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            retry_schedule_ms: vec![
                5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
            ],
            request_timeout_ms: 10_000,
            max_response_mib: 64,
        }
    }
}

/// Connection limits and timeouts of the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Most connections open at once (default 1024). A connection beyond it is closed as soon as it is accepted. Keep it
    /// well below the process's file descriptor limit (`LimitNOFILE` in the systemd unit, 65536), which also covers the
    /// store, plugin children and inbox files.
    pub max_connections: usize,
    /// Connections kept for the API and `/healthz` (default 64): at most `max_connections - api_reserve` intake requests
    /// are served at once; one more is answered 503 with `Retry-After`, so anonymous senders cannot lock the API out.
    pub api_reserve: usize,
    /// Seconds a connection may take to send a request's headers, counted from when it opened or answered its previous
    /// request (default 10). Slow or silent sockets are closed after it; so are kept-alive connections that send nothing.
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay without a byte read or written while no request of it is being handled (default 60),
    /// e.g. a client that stops reading its answer.
    pub idle_timeout_secs: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            max_connections: 1024,
            api_reserve: 64,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
        }
    }
}

/// Limits of `/intake/{connector}`. In `[intake]` every key has its default; in a `[connector.intake]` table a key that is
/// left out takes the `[intake]` value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeLimits {
    /// Largest request body in KiB (default 1024, at most 32768). A larger body is answered 413, from its `Content-Length`
    /// or as soon as more arrives, before the plugin is called; memory stays bounded whatever is sent.
    pub max_body_kib: Option<u64>,
    /// Seconds the whole body may take to arrive once the headers are in (default 30); a slower sender gets 408.
    pub body_timeout_secs: Option<u64>,
    /// Requests per minute one sender address may make to one connector, on average (default 600). Over it the
    /// sender gets 429 with `Retry-After`. Behind a reverse proxy every sender has the proxy's address: raise it there.
    pub rate_per_minute: Option<u32>,
    /// Requests one sender address may make at once before `rate_per_minute` applies (default 60).
    pub burst: Option<u32>,
}

/// Largest `max_body_kib`: base64 in the plugin call's JSON frame must stay within the plugin child's 64 MiB frame.
pub const MAX_INTAKE_BODY_KIB: u64 = 32 * 1024;

/// The intake limits of one connector, every value given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeLimitValues {
    /// Largest body in bytes.
    pub max_body: usize,
    /// Time the body may take.
    pub body_timeout: std::time::Duration,
    /// Requests per minute per sender address.
    pub rate_per_minute: std::num::NonZeroU32,
    /// Burst per sender address.
    pub burst: std::num::NonZeroU32,
}

impl IntakeLimits {
    /// `self` with what it leaves out taken from `base`, then from the defaults.
    pub fn resolve(&self, base: &IntakeLimits) -> IntakeLimitValues {
        let nonzero = |v: u32, default: u32| {
            std::num::NonZeroU32::new(v)
                .or(std::num::NonZeroU32::new(default))
                .unwrap_or(std::num::NonZeroU32::MIN)
        };
        let kib = self.max_body_kib.or(base.max_body_kib).unwrap_or(1024);
        IntakeLimitValues {
            max_body: usize::try_from(kib.saturating_mul(1024)).unwrap_or(usize::MAX),
            body_timeout: std::time::Duration::from_secs(
                self.body_timeout_secs
                    .or(base.body_timeout_secs)
                    .unwrap_or(30),
            ),
            rate_per_minute: nonzero(
                self.rate_per_minute.or(base.rate_per_minute).unwrap_or(600),
                600,
            ),
            burst: nonzero(self.burst.or(base.burst).unwrap_or(60), 60),
        }
    }

    /// Refuses values out of range; `prefix` is the table's dotted key.
    fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{prefix}.{k}");
        match self.max_body_kib {
            Some(0) => return Err((key("max_body_kib"), "must be more than 0".into())),
            Some(kib) if kib > MAX_INTAKE_BODY_KIB => {
                return Err((
                    key("max_body_kib"),
                    format!(
                        "{kib} is over the largest intake body, {MAX_INTAKE_BODY_KIB} KiB (32 MiB)"
                    ),
                ))
            }
            _ => {}
        }
        if self.body_timeout_secs == Some(0) {
            return Err((key("body_timeout_secs"), "must be more than 0".into()));
        }
        if self.rate_per_minute == Some(0) {
            return Err((key("rate_per_minute"), "must be more than 0".into()));
        }
        if self.burst == Some(0) {
            return Err((key("burst"), "must be more than 0".into()));
        }
        Ok(())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7878))
}

fn default_cache_mib() -> u64 {
    crate::store::DEFAULT_CACHE_MIB
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: None,
            listen: default_listen(),
            api_token_file: None,
            log_format: LogFormat::Text,
            cache_mib: default_cache_mib(),
            numbering: Numbering::default(),
            invoicing: Invoicing::default(),
            scoring: ScoreWeights::default(),
            reconcile: Reconcile::default(),
            plugins: Plugins::default(),
            imports: Imports::default(),
            journal: Journal::default(),
            outbox: Outbox::default(),
            http: Http::default(),
            intake: IntakeLimits::default(),
            connectors: Vec::new(),
        }
    }
}

impl Config {
    /// Parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        for (key, pattern) in [
            ("numbering.quote", &self.numbering.quote),
            ("numbering.order", &self.numbering.order),
            ("numbering.invoice", &self.numbering.invoice),
            ("numbering.credit_note", &self.numbering.credit_note),
        ] {
            crate::domain::numbering::SeriesPattern::parse(pattern)
                .map_err(|e| invalid(key, e.to_string()))?;
        }
        if self.reconcile.writeoff_tolerance.is_sign_negative() {
            return Err(invalid(
                "reconcile.writeoff_tolerance",
                "must not be negative".into(),
            ));
        }
        if self.reconcile.min_confidence > 100 {
            return Err(invalid(
                "reconcile.min_confidence",
                "must be 0 to 100".into(),
            ));
        }
        if self.journal.checkpoint_every_secs == 0 {
            return Err(invalid(
                "journal.checkpoint_every_secs",
                "must be at least 1".into(),
            ));
        }
        if self.journal.checkpoint_dirty == 0 {
            return Err(invalid(
                "journal.checkpoint_dirty",
                "must be at least 1".into(),
            ));
        }
        if self.plugins.call_timeout_ms == 0 {
            return Err(invalid(
                "plugins.call_timeout_ms",
                "must be more than 0".into(),
            ));
        }
        if self.outbox.request_timeout_ms == 0 {
            return Err(invalid(
                "outbox.request_timeout_ms",
                "must be more than 0".into(),
            ));
        }
        if !(1..=4096).contains(&self.outbox.max_response_mib) {
            return Err(invalid(
                "outbox.max_response_mib",
                "must be 1 to 4096".into(),
            ));
        }
        if self.http.max_connections == 0 {
            return Err(invalid(
                "http.max_connections",
                "must be more than 0".into(),
            ));
        }
        if self.http.api_reserve >= self.http.max_connections {
            return Err(invalid(
                "http.api_reserve",
                format!(
                    "{} leaves no connection for intake: it must be less than http.max_connections ({})",
                    self.http.api_reserve, self.http.max_connections
                ),
            ));
        }
        if self.http.header_timeout_secs == 0 || self.http.idle_timeout_secs == 0 {
            let key = if self.http.header_timeout_secs == 0 {
                "http.header_timeout_secs"
            } else {
                "http.idle_timeout_secs"
            };
            return Err(invalid(key, "must be more than 0".into()));
        }
        self.intake
            .validate("intake")
            .map_err(|(key, message)| invalid(&key, message))?;
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.connectors.iter().enumerate() {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err(invalid(
                    &format!("connector[{i}].name"),
                    format!("`{}` must be letters, digits, `-` or `_`", c.name),
                ));
            }
            c.intake
                .validate(&format!("connector[{i}].intake"))
                .map_err(|(key, message)| invalid(&key, message))?;
            if let Some(mailbox) = &c.mailbox {
                mailbox.validate().map_err(|(key, message)| {
                    invalid(&format!("connector[{i}].mailbox.{key}"), message)
                })?;
            }
            if !names.insert(c.name.clone()) {
                return Err(invalid(
                    &format!("connector[{i}].name"),
                    format!("`{}` is used twice", c.name),
                ));
            }
        }
        Ok(())
    }

    /// The data directory: config, else `$SETTLED_DATA_DIR`, else XDG data home.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// `$SETTLED_DATA_DIR`, else `$XDG_DATA_HOME/settled`, else `~/.local/share/settled`, else `./settled-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SETTLED_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("settled");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/share/settled");
    }
    PathBuf::from("settled-data")
}

/// The commented default config `settled init` writes.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/settled.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("settled.toml"), text)
    }

    #[test]
    fn an_empty_file_gives_every_default() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(c.numbering.invoice, "INV-{YYYY}-{SEQ:3}");
        assert_eq!(c.invoicing.payment_terms_days, 30);
        assert_eq!(c.plugins.call_timeout_ms, 10_000);
        assert_eq!(c.imports.inbox_settle_ms, 2000);
        assert_eq!(c.http.max_connections, 1024);
        let intake = c.intake.resolve(&IntakeLimits::default());
        assert_eq!(intake.max_body, 1024 * 1024);
        assert_eq!(intake.rate_per_minute.get(), 600);
    }

    #[test]
    fn a_connector_intake_table_overrides_only_what_it_names() {
        let c = parse(
            "[intake]\nburst = 5\nmax_body_kib = 64\n[[connector]]\nname = \"site\"\nplugin = \"webform\"\n[connector.intake]\nmax_body_kib = 8\n",
        )
        .unwrap();
        let limits = c.connectors[0].intake.resolve(&c.intake);
        assert_eq!(limits.max_body, 8 * 1024);
        assert_eq!(limits.burst.get(), 5);
        assert_eq!(limits.rate_per_minute.get(), 600);
    }

    #[test]
    fn an_intake_body_limit_over_the_frame_is_refused_by_key() {
        let err = parse("[[connector]]\nname = \"site\"\nplugin = \"webform\"\n[connector.intake]\nmax_body_kib = 40000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("connector[0].intake.max_body_kib"), "{err}");
        let err = parse("[http]\nmax_connections = 10\napi_reserve = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.api_reserve"), "{err}");
    }

    #[test]
    fn the_shipped_default_config_parses() {
        parse(DEFAULT_CONFIG).unwrap();
    }

    #[test]
    fn an_unknown_key_is_rejected_with_its_name_and_line() {
        let err = parse("listen = \"127.0.0.1:9000\"\n\n[invoicing]\npayment_terms = 14\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("payment_terms"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("settled.toml"), "{err}");
    }

    #[test]
    fn a_bad_number_pattern_names_its_key() {
        let err = parse("[numbering]\ninvoice = \"INV-{YYYY}\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("numbering.invoice"), "{err}");
    }

    #[test]
    fn the_outbox_answer_limit_defaults_to_64_mib_and_0_is_refused_by_name() {
        assert_eq!(parse("").unwrap().outbox.max_response_mib, 64);
        assert_eq!(
            parse("[outbox]\nmax_response_mib = 256\n")
                .unwrap()
                .outbox
                .max_response_mib,
            256
        );
        let err = parse("[outbox]\nmax_response_mib = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("outbox.max_response_mib"), "{err}");
    }

    #[test]
    fn duplicate_connector_names_are_rejected() {
        let err = parse(
            "[[connector]]\nname = \"bank\"\nplugin = \"camt\"\n[[connector]]\nname = \"bank\"\nplugin = \"mt940\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("connector[1].name"), "{err}");
    }
}
