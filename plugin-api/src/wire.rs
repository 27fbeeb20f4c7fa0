//! Versioned wire types: everything that crosses the plugin boundary as JSON.
//!
//! Every message travels inside an [`Envelope`] (`{"v":1,"op":...,"payload":...}`).
//! Records that plugins emit are tagged with a versioned kind (`lead@1`, `payment@1`);
//! a new incompatible shape gets a new kind (`payment@2`) rather than changing an old one.
//!
//! Conventions: money is a decimal string (`"2500.00"`, never a float), dates are `YYYY-MM-DD`,
//! currencies are ISO 4217 codes, raw bytes are standard base64 with padding.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The version of the JSON envelope this crate speaks.
pub const ENVELOPE_VERSION: u32 = 1;

/// The frame of every message exchanged between host and plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version, [`ENVELOPE_VERSION`].
    pub v: u32,
    /// The operation, one of the `op` constants in [`ops`].
    pub op: String,
    /// The operation's request or reply, shaped by `op`.
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// Operation names used in [`Envelope::op`].
pub mod ops {
    /// Host -> plugin: the plugin's [`Manifest`](super::Manifest) is requested.
    pub const MANIFEST: &str = "manifest";
    /// Host -> plugin: create an instance from its JSON settings.
    pub const CONFIGURE: &str = "configure";
    /// Host -> plugin: an inbound HTTP request, [`IntakeRequest`](super::IntakeRequest).
    pub const INTAKE: &str = "intake";
    /// Host -> plugin: does this file belong to you? [`SniffRequest`](super::SniffRequest).
    pub const SNIFF: &str = "sniff";
    /// Host -> plugin: parse a whole file, [`FileRequest`](super::FileRequest).
    pub const PARSE: &str = "parse";
    /// Host -> plugin: open a chunked parse session, [`ParseBegin`](super::ParseBegin) ->
    /// [`ParseSessionId`](super::ParseSessionId). Added in ABI 1.1.
    pub const PARSE_BEGIN: &str = "parse_begin";
    /// Host -> plugin: the next bytes of a session's file, [`ParseFeed`](super::ParseFeed) ->
    /// [`ParseReply`](super::ParseReply) holding the records those bytes completed. Added in ABI 1.1.
    pub const PARSE_FEED: &str = "parse_feed";
    /// Host -> plugin: end of the file, [`ParseSessionId`](super::ParseSessionId) ->
    /// [`ParseReply`](super::ParseReply) with the remaining records; the session is closed. Added in ABI 1.1.
    pub const PARSE_END: &str = "parse_end";
    /// Host -> plugin: drop a session's state, [`ParseSessionId`](super::ParseSessionId) -> `{}`.
    /// Added in ABI 1.1.
    pub const PARSE_ABORT: &str = "parse_abort";
    /// Host -> plugin: a raw RFC 822 message, [`MailRequest`](super::MailRequest).
    pub const MAIL: &str = "mail";
    /// Host -> plugin: start a poll, [`PollStart`](super::PollStart).
    pub const POLL_START: &str = "poll_start";
    /// Host -> plugin: the response to a poll request, [`PollResponse`](super::PollResponse).
    pub const POLL_RESPONSE: &str = "poll_response";
    /// Host -> plugin: the next step of a sink conversation, [`SinkInput`](super::SinkInput).
    pub const SINK_STEP: &str = "sink_step";
    /// Plugin -> host: a successful reply.
    pub const OK: &str = "ok";
    /// Plugin -> host: a [`PluginError`](super::PluginError).
    pub const ERROR: &str = "error";
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Short stable name, e.g. `camt`. Used in config (`plugin = "camt"`) and logs.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    /// Roles the plugin implements.
    pub roles: Vec<Role>,
    /// One line saying what the plugin is for.
    #[serde(default)]
    pub description: String,
}

/// A role a plugin can play (architecture brief, section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Inbound HTTP requests become records.
    Intake,
    /// Dropped or imported files become records.
    File,
    /// Raw mail messages become records.
    Mail,
    /// The host polls a remote system on a schedule.
    Poll,
    /// Domain events become outbound HTTP conversations.
    Sink,
}

/// An error reported by a plugin. The host logs it with the plugin's name and shows it to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginError {
    /// Machine-readable code: `bad_config`, `bad_input`, `bad_signature`, `unsupported`, `internal`, ...
    pub code: String,
    /// Human message: a lowercase phrase naming what is wrong.
    pub message: String,
    /// Where in the input: a config key, `line 12`, `line 4, column 3`, `Stmt[1]/Ntry[4]`, a form field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl PluginError {
    /// An error with a code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        PluginError {
            code: code.into(),
            message: message.into(),
            location: None,
        }
    }

    /// Bad input data (a file, a request body) at a location.
    pub fn bad_input(location: impl Into<String>, message: impl Into<String>) -> Self {
        PluginError {
            code: "bad_input".into(),
            message: message.into(),
            location: Some(location.into()),
        }
    }

    /// A bad configuration key.
    pub fn bad_config(key: impl Into<String>, message: impl Into<String>) -> Self {
        PluginError {
            code: "bad_config".into(),
            message: message.into(),
            location: Some(key.into()),
        }
    }

    /// The plugin does not implement the requested role.
    pub fn unsupported(op: &str) -> Self {
        PluginError::new(
            "unsupported",
            format!("this plugin does not implement `{op}`"),
        )
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{}: {} ({})", loc, self.message, self.code),
            None => write!(f, "{} ({})", self.message, self.code),
        }
    }
}

impl std::error::Error for PluginError {}

/// A canonical record emitted by a plugin, tagged with its versioned kind in the `record` field
/// (`{"record": "payment@1", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record")]
pub enum Record {
    /// `lead@1`: a captured lead.
    #[serde(rename = "lead@1")]
    Lead(LeadRecord),
    /// `payment@1`: money in or out on a bank or provider account.
    #[serde(rename = "payment@1")]
    Payment(PaymentRecord),
    /// `invoice@1`: an issued customer invoice kept in another system (an accounting package). Added in ABI 1.3.
    #[serde(rename = "invoice@1")]
    Invoice(InvoiceRecord),
}

/// `invoice@1`: a customer invoice issued in another system, read by a `poll` connector. The host keeps it as an
/// invoice of external origin (number, customer, amounts as the other system has them), reconciles bank lines
/// against it like its own, and announces its payments to sinks. Added in ABI 1.3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRecord {
    /// The other system's id for the invoice, stable and unique within the plugin's source (the dedupe key).
    pub external_id: String,
    /// The invoice number as the other system shows it (and customers quote it).
    pub number: String,
    /// When the invoice was created by this host and only sent to the other system: the host's own invoice number
    /// (the other system's reference field). The host then links its invoice to `external_id` instead of creating
    /// a second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_number: Option<String>,
    /// Customer name.
    pub customer: String,
    /// Customer e-mail, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_email: Option<String>,
    /// Customer tax id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_tax_id: Option<String>,
    /// ISO 4217 currency code, upper case.
    pub currency: String,
    /// Amount without tax.
    #[serde(with = "rust_decimal::serde::str")]
    pub untaxed: Decimal,
    /// Tax amount.
    #[serde(with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    /// Total, `untaxed + tax`.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// What the other system says is left to pay (for an invoice paid there, 0).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_due: Decimal,
    /// Invoice date.
    pub issue_date: NaiveDate,
    /// Due date; the issue date when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_date: Option<NaiveDate>,
    /// Lines, where the other system gives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<InvoiceRecordLine>,
    /// The tax per rate, where the other system gives it: each group's base and amount, adding up to `untaxed`
    /// and `tax`. The host keeps them as the invoice's VAT breakdown (a ledger sink posts one VAT account per
    /// rate); absent, the tax is one amount without a rate. Added in ABI 1.4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taxes: Vec<InvoiceRecordTax>,
    /// Where it came from: `tryton account.invoice 42`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_position: Option<String>,
}

/// One line of an [`InvoiceRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRecordLine {
    /// Description.
    pub description: String,
    /// Quantity.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Price per unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// The line's amount without tax.
    #[serde(with = "rust_decimal::serde::str")]
    pub net: Decimal,
}

/// One tax rate of an [`InvoiceRecord`]. Added in ABI 1.4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRecordTax {
    /// The rate as a percent number (`"21"` for 21 %).
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// The amount the rate applies to.
    #[serde(with = "rust_decimal::serde::str")]
    pub base: Decimal,
    /// The tax.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// `lead@1`: a lead captured from a form, mail or import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadRecord {
    /// Person's full name.
    pub name: String,
    /// E-mail address, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Company name, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// Where it came from: `web`, `email`, `ad`, `referral`, `import`, ...
    pub source: String,
    /// The sender's id for this submission (form response id, provider event id, Message-ID).
    /// With `source` it is the dedupe key; a replay with the same id creates nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Free text: the enquiry itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Sales rep to assign, if the source decides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
    /// Any other fields, kept for the audit trail.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// Whether a bank entry is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    /// Booked: final, may settle invoices.
    #[default]
    Booked,
    /// Pending or information only: never marks anything paid.
    Pending,
}

/// What kind of movement a payment record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    /// An ordinary transfer or card payment.
    #[default]
    Transfer,
    /// Money returned to the payer (a refund or a bank return).
    Refund,
    /// A card dispute or chargeback.
    Chargeback,
    /// A provider or bank fee on its own line.
    Fee,
}

/// `payment@1`: one movement of money, normalised from a statement line, export row or provider event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRecord {
    /// Stable dedupe id, unique within the plugin's source: the bank's or provider's transaction id
    /// (camt `AcctSvcrRef`, OFX `FITID`, Stripe event id, MT940 bank reference) or, where the source has none,
    /// a content hash with the position in the file. The same movement seen twice must get the same id.
    pub external_id: String,
    /// Booking date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booked_on: Option<NaiveDate>,
    /// Value date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_date: Option<NaiveDate>,
    /// Signed amount in the account's view: positive is money in (credit), negative is money out (debit).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// ISO 4217 currency code, upper case.
    pub currency: String,
    /// Booked or pending.
    #[serde(default)]
    pub status: EntryStatus,
    /// True when this entry reverses an earlier one (camt `RvslInd`, MT940 `RC`/`RD`).
    #[serde(default)]
    pub reversal: bool,
    /// Transfer, refund, chargeback or fee.
    #[serde(default)]
    pub kind: PaymentKind,
    /// The other party's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty_name: Option<String>,
    /// The other party's account (IBAN or number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty_account: Option<String>,
    /// The account the entry was booked on, when the source names it (camt `Acct/Id`, MT940 `:25:`): a return is
    /// matched to payments of the same account, whichever connector brought them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_account: Option<String>,
    /// Unstructured remittance text; parts cut at a fixed width joined with a line break (so the cut stays
    /// visible to the matcher), other parts with a space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remittance: Option<String>,
    /// Structured creditor reference (ISO 11649 `RF...` or a national one) when the source marks it as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_reference: Option<String>,
    /// The end-to-end id the payer gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end_id: Option<String>,
    /// Invoice numbers or ids the provider's metadata names (Stripe `metadata.invoice`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invoice_refs: Vec<String>,
    /// For a refund, reversal or chargeback: the external id of the original payment, when known. The host looks it
    /// up among the payments of every connector, not only this plugin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_external_id: Option<String>,
    /// Gross amount before provider fees, when known.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub gross: Option<Decimal>,
    /// Provider fee (positive number), when known.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub fee: Option<Decimal>,
    /// Net amount after fees, when known.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub net: Option<Decimal>,
    /// Where in the source this came from: `statement.xml#Stmt[1]/Ntry[3]/TxDtls[2]`, `export.csv#line 17`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_position: Option<String>,
}

impl PaymentRecord {
    /// A booked transfer with only the required fields set.
    pub fn new(
        external_id: impl Into<String>,
        amount: Decimal,
        currency: impl Into<String>,
    ) -> Self {
        PaymentRecord {
            external_id: external_id.into(),
            booked_on: None,
            value_date: None,
            amount,
            currency: currency.into(),
            status: EntryStatus::Booked,
            reversal: false,
            kind: PaymentKind::Transfer,
            counterparty_name: None,
            counterparty_account: None,
            own_account: None,
            remittance: None,
            structured_reference: None,
            end_to_end_id: None,
            invoice_refs: Vec::new(),
            original_external_id: None,
            gross: None,
            fee: None,
            net: None,
            source_position: None,
        }
    }
}

/// serde helpers for `Option<Decimal>` as a decimal string.
pub mod opt_decimal {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize `Some(d)` as `"d"`, `None` as null.
    pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&d.to_string()),
            None => s.serialize_none(),
        }
    }

    /// Deserialize a decimal string (or null).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let raw: Option<String> = Option::deserialize(d)?;
        raw.map(|s| s.parse::<Decimal>().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// serde helpers for raw bytes as standard base64.
pub mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize bytes as base64.
    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(value))
    }

    /// Deserialize base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let raw = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(raw.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// An HTTP header as a name/value pair (names are lower case when the host builds them).
pub type Header = (String, String);

/// `intake`: an inbound HTTP request handed over by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntakeRequest {
    /// `POST`, `GET`, ...
    pub method: String,
    /// Path after `/intake/{instance}`, starting with `/` (may be just `/`).
    pub path: String,
    /// Raw query string without `?`.
    #[serde(default)]
    pub query: String,
    /// Headers in order, names lower case.
    pub headers: Vec<Header>,
    /// The raw body, exactly as received (signatures are computed over it).
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
    /// The peer's address, `ip:port`.
    #[serde(default)]
    pub remote_addr: String,
    /// Unix time in seconds when the host received the request (for signature replay windows).
    pub received_at: i64,
}

impl IntakeRequest {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the host should answer to the sender, when the plugin wants something other than the default
/// (`200` with a small JSON body naming the records created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpReply {
    /// Status code, e.g. `303` for redirect-after-post.
    pub status: u16,
    /// Extra headers, e.g. `location`.
    #[serde(default)]
    pub headers: Vec<Header>,
    /// Body text.
    #[serde(default)]
    pub body: String,
}

/// `intake`: the plugin's verdict on a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum IntakeOutcome {
    /// Accept: commit these records (possibly none, e.g. a honeypot hit), then answer with `reply` if given.
    Accept {
        /// Records to commit before answering.
        records: Vec<Record>,
        /// Optional reply to send after the commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply: Option<HttpReply>,
    },
    /// Reject: nothing is recorded; the host answers `status` with `reason`.
    Reject {
        /// 400 bad request, 401 bad signature, 422 unusable, ...
        status: u16,
        /// Why, as a lowercase phrase.
        reason: String,
    },
}

/// `file`: the first bytes of a candidate file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SniffRequest {
    /// File name without folders.
    pub name: String,
    /// Up to the first 4 KiB of the file.
    #[serde(with = "base64_bytes")]
    pub head: Vec<u8>,
}

/// `file`: how sure the plugin is that a file is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SniffReply {
    /// 0 = not mine, 100 = certainly mine. The host picks the highest.
    pub confidence: u8,
}

/// `file`: a whole file to parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRequest {
    /// File name without folders (used in `source_position`).
    pub name: String,
    /// The file's bytes.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
}

/// `file`: the records in a file. A file with any bad entry must instead fail as a whole
/// with a [`PluginError`] whose `location` names the line or element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParseReply {
    /// Records in file order.
    pub records: Vec<Record>,
}

/// `parse_begin`: open a chunked parse session for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseBegin {
    /// File name without folders (used in `source_position`).
    pub name: String,
}

/// `parse_begin` reply, and the request of `parse_end` and `parse_abort`: names an open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseSessionId {
    /// The session id the plugin handed out, unique within the instance.
    pub session: u64,
}

/// `parse_feed`: the next bytes of the file. A chunk may end anywhere, even inside a line or a
/// multi-byte character; the reply holds the records completed by the bytes fed so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseFeed {
    /// The session from `parse_begin`.
    pub session: u64,
    /// The bytes, in file order.
    #[serde(with = "base64_bytes")]
    pub chunk: Vec<u8>,
}

/// `mail`: one raw RFC 822 message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailRequest {
    /// The message bytes, headers and body.
    #[serde(with = "base64_bytes")]
    pub raw: Vec<u8>,
}

/// `mail`: the plugin's verdict on a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MailOutcome {
    /// The message is not for this plugin.
    NotMine,
    /// The message yields these records.
    Records {
        /// Records to commit.
        records: Vec<Record>,
        /// Attached files to import like a dropped file (a mailed bank statement): the host sniffs and parses each
        /// with the file plugins, with the message named as the source. Added in ABI 1.2; absent means none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<MailAttachment>,
    },
}

/// `mail`: an attached file the plugin wants routed to the file pipeline. Added in ABI 1.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailAttachment {
    /// The attachment's file name (used for sniffing and in `source_position`).
    pub name: String,
    /// The decoded bytes.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    /// The file connector instance to parse it with; absent: the most confident file plugin, by sniffing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
}

/// An outbound HTTP request the host should perform for a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestSpec {
    /// `GET`, `POST`, `PUT`, ...
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Headers to send.
    #[serde(default)]
    pub headers: Vec<Header>,
    /// Body bytes.
    #[serde(default, with = "base64_bytes")]
    pub body: Vec<u8>,
}

/// The response the host got for an [`HttpRequestSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponseSpec {
    /// Status code.
    pub status: u16,
    /// Headers, names lower case.
    #[serde(default)]
    pub headers: Vec<Header>,
    /// Body bytes.
    #[serde(default, with = "base64_bytes")]
    pub body: Vec<u8>,
}

/// `poll`: start a poll from the last committed cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollStart {
    /// Cursor committed with the previous poll's records, `None` the first time.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// `poll`: the response to the request the plugin asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResponse {
    /// The cursor the poll started from.
    #[serde(default)]
    pub cursor: Option<String>,
    /// What the remote system answered.
    pub response: HttpResponseSpec,
}

/// `poll`: records and the cursor to commit with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollReply {
    /// Records to commit.
    pub records: Vec<Record>,
    /// New cursor, committed in the same transaction as the records.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Ask to be polled again at once (more pages).
    #[serde(default)]
    pub more: bool,
}

/// `sink`: one step of a conversation that delivers a domain event.
///
/// The host starts with `response: None`; after each [`SinkStep::Request`] it performs the request (with its own
/// timeout) and calls again with the response and the `state` the plugin returned. Conversation state lives here,
/// so the plugin itself may stay stateless. A request that gets no response (connection refused, timeout) ends the
/// attempt on the host's side: it is retried later without asking the plugin.
///
/// Delivery is at least once: an event may come again after a crash between the peer's answer and the host
/// recording it, so the plugin sends the event id as an idempotency key (or reads before it writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkInput {
    /// The outbox event being delivered: `{"id": 42, "type": "invoice.issued", "at": "<RFC 3339>",
    /// "entity": "invoice", "entity_id": "inv_00000001", "data": {...}}`. `id` never changes between attempts.
    pub event: serde_json::Value,
    /// Which attempt at delivering this event this conversation is, from 1. Added in ABI 1.2.
    #[serde(default)]
    pub attempt: u32,
    /// Unix time in seconds when the host made this call (for signature timestamps). Added in ABI 1.2.
    #[serde(default)]
    pub now: i64,
    /// Opaque state returned by the previous step.
    #[serde(default)]
    pub state: serde_json::Value,
    /// The response to the previous step's request.
    #[serde(default)]
    pub response: Option<HttpResponseSpec>,
}

/// `sink`: what the host should do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum SinkStep {
    /// Perform this request and call again with its response.
    Request {
        /// The request.
        request: HttpRequestSpec,
        /// State to hand back on the next call.
        #[serde(default)]
        state: serde_json::Value,
    },
    /// Wait this many milliseconds (the host caps it at one second), then call again with no response and this
    /// state. For peers that need a pause between a read and a write (hledger-web only notices a change to its
    /// journal file whose modification time is later than its last read, and file times are coarse).
    Wait {
        /// Milliseconds to wait.
        millis: u64,
        /// State to hand back on the next call.
        #[serde(default)]
        state: serde_json::Value,
    },
    /// Delivered.
    Done,
    /// Not delivered now; try the whole conversation again later.
    RetryLater {
        /// Seconds to wait at least (a `Retry-After` the peer sent); 0 follows the host's retry schedule.
        after_secs: u64,
        /// Why.
        reason: String,
    },
    /// Cannot be delivered (the peer refused it for good, e.g. 400 or 401); park the event as a dead letter
    /// for a person to look at.
    Failed {
        /// Why.
        reason: String,
    },
    /// The plugin does not care about this event type.
    Ignored,
}
