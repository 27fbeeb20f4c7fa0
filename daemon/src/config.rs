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
    /// sled page cache in MiB (default 64): bounds resident memory.
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
    /// Delivery of outbox events to sink connectors (retries, timeouts).
    #[serde(default)]
    pub outbox: Outbox,
    /// Connector instances, `[[connector]]` tables. Without any, one instance of each bundled plugin runs with default settings.
    /// `allow_partial` (default `false`): when the engine refuses some records of a file (unknown currency, invalid email),
    /// `false` sends the whole file to `failed/` with nothing recorded; `true` keeps the good records and lists the refused
    /// ones in the import summary.
    /// A `mail` connector reads the mailbox of its `[connector.mailbox]` table: `imap` (`host`, `port`, `user`, `password_file`
    /// or `password_env`, `tls` = `required` (default) | `starttls` | `none` (loopback only), `folders` (default `["INBOX"]`),
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
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins {
            dir: None,
            allowlist: None,
            call_timeout_ms: 10_000,
            quarantine_after: 5,
            watch: true,
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
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            retry_schedule_ms: vec![
                5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
            ],
            request_timeout_ms: 10_000,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7878))
}

fn default_cache_mib() -> u64 {
    64
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
            outbox: Outbox::default(),
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
    fn duplicate_connector_names_are_rejected() {
        let err = parse(
            "[[connector]]\nname = \"bank\"\nplugin = \"camt\"\n[[connector]]\nname = \"bank\"\nplugin = \"mt940\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("connector[1].name"), "{err}");
    }
}
