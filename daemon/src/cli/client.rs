//! The people-facing CLI client: every `settled` subcommand that talks to the running daemon over its HTTP JSON API.
//!
//! A command becomes [`ApiRequest`]s through the pure [`request_for`], which is where the mapping from flags to
//! the API lives (and is tested). [`execute`] sends them with the API token and prints the answer as a table or a
//! key/value block (`render`), or exactly as the daemon sent it with `--json`. Errors come back as `anyhow` errors
//! whose message is the daemon's own (`<message> (field <field>)`); the caller prints them as `error: {err:#}`.

mod render;
mod sync;
mod upload;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::NaiveDate;
use clap::{Args, Subcommand, ValueEnum};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::cli::table::terminal_width;

/// Where the daemon listens unless `--url` or `SETTLED_URL` says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7878";
/// Name of the token file `settled init` writes into the data directory.
pub const TOKEN_FILE: &str = "api-token";

/// How long an ordinary request may take; uploads are exempt because big statements legitimately take longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `events --follow` asks for new events when the last page was not full.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
const FOLLOW_PAGE: u32 = 100;
/// The page size the API uses when none is asked for.
const API_DEFAULT_PAGE: u32 = 100;
/// Page size for counting whole lists in `status` (the API's maximum).
const COUNT_PAGE: u32 = 1000;

/// Options shared by every client subcommand: where the daemon is, how to authenticate, how to print.
/// Its `Debug` output leaves the token out, so logging the options cannot leak it.
#[derive(Clone, Args)]
#[command(next_help_heading = "Daemon connection")]
pub struct ClientOpts {
    /// URL of the running daemon's HTTP API
    #[arg(long, global = true, env = "SETTLED_URL", default_value = DEFAULT_URL, value_name = "URL")]
    pub url: String,

    /// API token [default: the `api-token` file in the data directory, written by `settled init`]
    #[arg(
        long,
        global = true,
        env = "SETTLED_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Data directory [default: $XDG_DATA_HOME/settled or ~/.local/share/settled]
    #[arg(long, global = true, env = "SETTLED_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Print the daemon's JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
}

impl std::fmt::Debug for ClientOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOpts")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("data_dir", &self.data_dir)
            .field("json", &self.json)
            .finish()
    }
}

impl ClientOpts {
    /// The data directory: `--data-dir`/`SETTLED_DATA_DIR`, else [`default_data_dir`].
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.clone().or_else(default_data_dir)
    }
}

/// `$XDG_DATA_HOME/settled`, else `~/.local/share/settled`; `None` when neither variable is set.
pub fn default_data_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from);
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(dir) = xdg.filter(|d| d.is_absolute()) {
        return Some(dir.join("settled"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    Some(home.join(".local").join("share").join("settled"))
}

/// `GET path` from the running daemon with the API token, waiting up to `timeout` (for answers that take long on a
/// big store, like `/v1/check`); its JSON answer (errors are the daemon's own message).
pub async fn get_json(opts: &ClientOpts, path: &str, timeout: Duration) -> anyhow::Result<Value> {
    let mut client = Client::new(opts)?;
    client.timeout = timeout;
    Ok(client.send(&ApiRequest::get(path.to_string())).await?.value)
}

/// The subcommands that talk to a running daemon.
#[derive(Debug, Clone, Subcommand)]
pub enum ApiCommand {
    /// List, capture, qualify and convert leads
    Leads(LeadsArgs),
    /// List and show accounts (companies) with their credit balances
    Accounts(ReadArgs),
    /// List and show contacts (people at accounts)
    Contacts(ReadArgs),
    /// List and show opportunities, move them through stages, log activities
    #[command(visible_alias = "opps")]
    Opportunities(OpportunitiesArgs),
    /// Create, send, accept, reject and revise quotes
    Quotes(QuotesArgs),
    /// List, show and create orders from accepted quotes
    Orders(OrdersArgs),
    /// Create, issue, void and credit invoices; see what is overdue
    Invoices(InvoicesArgs),
    /// Record, list and reverse payments
    Payments(PaymentsArgs),
    /// Read the audit log, optionally following new events as they happen
    Events(EventsArgs),
    /// Payments the reconciler could not place on its own, with ranked suggestions
    Review(ReviewArgs),
    /// Upload bank statements, exports or payment notices to the daemon and reconcile them
    Import(ImportArgs),
    /// Uploads and where they are: running, resumed (after a restart), finished or failed, with their counts
    Imports(ReadArgs),
    /// Show loaded plugins and their instances: state, calls, errors, latency
    Plugins,
    /// Outbox delivery to sink connectors: lag, retries, dead letters; pause, resume, replay, retry
    Outbox(OutboxArgs),
    /// Compare invoices with an accounting package a connector keeps in step (`settled sync check tryton`)
    Sync(sync::SyncArgs),
    /// Check that the daemon is up and show what needs attention
    Status,
}

/// `settled outbox`: shows every sink when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  settled outbox
  settled outbox pause erp-webhook
  settled outbox retry erp-webhook 1042
  settled outbox replay erp-webhook --from 1000")]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub command: Option<OutboxCommand>,
}

/// `settled outbox ...`
#[derive(Debug, Clone, Subcommand)]
pub enum OutboxCommand {
    /// Stop delivering to a sink; events keep queueing and go out on `resume`
    Pause {
        /// Sink connector name
        sink: String,
    },
    /// Deliver to a paused sink again, from where it stood
    Resume {
        /// Sink connector name
        sink: String,
    },
    /// Send a dead letter again now, with a fresh retry schedule
    Retry {
        /// Sink connector name
        sink: String,
        /// The dead letter's event id
        event: u64,
    },
    /// Deliver every event from EVENT on to the sink again (receivers deduplicate by webhook-id)
    Replay {
        /// Sink connector name
        sink: String,
        /// First event id to deliver again
        #[arg(long, value_name = "EVENT")]
        from: u64,
    },
}

/// `settled leads`: lists leads when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  settled leads --status new
  settled leads add --name 'Ada Lovelace' --email ada@example.com --company 'Analytical Ltd' --source referral
  settled leads status LEAD_ID qualified
  settled leads convert LEAD_ID --opportunity-name 'Engines 2026' --value 25000.00 --currency EUR --expected-close 2026-06-30"
)]
pub struct LeadsArgs {
    #[command(subcommand)]
    pub command: Option<LeadsCommand>,
    #[command(flatten)]
    pub list: LeadListArgs,
}

/// `settled leads ...`
#[derive(Debug, Clone, Subcommand)]
pub enum LeadsCommand {
    /// List leads (the default)
    List(LeadListArgs),
    /// Capture a lead; a lead with the same email or source + external id is merged, not duplicated
    Add(LeadAddArgs),
    /// Show one lead with its score and the reasons for it
    Show(IdArg),
    /// Move a lead to another status
    Status {
        /// Lead id
        id: String,
        /// New status (a lead becomes `converted` only through `leads convert`)
        #[arg(value_enum)]
        status: LeadStatus,
    },
    /// Convert a lead into an account, a contact and an opportunity in one step
    Convert(LeadConvertArgs),
}

/// Filters for listing leads.
#[derive(Debug, Clone, Default, Args)]
pub struct LeadListArgs {
    /// Only leads with this status
    #[arg(long, value_enum)]
    pub status: Option<LeadStatus>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Fields of a captured lead.
#[derive(Debug, Clone, Args)]
pub struct LeadAddArgs {
    /// Person's name (derived from the email when left out)
    #[arg(long)]
    pub name: Option<String>,
    /// Email address; an open lead with the same email is merged instead of duplicated
    #[arg(long)]
    pub email: Option<String>,
    /// Phone number
    #[arg(long)]
    pub phone: Option<String>,
    /// Company name; conversion reuses an account with the same name
    #[arg(long)]
    pub company: Option<String>,
    /// Where the lead came from: web, email, ad, referral, import, ...
    #[arg(long)]
    pub source: Option<String>,
    /// Sales rep the lead is assigned to
    #[arg(long)]
    pub assigned_to: Option<String>,
    /// The lead's id in the system it came from (used to recognise repeats)
    #[arg(long)]
    pub external_id: Option<String>,
    /// Free text, e.g. what the person asked for
    #[arg(long)]
    pub message: Option<String>,
}

/// The opportunity a converted lead becomes.
#[derive(Debug, Clone, Args)]
pub struct LeadConvertArgs {
    /// Lead id
    pub id: String,
    /// Name of the new opportunity
    #[arg(long)]
    pub opportunity_name: String,
    /// Expected value, e.g. 25000.00
    #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
    pub value: Decimal,
    /// ISO 4217 currency, e.g. EUR
    #[arg(long, value_parser = parse_currency)]
    pub currency: String,
    /// Expected close date, YYYY-MM-DD
    #[arg(long, value_parser = parse_date)]
    pub expected_close: Option<NaiveDate>,
}

/// A resource id as the only argument.
#[derive(Debug, Clone, Args)]
pub struct IdArg {
    /// Resource id
    pub id: String,
}

/// A state change: the resource id and an optional reason for the audit log.
#[derive(Debug, Clone, Args)]
pub struct ReasonArgs {
    /// Resource id
    pub id: String,
    /// Why, kept with the change in the audit log (`settled events`)
    #[arg(long)]
    pub reason: Option<String>,
}

impl ReasonArgs {
    /// The request body: `{"reason": ...}` when a reason was given, else `{}`.
    fn body(&self) -> Value {
        let mut body = Map::new();
        put(&mut body, "reason", &self.reason);
        Value::Object(body)
    }
}

/// Paging of a list, as the API pages: by id, in id order.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Only items whose id sorts after this one (to continue a listing)
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
    /// At most this many items [default: 100; at most 1000]
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

/// `settled accounts|contacts`: lists when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReadArgs {
    #[command(subcommand)]
    pub command: Option<ReadCommand>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Read-only resources.
#[derive(Debug, Clone, Subcommand)]
pub enum ReadCommand {
    /// List them (the default)
    List(PageArgs),
    /// Show one
    Show(IdArg),
}

/// `settled opportunities`: lists when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  settled opportunities stage OPP_ID negotiation --probability 80
  settled opportunities activity OPP_ID --kind call --text 'Budget confirmed, decision in May'"
)]
pub struct OpportunitiesArgs {
    #[command(subcommand)]
    pub command: Option<OpportunitiesCommand>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// `settled opportunities ...`
#[derive(Debug, Clone, Subcommand)]
pub enum OpportunitiesCommand {
    /// List opportunities (the default)
    List(PageArgs),
    /// Show one opportunity with its activities
    Show(IdArg),
    /// Move an opportunity to another stage
    Stage {
        /// Opportunity id
        id: String,
        /// New stage
        #[arg(value_enum)]
        stage: Stage,
        /// Win probability in percent [default: the stage's]
        #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
        probability: Option<Decimal>,
    },
    /// Log a call, demo, meeting or note
    Activity {
        /// Opportunity id
        id: String,
        /// What happened
        #[arg(long, value_enum)]
        kind: ActivityKind,
        /// What was said or agreed
        #[arg(long)]
        text: String,
        /// Who did it [default: nobody recorded]
        #[arg(long)]
        by: Option<String>,
    },
}

/// `settled quotes`: lists when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  settled quotes create --opportunity OPP_ID --currency EUR --valid-until 2026-04-30 \\
      --line 'Consulting day;3;1200.00;20' --line 'Licence;1;499.00;20;10%' --discount 5%
  settled quotes create --from-json quote.json
  settled quotes send QUOTE_ID
  settled quotes revise QUOTE_ID --line 'Consulting day;2;1200.00;20'"
)]
pub struct QuotesArgs {
    #[command(subcommand)]
    pub command: Option<QuotesCommand>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// `settled quotes ...`
#[derive(Debug, Clone, Subcommand)]
pub enum QuotesCommand {
    /// List quotes (the default)
    List(PageArgs),
    /// Show one quote with its lines, tax breakdown and totals
    Show(IdArg),
    /// Create a draft quote for an opportunity
    Create(QuoteCreateArgs),
    /// Send a draft quote to the customer
    Send(ReasonArgs),
    /// Record that the customer accepted a sent quote
    Accept(ReasonArgs),
    /// Record that the customer rejected a sent quote (say why with --reason)
    Reject(ReasonArgs),
    /// Create a new draft revision that supersedes this quote
    Revise(QuoteReviseArgs),
}

/// A new quote, from flags or from a JSON file holding the request body.
#[derive(Debug, Clone, Args)]
pub struct QuoteCreateArgs {
    /// Opportunity id
    #[arg(long, required_unless_present = "from_json")]
    pub opportunity: Option<String>,
    /// ISO 4217 currency, e.g. EUR [default: the opportunity's]
    #[arg(long, value_parser = parse_currency)]
    pub currency: Option<String>,
    /// Last day the quote can be accepted, YYYY-MM-DD [default: in 30 days]
    #[arg(long, value_parser = parse_date)]
    pub valid_until: Option<NaiveDate>,
    /// Discount on the whole quote: a percent ("5%") or an amount ("100.00")
    #[arg(long, value_parser = parse_discount)]
    pub discount: Option<LineDiscount>,
    /// A line: "description;quantity;unit_price;tax_rate[;discount]", the discount as a percent
    /// ("10%") or an amount ("25.00"); repeat for more lines
    #[arg(long = "line", value_name = "LINE", value_parser = parse_quote_line, required_unless_present = "from_json")]
    pub lines: Vec<QuoteLine>,
    /// Send this file's JSON as the request body (`{"opportunity_id", "currency", "valid_until", "lines": [...]}`)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["opportunity", "currency", "valid_until", "lines", "discount"])]
    pub from_json: Option<PathBuf>,
}

/// A revision, optionally with new lines or validity.
#[derive(Debug, Clone, Args)]
pub struct QuoteReviseArgs {
    /// Quote id
    pub id: String,
    /// Replacement lines, as for `quotes create` [default: the current lines]
    #[arg(long = "line", value_name = "LINE", value_parser = parse_quote_line)]
    pub lines: Vec<QuoteLine>,
    /// New last day of validity, YYYY-MM-DD
    #[arg(long, value_parser = parse_date)]
    pub valid_until: Option<NaiveDate>,
    /// New discount on the whole quote: a percent ("5%") or an amount ("100.00")
    #[arg(long, value_parser = parse_discount)]
    pub discount: Option<LineDiscount>,
}

/// One quote line parsed from `--line`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuoteLine {
    pub description: String,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    /// Percent, e.g. 20 for 20% VAT.
    pub tax_rate: Decimal,
    pub discount: Option<LineDiscount>,
}

/// A discount as typed: `10%` or an amount.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LineDiscount {
    Percent(Decimal),
    Amount(Decimal),
}

/// `settled orders`: lists when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OrdersArgs {
    #[command(subcommand)]
    pub command: Option<OrdersCommand>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// `settled orders ...`
#[derive(Debug, Clone, Subcommand)]
pub enum OrdersCommand {
    /// List orders (the default)
    List(PageArgs),
    /// Show one order with its lines and what remains to invoice
    Show(IdArg),
    /// Create an order from an accepted quote
    Create {
        /// Accepted quote id
        #[arg(long)]
        quote: String,
        /// Delivery terms, e.g. an Incoterm
        #[arg(long)]
        delivery_terms: Option<String>,
        /// Internal notes
        #[arg(long)]
        notes: Option<String>,
        /// YYYY-MM-DD [default: today]
        #[arg(long, value_parser = parse_date)]
        order_date: Option<NaiveDate>,
    },
}

/// `settled invoices`: lists when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  settled invoices --overdue
  settled invoices create --order ORDER_ID --line 1:2 --line 3:1
  settled invoices issue INVOICE_ID --due-date 2026-05-31
  settled invoices credit INVOICE_ID --amount 100.00"
)]
pub struct InvoicesArgs {
    #[command(subcommand)]
    pub command: Option<InvoicesCommand>,
    #[command(flatten)]
    pub list: InvoiceListArgs,
}

/// `settled invoices ...`
#[derive(Debug, Clone, Subcommand)]
pub enum InvoicesCommand {
    /// List invoices (the default)
    List(InvoiceListArgs),
    /// Show one invoice with lines, taxes, allocations and balance
    Show(IdArg),
    /// Create a draft invoice from an order, for all that remains or for chosen line quantities
    Create {
        /// Order id
        #[arg(long)]
        order: String,
        /// Invoice only this quantity of an order line, as LINE_NO:QUANTITY; repeat for more lines
        #[arg(long = "line", value_name = "LINE_NO:QTY", value_parser = parse_invoice_line)]
        lines: Vec<InvoiceLineSelection>,
    },
    /// Issue a draft invoice: it gets its number and RF reference
    Issue {
        /// Invoice id
        id: String,
        /// YYYY-MM-DD [default: today]
        #[arg(long, value_parser = parse_date)]
        issue_date: Option<NaiveDate>,
        /// YYYY-MM-DD [default: from the payment terms]
        #[arg(long, value_parser = parse_date)]
        due_date: Option<NaiveDate>,
    },
    /// Void an invoice nothing has been paid on (say why with --reason)
    Void(ReasonArgs),
    /// Create a credit note against an issued invoice
    Credit {
        /// Invoice id
        id: String,
        /// Amount to credit [default: everything not yet credited]
        #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
        amount: Option<Decimal>,
    },
}

/// Filters for listing invoices.
#[derive(Debug, Clone, Default, Args)]
pub struct InvoiceListArgs {
    /// Only overdue invoices (same as --status overdue)
    #[arg(long, conflicts_with = "status")]
    pub overdue: bool,
    /// Only invoices with this payment status
    #[arg(long, value_enum)]
    pub status: Option<PaymentStatus>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// `--line LINE_NO:QTY` of `invoices create`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvoiceLineSelection {
    pub line_no: u32,
    pub quantity: Decimal,
}

/// `settled payments`: lists when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  settled payments record --amount 1440.00 --currency EUR --received-on 2026-04-02 \\
      --payer 'Analytical Ltd' --reference 'RF18INV2026001' --allocate INVOICE_ID
  settled payments record --amount 500.00 --currency EUR --allocate INV_A:300.00 --allocate INV_B:200.00
  settled payments reverse PAYMENT_ID
  settled payments reverse PAYMENT_ID --amount 100.00"
)]
pub struct PaymentsArgs {
    #[command(subcommand)]
    pub command: Option<PaymentsCommand>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// `settled payments ...`
#[derive(Debug, Clone, Subcommand)]
pub enum PaymentsCommand {
    /// List payments (the default)
    List(PageArgs),
    /// Show one payment with its allocations
    Show(IdArg),
    /// Record a payment received, optionally allocating it to invoices
    Record(PaymentRecordArgs),
    /// Reverse a payment: what it paid is reopened, and what its credit paid
    Reverse {
        /// Payment id
        id: String,
        /// Undo only this much, newest part first (credit it left, then its newest allocations)
        /// [default: everything left of it]
        #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
        amount: Option<Decimal>,
    },
}

/// A payment received.
#[derive(Debug, Clone, Args)]
pub struct PaymentRecordArgs {
    /// Amount received, e.g. 1440.00
    // Negative amounts go to the daemon, whose error says what is allowed, rather than
    // being mistaken for flags here.
    #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
    pub amount: Decimal,
    /// ISO 4217 currency, e.g. EUR
    #[arg(long, value_parser = parse_currency)]
    pub currency: String,
    /// Date the money arrived, YYYY-MM-DD [default: today]
    #[arg(long, value_parser = parse_date)]
    pub received_on: Option<NaiveDate>,
    /// Who paid (name as on the statement)
    #[arg(long)]
    pub payer: Option<String>,
    /// Payment reference or remittance text
    #[arg(long)]
    pub reference: Option<String>,
    /// The payment's id at the bank or provider (used to recognise repeats)
    #[arg(long)]
    pub external_id: Option<String>,
    /// Allocate to an invoice, as INVOICE_ID or INVOICE_ID:AMOUNT; repeat for more invoices.
    /// Anything not allocated goes to the customer's credit balance. Without any, the daemon
    /// reconciles the payment by itself, as it does for imported statements
    #[arg(long = "allocate", value_name = "INVOICE_ID[:AMOUNT]", value_parser = parse_allocation)]
    pub allocations: Vec<Allocation>,
}

/// `INVOICE_ID[:AMOUNT]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub invoice_id: String,
    pub amount: Option<Decimal>,
}

/// `settled events`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  settled events --limit 20
  settled events --after 1200 --follow")]
pub struct EventsArgs {
    /// Only events after this event id
    #[arg(long, value_name = "ID")]
    pub after: Option<u64>,
    /// At most this many events (per page when following)
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Keep printing new events as they happen, until Ctrl-C
    #[arg(long, short)]
    pub follow: bool,
}

/// `settled review`: lists when no subcommand is given.
#[derive(Debug, Clone, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  settled review
  settled review show ITEM_ID
  settled review allocate ITEM_ID --invoice INVOICE_ID
  settled review allocate ITEM_ID --invoice INV_A:120.00 --invoice INV_B:80.00
  settled review reverse ITEM_ID --payment PAYMENT_ID
  settled review dismiss ITEM_ID --reason 'refund from supplier, not a customer payment'"
)]
pub struct ReviewArgs {
    #[command(subcommand)]
    pub command: Option<ReviewCommand>,
    #[command(flatten)]
    pub list: ReviewListArgs,
}

/// Which review items to list.
#[derive(Debug, Clone, Default, Args)]
pub struct ReviewListArgs {
    /// Include items already allocated or dismissed
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub page: PageArgs,
}

/// `settled review ...`
#[derive(Debug, Clone, Subcommand)]
pub enum ReviewCommand {
    /// List payments waiting for review (the default)
    List(ReviewListArgs),
    /// Show one item: the payment, why it waits, and ranked suggestions
    Show(IdArg),
    /// Allocate the payment by hand
    Allocate {
        /// Review item id
        id: String,
        /// INVOICE_ID or INVOICE_ID:AMOUNT; repeat for more invoices
        #[arg(long = "invoice", value_name = "INVOICE_ID[:AMOUNT]", value_parser = parse_allocation, required = true)]
        allocations: Vec<Allocation>,
    },
    /// Resolve money going back by naming the payment it reverses: that much of the payment is undone
    Reverse {
        /// Review item id
        id: String,
        /// The payment the return undoes (see the item's suggestions)
        #[arg(long, value_name = "PAYMENT_ID")]
        payment: String,
    },
    /// Take the item off the queue without allocating it
    Dismiss {
        /// Review item id
        id: String,
        /// Why it is dismissed, kept in the audit log
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `settled import`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "The daemon picks the plugin by looking at each file; --plugin forces one.
A file the daemon rejects records nothing; the others are still imported.

Examples:
  settled import statement-2026-03.xml
  settled import --plugin bank-csv-main export1.csv export2.csv"
)]
pub struct ImportArgs {
    /// Files to import
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Plugin instance to parse the files with, instead of sniffing
    #[arg(long, value_name = "INSTANCE")]
    pub plugin: Option<String>,
}

/// Lead statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum LeadStatus {
    New,
    Contacted,
    Qualified,
    Converted,
    Disqualified,
}

/// Opportunity stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Stage {
    Prospecting,
    Qualification,
    Proposal,
    Negotiation,
    ClosedWon,
    ClosedLost,
}

/// Kinds of opportunity activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ActivityKind {
    Call,
    Demo,
    Meeting,
    Note,
}

/// Invoice payment statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum PaymentStatus {
    Draft,
    Unpaid,
    PartiallyPaid,
    Paid,
    Overdue,
    Void,
    Refunded,
}

/// HTTP method of an [`ApiRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// What an [`ApiRequest`] sends.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestBody {
    /// Nothing (GET).
    Empty,
    /// This JSON value.
    Json(Value),
    /// The JSON in this file, read when sending.
    JsonFile(PathBuf),
    /// This file's bytes, streamed as `application/octet-stream`.
    Upload(PathBuf),
}

/// One HTTP call a command makes; `path` starts with `/` and is already percent-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub body: RequestBody,
}

impl ApiRequest {
    fn get(path: String) -> ApiRequest {
        ApiRequest {
            method: Method::Get,
            path,
            body: RequestBody::Empty,
        }
    }

    fn post(path: String, body: Value) -> ApiRequest {
        ApiRequest {
            method: Method::Post,
            path,
            body: RequestBody::Json(body),
        }
    }
}

/// Runs one client subcommand against the daemon, printing to stdout (and progress to stderr).
///
/// An error's message is complete as it is (e.g. `amount must be positive (field amount)`); print it as
/// `error: {err:#}` and exit 1. `import` has already printed each failed file's error by then.
pub async fn execute(cmd: ApiCommand, opts: &ClientOpts) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let width = if std::io::IsTerminal::is_terminal(&out) {
        terminal_width()
    } else {
        None
    };
    let output = Output {
        out: &mut out,
        err: &mut err,
        width,
        poll: FOLLOW_INTERVAL,
    };
    run(&cmd, opts, output).await
}

/// The requests `cmd` makes, in order. Pure: files named by the command are only read when sending.
/// `import` makes one request per file; `status` asks for health and then the lists it counts (counting
/// pages on with `&after=`); `events --follow` starts with the request shown and continues after the
/// last event it got.
pub fn request_for(cmd: &ApiCommand) -> Vec<ApiRequest> {
    match cmd {
        ApiCommand::Leads(args) => vec![leads_request(args)],
        ApiCommand::Accounts(args) => vec![read_request("accounts", args)],
        ApiCommand::Contacts(args) => vec![read_request("contacts", args)],
        ApiCommand::Opportunities(args) => vec![opportunities_request(args)],
        ApiCommand::Quotes(args) => vec![quotes_request(args)],
        ApiCommand::Orders(args) => vec![orders_request(args)],
        ApiCommand::Invoices(args) => vec![invoices_request(args)],
        ApiCommand::Payments(args) => vec![payments_request(args)],
        ApiCommand::Events(args) => {
            // Following pages through the log, so it always asks for a bounded page.
            let limit = match args.follow {
                true => Some(args.limit.unwrap_or(FOLLOW_PAGE)),
                false => args.limit,
            };
            vec![ApiRequest::get(events_path(args.after, limit))]
        }
        ApiCommand::Review(args) => vec![review_request(args)],
        ApiCommand::Import(args) => args
            .files
            .iter()
            .map(|file| ApiRequest {
                method: Method::Post,
                path: import_path(file, args.plugin.as_deref()),
                body: RequestBody::Upload(file.clone()),
            })
            .collect(),
        ApiCommand::Imports(args) => vec![read_request("imports", args)],
        ApiCommand::Plugins => vec![ApiRequest::get("/v1/plugins".into())],
        ApiCommand::Outbox(args) => vec![outbox_request(args)],
        ApiCommand::Sync(args) => vec![sync::request(args)],
        ApiCommand::Status => {
            let count_page = PageArgs {
                after: None,
                limit: Some(COUNT_PAGE),
            };
            vec![
                ApiRequest::get("/healthz".into()),
                ApiRequest::get(list_path("review", &[], &count_page)),
                ApiRequest::get(list_path(
                    "invoices",
                    &[("payment_status", "overdue".into())],
                    &count_page,
                )),
                ApiRequest::get("/v1/plugins".into()),
            ]
        }
    }
}

/// The paging of `cmd` when it lists a collection (so `None` for every other command).
fn list_page(cmd: &ApiCommand) -> Option<&PageArgs> {
    match cmd {
        ApiCommand::Leads(a) => match &a.command {
            None => Some(&a.list.page),
            Some(LeadsCommand::List(l)) => Some(&l.page),
            Some(_) => None,
        },
        ApiCommand::Accounts(a) | ApiCommand::Contacts(a) | ApiCommand::Imports(a) => {
            match &a.command {
                None => Some(&a.page),
                Some(ReadCommand::List(p)) => Some(p),
                Some(_) => None,
            }
        }
        ApiCommand::Opportunities(a) => match &a.command {
            None => Some(&a.page),
            Some(OpportunitiesCommand::List(p)) => Some(p),
            Some(_) => None,
        },
        ApiCommand::Quotes(a) => match &a.command {
            None => Some(&a.page),
            Some(QuotesCommand::List(p)) => Some(p),
            Some(_) => None,
        },
        ApiCommand::Orders(a) => match &a.command {
            None => Some(&a.page),
            Some(OrdersCommand::List(p)) => Some(p),
            Some(_) => None,
        },
        ApiCommand::Invoices(a) => match &a.command {
            None => Some(&a.list.page),
            Some(InvoicesCommand::List(l)) => Some(&l.page),
            Some(_) => None,
        },
        ApiCommand::Payments(a) => match &a.command {
            None => Some(&a.page),
            Some(PaymentsCommand::List(p)) => Some(p),
            Some(_) => None,
        },
        ApiCommand::Review(a) => match &a.command {
            None => Some(&a.list.page),
            Some(ReviewCommand::List(l)) => Some(&l.page),
            Some(_) => None,
        },
        ApiCommand::Events(_)
        | ApiCommand::Import(_)
        | ApiCommand::Plugins
        | ApiCommand::Outbox(_)
        | ApiCommand::Sync(_)
        | ApiCommand::Status => None,
    }
}

/// `/v1/{collection}` with filters and paging as query parameters.
fn list_path(collection: &str, filters: &[(&str, String)], page: &PageArgs) -> String {
    let mut query: Vec<String> = filters
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if let Some(after) = &page.after {
        query.push(format!("after={}", encode(after)));
    }
    if let Some(limit) = page.limit {
        query.push(format!("limit={limit}"));
    }
    match query.is_empty() {
        true => format!("/v1/{collection}"),
        false => format!("/v1/{collection}?{}", query.join("&")),
    }
}

fn show_path(collection: &str, id: &str) -> String {
    format!("/v1/{collection}/{}", encode(id))
}

fn action_path(collection: &str, id: &str, action: &str) -> String {
    format!("/v1/{collection}/{}/{action}", encode(id))
}

fn outbox_request(args: &OutboxArgs) -> ApiRequest {
    let action = |sink: &str, action: &str| format!("/v1/outbox/{}/{action}", encode(sink));
    match &args.command {
        None => ApiRequest::get("/v1/outbox".into()),
        Some(OutboxCommand::Pause { sink }) => ApiRequest::post(action(sink, "pause"), json!({})),
        Some(OutboxCommand::Resume { sink }) => ApiRequest::post(action(sink, "resume"), json!({})),
        Some(OutboxCommand::Retry { sink, event }) => {
            ApiRequest::post(action(sink, &format!("retry/{event}")), json!({}))
        }
        Some(OutboxCommand::Replay { sink, from }) => {
            ApiRequest::post(action(sink, "replay"), json!({ "from": from }))
        }
    }
}

fn leads_request(args: &LeadsArgs) -> ApiRequest {
    let list = |filter: &LeadListArgs| {
        let status: Vec<(&str, String)> = filter
            .status
            .iter()
            .map(|s| ("status", wire_name(s)))
            .collect();
        ApiRequest::get(list_path("leads", &status, &filter.page))
    };
    match &args.command {
        None => list(&args.list),
        Some(LeadsCommand::List(filter)) => list(filter),
        Some(LeadsCommand::Add(lead)) => {
            let mut body = Map::new();
            put(&mut body, "name", &lead.name);
            put(&mut body, "email", &lead.email);
            put(&mut body, "phone", &lead.phone);
            put(&mut body, "company", &lead.company);
            put(&mut body, "source", &lead.source);
            put(&mut body, "assigned_to", &lead.assigned_to);
            put(&mut body, "external_id", &lead.external_id);
            put(&mut body, "message", &lead.message);
            ApiRequest::post("/v1/leads".into(), Value::Object(body))
        }
        Some(LeadsCommand::Show(IdArg { id })) => ApiRequest::get(show_path("leads", id)),
        Some(LeadsCommand::Status { id, status }) => ApiRequest::post(
            action_path("leads", id, "status"),
            json!({ "status": wire_name(status) }),
        ),
        Some(LeadsCommand::Convert(c)) => {
            let mut opportunity = Map::new();
            opportunity.insert("name".into(), Value::String(c.opportunity_name.clone()));
            opportunity.insert("value".into(), Value::String(c.value.to_string()));
            opportunity.insert("currency".into(), Value::String(c.currency.clone()));
            put(
                &mut opportunity,
                "expected_close",
                &c.expected_close.map(date_string),
            );
            ApiRequest::post(
                action_path("leads", &c.id, "convert"),
                json!({ "opportunity": opportunity }),
            )
        }
    }
}

fn read_request(collection: &str, args: &ReadArgs) -> ApiRequest {
    match &args.command {
        None => ApiRequest::get(list_path(collection, &[], &args.page)),
        Some(ReadCommand::List(page)) => ApiRequest::get(list_path(collection, &[], page)),
        Some(ReadCommand::Show(IdArg { id })) => ApiRequest::get(show_path(collection, id)),
    }
}

fn opportunities_request(args: &OpportunitiesArgs) -> ApiRequest {
    match &args.command {
        None => ApiRequest::get(list_path("opportunities", &[], &args.page)),
        Some(OpportunitiesCommand::List(page)) => {
            ApiRequest::get(list_path("opportunities", &[], page))
        }
        Some(OpportunitiesCommand::Show(IdArg { id })) => {
            ApiRequest::get(show_path("opportunities", id))
        }
        Some(OpportunitiesCommand::Stage {
            id,
            stage,
            probability,
        }) => {
            let mut body = Map::new();
            body.insert("stage".into(), Value::String(wire_name(stage)));
            put(
                &mut body,
                "probability",
                &probability.map(|p| p.to_string()),
            );
            ApiRequest::post(
                action_path("opportunities", id, "stage"),
                Value::Object(body),
            )
        }
        Some(OpportunitiesCommand::Activity { id, kind, text, by }) => {
            let mut body = Map::new();
            body.insert("kind".into(), Value::String(wire_name(kind)));
            body.insert("text".into(), Value::String(text.clone()));
            put(&mut body, "by", by);
            ApiRequest::post(
                action_path("opportunities", id, "activities"),
                Value::Object(body),
            )
        }
    }
}

fn quotes_request(args: &QuotesArgs) -> ApiRequest {
    let action = |args: &ReasonArgs, action: &str| {
        ApiRequest::post(action_path("quotes", &args.id, action), args.body())
    };
    match &args.command {
        None => ApiRequest::get(list_path("quotes", &[], &args.page)),
        Some(QuotesCommand::List(page)) => ApiRequest::get(list_path("quotes", &[], page)),
        Some(QuotesCommand::Show(IdArg { id })) => ApiRequest::get(show_path("quotes", id)),
        Some(QuotesCommand::Create(create)) => match &create.from_json {
            Some(file) => ApiRequest {
                method: Method::Post,
                path: "/v1/quotes".into(),
                body: RequestBody::JsonFile(file.clone()),
            },
            None => {
                let mut body = Map::new();
                put(&mut body, "opportunity_id", &create.opportunity);
                put(&mut body, "currency", &create.currency);
                put(
                    &mut body,
                    "valid_until",
                    &create.valid_until.map(date_string),
                );
                body.insert("lines".into(), quote_lines_json(&create.lines));
                put_discount(&mut body, create.discount);
                ApiRequest::post("/v1/quotes".into(), Value::Object(body))
            }
        },
        Some(QuotesCommand::Send(args)) => action(args, "send"),
        Some(QuotesCommand::Accept(args)) => action(args, "accept"),
        Some(QuotesCommand::Reject(args)) => action(args, "reject"),
        Some(QuotesCommand::Revise(revise)) => {
            let mut body = Map::new();
            if !revise.lines.is_empty() {
                body.insert("lines".into(), quote_lines_json(&revise.lines));
            }
            put(
                &mut body,
                "valid_until",
                &revise.valid_until.map(date_string),
            );
            put_discount(&mut body, revise.discount);
            ApiRequest::post(
                action_path("quotes", &revise.id, "revise"),
                Value::Object(body),
            )
        }
    }
}

/// `discount_percent` or `discount_amount`, the API's two spellings of a discount.
fn put_discount(obj: &mut Map<String, Value>, discount: Option<LineDiscount>) {
    match discount {
        Some(LineDiscount::Percent(p)) => {
            obj.insert("discount_percent".into(), Value::String(p.to_string()));
        }
        Some(LineDiscount::Amount(a)) => {
            obj.insert("discount_amount".into(), Value::String(a.to_string()));
        }
        None => {}
    }
}

fn quote_lines_json(lines: &[QuoteLine]) -> Value {
    let lines = lines
        .iter()
        .map(|line| {
            let mut obj = Map::new();
            obj.insert(
                "description".into(),
                Value::String(line.description.clone()),
            );
            obj.insert("quantity".into(), Value::String(line.quantity.to_string()));
            obj.insert(
                "unit_price".into(),
                Value::String(line.unit_price.to_string()),
            );
            put_discount(&mut obj, line.discount);
            obj.insert("tax_rate".into(), Value::String(line.tax_rate.to_string()));
            Value::Object(obj)
        })
        .collect();
    Value::Array(lines)
}

fn orders_request(args: &OrdersArgs) -> ApiRequest {
    match &args.command {
        None => ApiRequest::get(list_path("orders", &[], &args.page)),
        Some(OrdersCommand::List(page)) => ApiRequest::get(list_path("orders", &[], page)),
        Some(OrdersCommand::Show(IdArg { id })) => ApiRequest::get(show_path("orders", id)),
        Some(OrdersCommand::Create {
            quote,
            delivery_terms,
            notes,
            order_date,
        }) => {
            let mut body = Map::new();
            body.insert("quote_id".into(), Value::String(quote.clone()));
            put(&mut body, "delivery_terms", delivery_terms);
            put(&mut body, "notes", notes);
            put(&mut body, "order_date", &order_date.map(date_string));
            ApiRequest::post("/v1/orders".into(), Value::Object(body))
        }
    }
}

fn invoices_request(args: &InvoicesArgs) -> ApiRequest {
    let list = |filter: &InvoiceListArgs| {
        let status = match (filter.overdue, filter.status) {
            (true, _) => Some("overdue".to_string()),
            (false, Some(status)) => Some(wire_name(&status)),
            (false, None) => None,
        };
        let filters: Vec<(&str, String)> =
            status.into_iter().map(|s| ("payment_status", s)).collect();
        ApiRequest::get(list_path("invoices", &filters, &filter.page))
    };
    let action = |id: &str, action: &str, body: Value| {
        ApiRequest::post(action_path("invoices", id, action), body)
    };
    match &args.command {
        None => list(&args.list),
        Some(InvoicesCommand::List(filter)) => list(filter),
        Some(InvoicesCommand::Show(IdArg { id })) => ApiRequest::get(show_path("invoices", id)),
        Some(InvoicesCommand::Create { order, lines }) => {
            let mut body = Map::new();
            body.insert("order_id".into(), Value::String(order.clone()));
            if !lines.is_empty() {
                let lines = lines
                    .iter()
                    .map(|l| json!({ "line_no": l.line_no, "quantity": l.quantity.to_string() }))
                    .collect();
                body.insert("lines".into(), Value::Array(lines));
            }
            ApiRequest::post("/v1/invoices".into(), Value::Object(body))
        }
        Some(InvoicesCommand::Issue {
            id,
            issue_date,
            due_date,
        }) => {
            let mut body = Map::new();
            put(&mut body, "issue_date", &issue_date.map(date_string));
            put(&mut body, "due_date", &due_date.map(date_string));
            action(id, "issue", Value::Object(body))
        }
        Some(InvoicesCommand::Void(args)) => action(&args.id, "void", args.body()),
        Some(InvoicesCommand::Credit { id, amount }) => {
            let mut body = Map::new();
            put(&mut body, "amount", &amount.map(|a| a.to_string()));
            action(id, "credit", Value::Object(body))
        }
    }
}

fn payments_request(args: &PaymentsArgs) -> ApiRequest {
    match &args.command {
        None => ApiRequest::get(list_path("payments", &[], &args.page)),
        Some(PaymentsCommand::List(page)) => ApiRequest::get(list_path("payments", &[], page)),
        Some(PaymentsCommand::Show(IdArg { id })) => ApiRequest::get(show_path("payments", id)),
        Some(PaymentsCommand::Record(p)) => {
            let mut body = Map::new();
            body.insert("amount".into(), Value::String(p.amount.to_string()));
            body.insert("currency".into(), Value::String(p.currency.clone()));
            put(&mut body, "received_on", &p.received_on.map(date_string));
            put(&mut body, "payer", &p.payer);
            put(&mut body, "reference", &p.reference);
            put(&mut body, "external_id", &p.external_id);
            if !p.allocations.is_empty() {
                body.insert("allocations".into(), allocations_json(&p.allocations));
            }
            ApiRequest::post("/v1/payments".into(), Value::Object(body))
        }
        Some(PaymentsCommand::Reverse { id, amount }) => {
            let mut body = Map::new();
            put(&mut body, "amount", &amount.map(|a| a.to_string()));
            ApiRequest::post(action_path("payments", id, "reverse"), Value::Object(body))
        }
    }
}

fn allocations_json(allocations: &[Allocation]) -> Value {
    let items = allocations
        .iter()
        .map(|a| {
            let mut obj = Map::new();
            obj.insert("invoice_id".into(), Value::String(a.invoice_id.clone()));
            put(&mut obj, "amount", &a.amount.map(|x| x.to_string()));
            Value::Object(obj)
        })
        .collect();
    Value::Array(items)
}

fn review_request(args: &ReviewArgs) -> ApiRequest {
    let list = |filter: &ReviewListArgs| {
        // The daemon lists open items unless asked for `status=all`.
        let status: Vec<(&str, String)> = match filter.all {
            true => vec![("status", "all".into())],
            false => Vec::new(),
        };
        ApiRequest::get(list_path("review", &status, &filter.page))
    };
    match &args.command {
        None => list(&args.list),
        Some(ReviewCommand::List(filter)) => list(filter),
        Some(ReviewCommand::Show(IdArg { id })) => ApiRequest::get(show_path("review", id)),
        Some(ReviewCommand::Allocate { id, allocations }) => ApiRequest::post(
            action_path("review", id, "allocate"),
            json!({ "allocations": allocations_json(allocations) }),
        ),
        Some(ReviewCommand::Reverse { id, payment }) => ApiRequest::post(
            action_path("review", id, "reverse"),
            json!({ "payment_id": payment }),
        ),
        Some(ReviewCommand::Dismiss { id, reason }) => {
            let mut body = Map::new();
            put(&mut body, "reason", reason);
            ApiRequest::post(action_path("review", id, "dismiss"), Value::Object(body))
        }
    }
}

fn events_path(after: Option<u64>, limit: Option<u32>) -> String {
    let mut query = Vec::new();
    if let Some(after) = after {
        query.push(format!("after={after}"));
    }
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    match query.is_empty() {
        true => "/v1/events".into(),
        false => format!("/v1/events?{}", query.join("&")),
    }
}

fn import_path(file: &Path, plugin: Option<&str>) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let mut path = format!("/v1/imports?name={}", encode(&name));
    if let Some(plugin) = plugin {
        path.push_str(&format!("&plugin={}", encode(plugin)));
    }
    path
}

/// Inserts `key` only when the flag was given, so the daemon's defaults apply to the rest.
fn put(obj: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(v) = value {
        obj.insert(key.to_string(), Value::String(v.clone()));
    }
}

/// The name the API uses for a value of a clap enum (snake_case, as declared on the enum).
fn wire_name<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn date_string(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for path segments and query values.
fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let t = s.trim();
    if t.contains(',') && !t.contains('.') {
        return Err(format!(
            "`{s}` is not a decimal number (use a dot: {})",
            t.replace(',', ".")
        ));
    }
    t.parse::<Decimal>()
        .map_err(|_| format!("`{s}` is not a decimal number"))
}

fn parse_currency(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.len() == 3 && t.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(t.to_ascii_uppercase())
    } else {
        Err(format!("`{s}` is not an ISO 4217 currency code like EUR"))
    }
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date like 2026-03-31"))
}

/// A discount: a percent with `%` (`10%`) or an amount (`25.00`).
fn parse_discount(s: &str) -> Result<LineDiscount, String> {
    let t = s.trim();
    match t.strip_suffix('%') {
        Some(percent) => parse_decimal(percent).map(LineDiscount::Percent),
        None => parse_decimal(t).map(LineDiscount::Amount),
    }
}

/// A percent may be typed with or without `%`.
fn parse_percent(s: &str) -> Result<Decimal, String> {
    parse_decimal(s.trim().trim_end_matches('%'))
}

fn parse_quote_line(s: &str) -> Result<QuoteLine, String> {
    let fields: Vec<&str> = s.split(';').collect();
    if !(4..=5).contains(&fields.len()) {
        return Err(format!(
            "expected `description;quantity;unit_price;tax_rate[;discount]`, got {} field(s) in `{s}` \
             (use --from-json for descriptions containing `;`)",
            fields.len()
        ));
    }
    let description = fields[0].trim();
    if description.is_empty() {
        return Err(format!("the description in `{s}` is empty"));
    }
    let field = |i: usize, name: &str, parse: fn(&str) -> Result<Decimal, String>| {
        parse(fields[i]).map_err(|e| format!("{name}: {e}"))
    };
    let discount = match fields.get(4).map(|d| d.trim()) {
        None | Some("") => None,
        Some(d) => Some(parse_discount(d).map_err(|e| format!("discount: {e}"))?),
    };
    Ok(QuoteLine {
        description: description.to_string(),
        quantity: field(1, "quantity", parse_decimal)?,
        unit_price: field(2, "unit price", parse_decimal)?,
        tax_rate: field(3, "tax rate", parse_percent)?,
        discount,
    })
}

fn parse_invoice_line(s: &str) -> Result<InvoiceLineSelection, String> {
    let (line, qty) = s
        .split_once(':')
        .ok_or_else(|| format!("expected LINE_NO:QUANTITY like 1:2, got `{s}`"))?;
    let line_no = line
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("line number `{line}` is not a whole number"))?;
    let quantity = parse_decimal(qty).map_err(|e| format!("quantity: {e}"))?;
    Ok(InvoiceLineSelection { line_no, quantity })
}

fn parse_allocation(s: &str) -> Result<Allocation, String> {
    let (id, amount) = match s.rsplit_once(':') {
        Some((id, amount)) => (
            id,
            Some(parse_decimal(amount).map_err(|e| format!("amount: {e}"))?),
        ),
        None => (s, None),
    };
    let id = id.trim();
    if id.is_empty() {
        return Err(format!("no invoice id in `{s}`"));
    }
    Ok(Allocation {
        invoice_id: id.to_string(),
        amount,
    })
}

/// An answer from the daemon: the body as sent (for `--json`) and parsed (a JSON string when it was not JSON).
#[derive(Debug, Clone)]
struct Answer {
    raw: String,
    value: Value,
}

/// Sends requests to one daemon with one token.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Where the token was looked for, to say so when the daemon refuses it.
    token_hint: String,
    /// How long a request other than an upload may take.
    timeout: Duration,
}

impl Client {
    fn new(opts: &ClientOpts) -> anyhow::Result<Client> {
        let base = opts.url.trim().trim_end_matches('/').to_string();
        let url =
            reqwest::Url::parse(&base).map_err(|e| anyhow!("invalid --url `{}`: {e}", opts.url))?;
        let (token, token_hint) = resolve_token(opts)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("settled-cli/", env!("CARGO_PKG_VERSION")));
        // A proxy from the environment would see the token and usually cannot reach our loopback anyway.
        if is_loopback(&url) {
            builder = builder.no_proxy();
        }
        let http = builder.build().context("setting up the http client")?;
        Ok(Client {
            http,
            base,
            token,
            token_hint,
            timeout: REQUEST_TIMEOUT,
        })
    }

    async fn send(&self, req: &ApiRequest) -> anyhow::Result<Answer> {
        let url = format!("{}{}", self.base, req.path);
        let mut builder = match req.method {
            Method::Get => self.http.get(&url),
            Method::Post => self.http.post(&url),
        };
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        builder = match &req.body {
            RequestBody::Empty => builder.timeout(self.timeout),
            RequestBody::Json(body) => builder.json(body).timeout(self.timeout),
            RequestBody::JsonFile(file) => {
                builder.json(&read_json_file(file)?).timeout(self.timeout)
            }
            RequestBody::Upload(file) => {
                let (body, len) = upload::file_body(file).await?;
                builder
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body)
            }
        };
        let response = builder
            .send()
            .await
            .map_err(|e| self.transport_error(&e, req))?;
        let status = response.status();
        let raw = response
            .text()
            .await
            .map_err(|e| self.transport_error(&e, req))?;
        if !status.is_success() {
            return Err(api_error(
                status.as_u16(),
                req,
                &raw,
                self.token.is_none(),
                &self.token_hint,
            ));
        }
        let value = serde_json::from_str(&raw)
            .unwrap_or_else(|_| Value::String(raw.trim_end().to_string()));
        Ok(Answer { raw, value })
    }

    fn transport_error(&self, err: &reqwest::Error, req: &ApiRequest) -> anyhow::Error {
        if err.is_connect() {
            anyhow!(
                "cannot reach settled at {}: {}; is `settled run` running?",
                self.base,
                root_cause(err)
            )
        } else if err.is_timeout() {
            anyhow!(
                "settled at {} did not answer {} {} in time",
                self.base,
                method_name(req.method),
                req.path
            )
        } else {
            anyhow!(
                "{} {}{} failed: {}",
                method_name(req.method),
                self.base,
                req.path,
                root_cause(err)
            )
        }
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Post => "POST",
    }
}

/// The token and a description of where it came from (or was looked for).
fn resolve_token(opts: &ClientOpts) -> anyhow::Result<(Option<String>, String)> {
    if let Some(token) = opts
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok((Some(token.to_string()), "--token/SETTLED_API_TOKEN".into()));
    }
    let Some(dir) = opts.data_dir() else {
        return Ok((
            None,
            "SETTLED_API_TOKEN (no data directory: HOME is not set)".into(),
        ));
    };
    let file = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&file) {
        Ok(token) => {
            let token = token.trim().to_string();
            Ok((
                (!token.is_empty()).then_some(token),
                format!("token file {}", file.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            None,
            format!("SETTLED_API_TOKEN or the token file {}", file.display()),
        )),
        Err(e) => Err(anyhow!("reading API token file {}: {e}", file.display())),
    }
}

/// The daemon's `{"error": {"code", "message", "field"}}` as one line; anything else with the status and body.
fn api_error(
    status: u16,
    req: &ApiRequest,
    body: &str,
    token_missing: bool,
    token_hint: &str,
) -> anyhow::Error {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
    let mut text = match message {
        Some(message) => {
            let field = error.and_then(|e| e.get("field")).and_then(Value::as_str);
            match field {
                Some(field) => format!("{message} (field {field})"),
                None => message.to_string(),
            }
        }
        None => {
            let body: String = body.trim().chars().take(200).collect();
            let body = if body.is_empty() {
                "no details".to_string()
            } else {
                body
            };
            format!(
                "the daemon answered {status} to {} {}: {body}",
                method_name(req.method),
                req.path.split('?').next().unwrap_or(&req.path)
            )
        }
    };
    if status == 401 {
        if token_missing {
            text.push_str(&format!(
                "; no API token found: set {token_hint}, or run `settled init`"
            ));
        } else {
            text.push_str(&format!("; the token from {token_hint} was refused"));
        }
    }
    anyhow!(text)
}

/// The innermost cause, phrased the way people know it ("connection refused").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current: &(dyn std::error::Error + 'static) = err;
    loop {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                _ => {}
            }
        }
        match current.source() {
            Some(next) => current = next,
            None => return current.to_string(),
        }
    }
}

fn read_json_file(file: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow!("reading {}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: invalid json at line {} column {}: {e}",
            file.display(),
            e.line(),
            e.column()
        )
    })
}

/// How to print a successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    List(render::Kind),
    Detail,
    /// A captured lead, which may have been merged into an existing one.
    LeadCapture,
    Plugins,
    Outbox,
}

fn view_for(cmd: &ApiCommand) -> View {
    use render::Kind;
    let kind = match cmd {
        ApiCommand::Leads(LeadsArgs {
            command: Some(LeadsCommand::Add(_)),
            ..
        }) => return View::LeadCapture,
        ApiCommand::Plugins => return View::Plugins,
        ApiCommand::Outbox(OutboxArgs { command: None }) => return View::Outbox,
        ApiCommand::Outbox(_) => return View::Detail,
        ApiCommand::Events(_) => return View::List(Kind::Event),
        ApiCommand::Leads(_) => Kind::Lead,
        ApiCommand::Accounts(_) => Kind::Account,
        ApiCommand::Contacts(_) => Kind::Contact,
        ApiCommand::Opportunities(_) => Kind::Opportunity,
        ApiCommand::Quotes(_) => Kind::Quote,
        ApiCommand::Orders(_) => Kind::Order,
        ApiCommand::Invoices(_) => Kind::Invoice,
        ApiCommand::Payments(_) => Kind::Payment,
        ApiCommand::Review(_) => Kind::Review,
        ApiCommand::Imports(_) => Kind::Import,
        ApiCommand::Import(_) | ApiCommand::Status | ApiCommand::Sync(_) => return View::Detail,
    };
    match list_page(cmd) {
        Some(_) => View::List(kind),
        None => View::Detail,
    }
}

/// Where a command prints: tables and results to `out`; per-file import errors and hints to `err`. Tables are
/// fitted to `width` when known. `poll` is how long `events --follow` waits when it has caught up.
struct Output<'a> {
    out: &'a mut (dyn Write + Send),
    err: &'a mut (dyn Write + Send),
    width: Option<usize>,
    poll: Duration,
}

/// [`execute`] with the output as a parameter, so tests can read what was printed.
async fn run(cmd: &ApiCommand, opts: &ClientOpts, output: Output<'_>) -> anyhow::Result<()> {
    let Output {
        out,
        err,
        width,
        poll,
    } = output;
    let client = Client::new(opts)?;
    let requests = request_for(cmd);
    match cmd {
        ApiCommand::Import(_) => import_files(&client, &requests, opts.json, out, err).await,
        ApiCommand::Events(args) if args.follow => {
            let first = requests
                .first()
                .ok_or_else(|| anyhow!("no events request"))?;
            follow_events(&client, first, args, opts.json, out, width, poll).await
        }
        ApiCommand::Status => status(&client, &requests, opts.json, out).await,
        ApiCommand::Sync(_) => {
            let request = requests.first().ok_or_else(|| anyhow!("no sync request"))?;
            sync::check(&client, request, opts.json, out, width).await
        }
        _ => {
            for req in &requests {
                let answer = client.send(req).await?;
                if opts.json {
                    print_raw(out, &answer.raw)?;
                    continue;
                }
                let text = match view_for(cmd) {
                    View::List(kind) => render::list(kind, &answer.value, width),
                    View::Detail => render::detail(&answer.value, width),
                    View::LeadCapture => render::lead_capture(&answer.value, width),
                    View::Plugins => render::plugins(&answer.value, width),
                    View::Outbox => render::outbox(&answer.value, width),
                };
                write_out(out, &text)?;
                if let Some(hint) = list_page(cmd).and_then(|page| more_hint(page, &answer.value)) {
                    writeln!(err, "{hint}").context("writing output")?;
                }
            }
            Ok(())
        }
    }
}

/// When a list filled its page, how to ask for the next one (the API pages by id).
fn more_hint(page: &PageArgs, answer: &Value) -> Option<String> {
    let items = render::items(answer);
    let limit = usize::try_from(page.limit.unwrap_or(API_DEFAULT_PAGE)).unwrap_or(usize::MAX);
    if items.is_empty() || items.len() < limit {
        return None;
    }
    let last = items
        .last()
        .and_then(|item| item.get("id"))
        .map(render::scalar)?;
    Some(format!(
        "showing the first {} only; for more, repeat with --after {last}",
        items.len()
    ))
}

fn print_raw(out: &mut (dyn Write + Send), raw: &str) -> anyhow::Result<()> {
    let raw = raw.trim_end();
    write_out(out, &format!("{raw}\n"))
}

fn write_out(out: &mut (dyn Write + Send), text: &str) -> anyhow::Result<()> {
    out.write_all(text.as_bytes()).context("writing output")?;
    out.flush().context("writing output")
}

/// Uploads every file even when some fail, then fails if any did.
async fn import_files(
    client: &Client,
    requests: &[ApiRequest],
    json: bool,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut failed = 0usize;
    for req in requests {
        let label = match &req.body {
            RequestBody::Upload(file) => file.display().to_string(),
            _ => req.path.clone(),
        };
        match client.send(req).await {
            Ok(answer) if json => print_raw(out, &answer.raw)?,
            Ok(answer) => write_out(out, &render::import_summary(&label, &answer.value))?,
            Err(e) => {
                failed += 1;
                writeln!(err, "error: {label}: {e:#}").context("writing output")?;
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(anyhow!(
            "{n} of {} file(s) could not be imported",
            requests.len()
        )),
    }
}

/// Pages through the audit log from `first`, then polls for more, until Ctrl-C.
async fn follow_events(
    client: &Client,
    first: &ApiRequest,
    args: &EventsArgs,
    json: bool,
    out: &mut (dyn Write + Send),
    width: Option<usize>,
    poll: Duration,
) -> anyhow::Result<()> {
    let limit = args.limit.unwrap_or(FOLLOW_PAGE);
    let mut req = first.clone();
    let mut header = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let answer = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            answer = client.send(&req) => answer?,
        };
        let items = render::items(&answer.value);
        if let Some(last) = items
            .last()
            .and_then(|e| e.get("id"))
            .and_then(Value::as_u64)
        {
            req = ApiRequest::get(events_path(Some(last), Some(limit)));
        }
        if json {
            for item in items {
                write_out(out, &format!("{item}\n"))?;
            }
        } else if !items.is_empty() {
            write_out(out, &render::event_rows(items, header, width))?;
            header = false;
        }
        let full_page = u32::try_from(items.len()).is_ok_and(|n| n >= limit);
        if full_page {
            continue;
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Health first (a daemon that does not answer fails the command), then what needs attention.
async fn status(
    client: &Client,
    requests: &[ApiRequest],
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let [health_req, review_req, overdue_req, plugins_req] = requests else {
        return Err(anyhow!(
            "status expects four requests, got {}",
            requests.len()
        ));
    };
    let health = client.send(health_req).await?;
    let report = render::StatusReport {
        url: &client.base,
        health: &health.value,
        review: count_all(client, review_req).await,
        overdue: count_all(client, overdue_req).await,
        plugins: client
            .send(plugins_req)
            .await
            .map(|a| a.value)
            .map_err(|e| format!("{e:#}")),
    };
    match json {
        true => write_out(out, &format!("{}\n", report.to_json())),
        false => write_out(out, &report.to_text()),
    }
}

/// The number of items in a whole list, following `after` page by page from `first` (whose path has a query).
async fn count_all(client: &Client, first: &ApiRequest) -> Result<usize, String> {
    let mut total = 0usize;
    let mut req = first.clone();
    loop {
        let answer = client.send(&req).await.map_err(|e| format!("{e:#}"))?;
        let items = render::items(&answer.value);
        total += items.len();
        let last = items
            .last()
            .and_then(|item| item.get("id"))
            .map(render::scalar);
        match last {
            Some(last) if items.len() >= usize::try_from(COUNT_PAGE).unwrap_or(usize::MAX) => {
                req.path = format!("{}&after={}", first.path, encode(&last));
            }
            _ => return Ok(total),
        }
    }
}

#[cfg(test)]
mod tests;
