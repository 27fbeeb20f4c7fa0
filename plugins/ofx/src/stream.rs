//! An OFX file read in pieces: bytes decoded as they arrive, the SGML header checked once the first tag has arrived,
//! the body parsed by [`TreeStream`], and each transaction turned into a record when it closes and then dropped.
//!
//! Memory is bounded by one transaction (plus one unfinished tag or text, at most [`tree::MAX_TOKEN`]) for files in
//! the order the OFX specification gives: a statement's `CURDEF` and account before its `BANKTRANLIST`. A statement
//! whose header is still incomplete when its first transaction closes keeps its transactions until it closes, and
//! an element that may be an empty SGML leaf (an unknown tag with no text) keeps what follows it until that is
//! decided; both give the same records as reading the whole file at once. Two things are decided when a statement's
//! first transaction arrives rather than at its end: a `default_currency` stands in for a `CURDEF` that only comes
//! after the transactions, and a `CCACCTFROM` account for a `BANKACCTFROM` that only comes after them.
//!
//! Errors are the ones the whole file gives: a bad transaction is remembered and the rest of the file still read,
//! so a malformed document reports its syntax error first, as before.

use settled_plugin_api::sdk::{payments, StreamParser};
use settled_plugin_api::{PaymentRecord, PluginError, Record};

use crate::tree::{self, Build, Open, Role, TreeStream};
use crate::{
    body_start, header, header_so_far, sgml_encoding, statement, transaction, xml_encoding,
    Element, Settings,
};

/// Bytes looked at before the character set is decided (a byte order mark, the XML declaration, SGML headers).
const SNIFF_BYTES: usize = 1024;

/// A parse session of the `ofx` plugin.
pub struct OfxStream {
    decoding: Decoding,
    /// Whether any byte arrived.
    any_bytes: bool,
    /// Text before the first tag (the SGML header) while no tag has arrived.
    head: String,
    /// The body, once its first tag arrived.
    tree: Option<TreeStream>,
    records: Records,
}

impl OfxStream {
    /// A session for the file `name`.
    pub fn new(name: &str, settings: &Settings) -> OfxStream {
        OfxStream {
            decoding: Decoding::Undecided(Vec::new()),
            any_bytes: false,
            head: String::new(),
            tree: None,
            records: Records {
                file: name.to_string(),
                settings: settings.clone(),
                ofx: false,
                statements: 0,
                counters: [0; 2],
                current: None,
                out: Vec::new(),
                failed: None,
            },
        }
    }

    /// The next bytes of the file: the records of the transactions they completed.
    pub fn feed_payments(&mut self, chunk: &[u8]) -> Result<Vec<PaymentRecord>, PluginError> {
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        self.any_bytes = true;
        self.read(chunk, false)?;
        Ok(std::mem::take(&mut self.records.out))
    }

    /// The end of the file: the remaining records, or the file's error.
    pub fn finish_payments(mut self) -> Result<Vec<PaymentRecord>, PluginError> {
        if !self.any_bytes {
            return Err(PluginError::bad_input("file", "empty file"));
        }
        self.read(&[], true)?;
        let records = self.records;
        if let Some(e) = records.failed {
            return Err(e);
        }
        if !records.ofx {
            return Err(PluginError::bad_input("line 1", "no <OFX> element"));
        }
        if records.statements == 0 {
            return Err(PluginError::bad_input(
                "OFX",
                "no bank (STMTRS) or credit-card (CCSTMTRS) statement in the file",
            ));
        }
        Ok(records.out)
    }

    fn read(&mut self, chunk: &[u8], last: bool) -> Result<(), PluginError> {
        let text = self.decoding.decode(chunk, last)?;
        if let Some(tree) = &mut self.tree {
            return tree.feed(&text, last, &mut self.records);
        }
        self.head.push_str(&text);
        if self.head.contains('<') {
            let (first_tag, line) = body_start(&self.head)?;
            let body = self.head.split_off(first_tag);
            self.head = String::new();
            let tree = self.tree.insert(TreeStream::new(line));
            return tree.feed(&body, last, &mut self.records);
        }
        if last || self.head.len() > tree::MAX_TOKEN {
            // No tag at all (or none in the first MAX_TOKEN bytes): the header check says what is wrong.
            body_start(&self.head)?;
        }
        Ok(())
    }
}

impl StreamParser for OfxStream {
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Record>, PluginError> {
        Ok(payments(self.feed_payments(chunk)?).records)
    }

    fn finish(self: Box<Self>) -> Result<Vec<Record>, PluginError> {
        Ok(payments(self.finish_payments()?).records)
    }
}

/// How the file's bytes become text.
enum Decoding {
    /// The first bytes, until there are enough to tell the character set.
    Undecided(Vec<u8>),
    /// UTF-8, checked: `carry` holds a character cut by the end of a piece. With `fallback` no character set was
    /// named, and the first invalid byte switches to Windows-1252 (the code page most OFX producers use).
    Utf8 {
        carry: Vec<u8>,
        fallback: bool,
        /// Line breaks decoded so far, for the line of an invalid byte.
        lines: usize,
    },
    /// Any other character set (invalid bytes become U+FFFD, which element text refuses as binary data).
    Other(encoding_rs::Decoder),
}

impl Decoding {
    fn decode(&mut self, chunk: &[u8], last: bool) -> Result<String, PluginError> {
        match self {
            Decoding::Undecided(buf) => {
                buf.extend_from_slice(chunk);
                if buf.len() < SNIFF_BYTES && !last {
                    return Ok(String::new());
                }
                let bytes = std::mem::take(buf);
                let (decoding, skip) = Decoding::decide(&bytes)?;
                *self = decoding;
                self.decode(&bytes[skip..], last)
            }
            Decoding::Utf8 {
                carry,
                fallback,
                lines,
            } => {
                carry.extend_from_slice(chunk);
                let bytes = std::mem::take(carry);
                let valid = match std::str::from_utf8(&bytes) {
                    Ok(_) => bytes.len(),
                    // A character cut by the end of this piece: the rest comes with the next one.
                    Err(e) if e.error_len().is_none() && !last => {
                        carry.extend_from_slice(&bytes[e.valid_up_to()..]);
                        e.valid_up_to()
                    }
                    Err(_) if *fallback => {
                        // Not UTF-8 after all. What was decoded so far stays as it was (the same text when it
                        // was ASCII, as in practice it is: the headers and tags).
                        *self = Decoding::Other(
                            encoding_rs::WINDOWS_1252.new_decoder_without_bom_handling(),
                        );
                        return self.decode(&bytes, last);
                    }
                    Err(e) => {
                        let line = *lines
                            + bytes[..e.valid_up_to()]
                                .iter()
                                .filter(|b| **b == b'\n')
                                .count()
                            + 1;
                        return Err(PluginError::bad_input(
                            format!("line {line}"),
                            "invalid utf-8 byte sequence (binary data or a wrong charset header)",
                        ));
                    }
                };
                let text = String::from_utf8_lossy(&bytes[..valid]).into_owned();
                *lines += text.matches('\n').count();
                Ok(text)
            }
            Decoding::Other(decoder) => {
                let room = decoder
                    .max_utf8_buffer_length(chunk.len())
                    .unwrap_or(chunk.len().saturating_mul(3) + 16);
                let mut text = String::with_capacity(room);
                let _ = decoder.decode_to_string(chunk, &mut text, last);
                Ok(text)
            }
        }
    }

    /// By byte order mark, the XML declaration's `encoding`, or the SGML `ENCODING`/`CHARSET` headers; with the
    /// number of bytes to skip (the byte order mark).
    fn decide(bytes: &[u8]) -> Result<(Decoding, usize), PluginError> {
        let checked = |encoding: &'static encoding_rs::Encoding, fallback: bool| {
            if encoding == encoding_rs::UTF_8 {
                Decoding::Utf8 {
                    carry: Vec::new(),
                    fallback,
                    lines: 0,
                }
            } else {
                Decoding::Other(encoding.new_decoder_without_bom_handling())
            }
        };
        if let Some((encoding, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
            return Ok((checked(encoding, false), bom_len));
        }
        let head =
            String::from_utf8_lossy(&bytes[..bytes.len().min(SNIFF_BYTES)]).to_ascii_uppercase();
        let label = if head.trim_start().starts_with("<?XML") {
            xml_encoding(&head)
        } else {
            sgml_encoding(&head)?
        };
        match label {
            Some(label) => match encoding_rs::Encoding::for_label(label.as_bytes()) {
                Some(encoding) => Ok((checked(encoding, false), 0)),
                None => Err(PluginError::bad_input(
                    "header",
                    format!("unsupported character set `{label}`"),
                )),
            },
            None => Ok((checked(encoding_rs::UTF_8, true), 0)),
        }
    }
}

/// Turns statements into records as the body arrives (see the module's documentation).
struct Records {
    file: String,
    settings: Settings,
    /// The `<OFX>` root that counts was found.
    ofx: bool,
    /// Statements found, and per kind (bank, credit card) for their paths.
    statements: usize,
    counters: [usize; 2],
    /// The statement being read as it arrives.
    current: Option<Current>,
    /// Records not handed out yet.
    out: Vec<PaymentRecord>,
    /// The first bad transaction or statement: the file fails with it unless a syntax error comes first.
    failed: Option<PluginError>,
}

/// A statement being read as it arrives.
struct Current {
    /// `STMTRS[1]`.
    path: String,
    /// Account id and currency, once the statement's elements give both.
    header: Option<(String, String)>,
    /// Transactions that arrived before the header was complete, with their numbers.
    pending: Vec<(usize, Element)>,
    /// Transactions so far.
    transactions: usize,
    /// Its first `BANKTRANLIST` (the one whose transactions count) was seen.
    list_seen: bool,
}

fn is_statement(name: &str) -> bool {
    name == "STMTRS" || name == "CCSTMTRS"
}

impl Records {
    /// The next statement's path, `STMTRS[2]`.
    fn count(&mut self, name: &str) -> usize {
        self.statements += 1;
        let slot = usize::from(name == "CCSTMTRS");
        self.counters[slot] += 1;
        self.counters[slot]
    }

    fn fail(&mut self, e: PluginError) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    /// An element kept whole that turned out to belong below `<OFX>`: its statements, as the whole file gives them.
    fn walk(&mut self, element: &Element) {
        if is_statement(&element.name) {
            let index = self.count(&element.name);
            if self.failed.is_none() {
                let mut out = Vec::new();
                match statement(&self.file, element, index, &self.settings, &mut out) {
                    Ok(()) => self.out.extend(out),
                    Err(e) => self.fail(e),
                }
            }
        } else if element.value.is_none() {
            self.walk_children(element);
        }
    }

    /// The statements below an aggregate that belongs below `<OFX>` (the children of `<OFX>` itself for a root).
    fn walk_children(&mut self, element: &Element) {
        for child in &element.children {
            self.walk(child);
        }
    }

    /// A transaction of the statement being read (`stmt`: its elements so far).
    fn transaction(&mut self, stmt: Option<&Element>, trn: Element) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        current.transactions += 1;
        let index = current.transactions;
        if self.failed.is_some() {
            return;
        }
        if current.header.is_none() {
            if let Some(stmt) = stmt {
                match header_so_far(stmt, &current.path, &self.settings) {
                    Ok((Some(account), Some(currency))) => {
                        current.header = Some((account, currency));
                    }
                    Ok(_) => {}
                    Err(e) => return self.fail(e),
                }
            }
        }
        match &current.header {
            Some((account, currency)) => {
                let path = format!("{}/STMTTRN[{index}]", current.path);
                match transaction(&self.file, &trn, &path, account, currency) {
                    Ok(record) => self.out.push(record),
                    Err(e) => self.fail(e),
                }
            }
            None => current.pending.push((index, trn)),
        }
    }

    /// The statement being read closed: its header must be complete now; then the transactions that waited for it.
    fn end_statement(&mut self, stmt: &Element) {
        let Some(current) = self.current.take() else {
            return;
        };
        if self.failed.is_some() {
            return;
        }
        let (account, currency) = match current.header {
            Some(h) => h,
            None => match header(stmt, &current.path, &self.settings) {
                Ok(h) => h,
                Err(e) => return self.fail(e),
            },
        };
        for (index, trn) in current.pending {
            let path = format!("{}/STMTTRN[{index}]", current.path);
            match transaction(&self.file, &trn, &path, &account, &currency) {
                Ok(record) => self.out.push(record),
                Err(e) => return self.fail(e),
            }
        }
    }
}

impl Build for Records {
    fn open(&mut self, stack: &[Open], name: &str) -> Role {
        match stack.last().map(|o| o.role) {
            None if name == "OFX" && !self.ofx => {
                self.ofx = true;
                Role::Ofx
            }
            Some(Role::Ofx | Role::Path) if is_statement(name) => {
                let index = self.count(name);
                self.current = Some(Current {
                    path: format!("{name}[{index}]"),
                    header: None,
                    pending: Vec::new(),
                    transactions: 0,
                    list_seen: false,
                });
                Role::Statement
            }
            Some(Role::Ofx | Role::Path) => Role::Path,
            Some(Role::Statement)
                if name == "BANKTRANLIST"
                    && self.current.as_ref().is_some_and(|c| !c.list_seen) =>
            {
                if let Some(c) = self.current.as_mut() {
                    c.list_seen = true;
                }
                Role::List
            }
            _ => Role::Keep,
        }
    }

    fn attach(&mut self, stack: &mut [Open], element: Element, role: Role) {
        let Some(parent) = stack.last().map(|o| o.role) else {
            // A root: only the first <OFX> counts (one read as it arrived has nothing left to do).
            if role != Role::Ofx && element.name == "OFX" && !self.ofx {
                self.ofx = true;
                self.walk_children(&element);
            }
            return;
        };
        match parent {
            Role::Ofx | Role::Path => match role {
                Role::Statement => self.end_statement(&element),
                Role::Path => {}
                _ => self.walk(&element),
            },
            Role::Statement => {
                if element.name == "BANKTRANLIST" {
                    // The first list counts; one read as it arrived is done, one kept whole is read now.
                    let first = role != Role::List
                        && self
                            .current
                            .as_mut()
                            .is_some_and(|c| !std::mem::replace(&mut c.list_seen, true));
                    if first {
                        let stmt = stack.last().map(|o| &o.element);
                        for trn in element.children.into_iter().filter(|c| c.name == "STMTTRN") {
                            self.transaction(stmt, trn);
                        }
                    }
                } else if let Some(open) = stack.last_mut() {
                    open.element.children.push(element);
                }
            }
            Role::List => {
                if element.name == "STMTTRN" {
                    let stmt = stack
                        .iter()
                        .rev()
                        .find(|o| o.role == Role::Statement)
                        .map(|o| &o.element);
                    self.transaction(stmt, element);
                }
            }
            Role::Keep => {
                if let Some(open) = stack.last_mut() {
                    open.element.children.push(element);
                }
            }
        }
    }
}
