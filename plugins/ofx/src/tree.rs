//! One tree builder for both OFX dialects: 1.x SGML (leaf tags left unclosed, several elements on a line)
//! and 2.x XML. A leaf is a start tag directly followed by text; anything else is an aggregate.

use settled_plugin_api::PluginError;

/// An OFX element: a leaf has a `value`, an aggregate has `children`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Tag name, upper case as in the file.
    pub name: String,
    /// Text of a leaf element, entities decoded, trimmed.
    pub value: Option<String>,
    /// Child elements of an aggregate, in file order.
    pub children: Vec<Element>,
    /// 1-based line of the start tag.
    pub line: usize,
}

impl Element {
    /// The first child with this name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The trimmed, non-empty value of the first leaf child with this name.
    pub fn leaf(&self, name: &str) -> Option<&str> {
        self.child(name)
            .and_then(|c| c.value.as_deref())
            .filter(|v| !v.is_empty())
    }
}

/// Aggregates the plugin reads: they must never carry text, which is how garbage between tags is caught.
const KNOWN_AGGREGATES: &[&str] = &[
    "OFX",
    "SIGNONMSGSRSV1",
    "SONRS",
    "STATUS",
    "FI",
    "BANKMSGSRSV1",
    "STMTTRNRS",
    "STMTRS",
    "BANKACCTFROM",
    "BANKACCTTO",
    "BANKTRANLIST",
    "STMTTRN",
    "PAYEE",
    "CURRENCY",
    "ORIGCURRENCY",
    "LEDGERBAL",
    "AVAILBAL",
    "BALLIST",
    "BAL",
    "CREDITCARDMSGSRSV1",
    "CCSTMTTRNRS",
    "CCSTMTRS",
    "CCACCTFROM",
    "CCACCTTO",
];

fn is_known_aggregate(name: &str) -> bool {
    KNOWN_AGGREGATES.contains(&name)
}

/// The deepest nesting accepted. Real statements nest about ten deep; a deeper document is refused, so that no
/// document, however hostile, can make the tree (and dropping it) exhaust the plugin's stack.
pub const MAX_DEPTH: usize = 256;

/// Most text held for one unfinished piece of the document (a tag, a leaf with its text, a comment) between feeds.
pub const MAX_TOKEN: usize = 16 * 1024 * 1024;

/// What an open element is to the reader of the document, decided by [`Build::open`] when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Kept as a tree and handed over whole when it is complete (and everything inside a tentative element).
    Keep,
    /// The `<OFX>` root whose statements count.
    Ofx,
    /// An aggregate between `<OFX>` and a statement.
    Path,
    /// A statement read as it arrives.
    Statement,
    /// The statement's transaction list: each transaction is handed over as it closes.
    List,
}

/// An element still open.
pub struct Open {
    /// The element with the children attached to it so far.
    pub element: Element,
    /// Opened without text and not a known aggregate: may turn out to be an empty SGML leaf.
    tentative: bool,
    /// What [`Build::open`] made of it.
    pub role: Role,
}

/// The reader of the document: told of each element as it opens and when it is complete.
pub trait Build {
    /// The role of a (non-tentative) element opening below `stack` (outermost first).
    fn open(&mut self, stack: &[Open], name: &str) -> Role;
    /// A complete element that belongs to the top of `stack` (a root when `stack` is empty). `role` is the role it
    /// was opened with, [`Role::Keep`] for leaves and for elements that were kept inside a tentative one.
    fn attach(&mut self, stack: &mut [Open], element: Element, role: Role);
}

/// The body of an OFX document read in pieces of any size. Between feeds it holds the unfinished tail (at most
/// [`MAX_TOKEN`]) and the open elements (at most [`MAX_DEPTH`]) with what [`Build::attach`] kept in them.
pub struct TreeStream {
    /// Text received and not parsed yet.
    pending: String,
    /// Line of `pending`'s first character.
    line: usize,
    /// Characters on that line before `pending` (for columns).
    column_base: usize,
    stack: Vec<Open>,
    /// Name of the last closed element, for error messages about text that follows it.
    after: Option<String>,
}

/// Why a step stopped: it needs text that has not arrived, or the document is bad.
enum Stop {
    More,
    Bad(PluginError),
}

impl From<PluginError> for Stop {
    fn from(e: PluginError) -> Stop {
        Stop::Bad(e)
    }
}

impl TreeStream {
    /// A body whose first character is on line `first_line` of the file.
    pub fn new(first_line: usize) -> TreeStream {
        TreeStream {
            pending: String::new(),
            line: first_line,
            column_base: 0,
            stack: Vec::new(),
            after: None,
        }
    }

    /// The next piece of the body; with `last`, the end of the document.
    pub fn feed(
        &mut self,
        text: &str,
        last: bool,
        build: &mut dyn Build,
    ) -> Result<(), PluginError> {
        self.pending.push_str(text);
        let pending = std::mem::take(&mut self.pending);
        let mut cursor = Cursor {
            text: &pending,
            pos: 0,
            line: self.line,
            column_base: self.column_base,
            last,
        };
        loop {
            let (pos, line, after) = (cursor.pos, cursor.line, self.after.clone());
            match self.step(&mut cursor, build) {
                Ok(true) => {}
                Ok(false) => break,
                Err(Stop::More) => {
                    (cursor.pos, cursor.line, self.after) = (pos, line, after);
                    break;
                }
                Err(Stop::Bad(e)) => return Err(e),
            }
        }
        let consumed = &pending[..cursor.pos];
        self.column_base = match consumed.rfind('\n') {
            Some(nl) => consumed[nl + 1..].chars().count(),
            None => self.column_base + consumed.chars().count(),
        };
        self.line = cursor.line;
        self.pending = pending[cursor.pos..].to_string();
        if self.pending.len() > MAX_TOKEN {
            return Err(PluginError::bad_input(
                format!("line {}", self.line),
                format!(
                    "one tag or text is longer than {} MiB: not an ofx document",
                    MAX_TOKEN / (1024 * 1024)
                ),
            ));
        }
        if last {
            while let Some(open) = self.stack.pop() {
                if !open.tentative {
                    return Err(PluginError::bad_input(
                        format!("line {}", open.element.line),
                        format!(
                            "truncated file: <{}> opened here is never closed",
                            open.element.name
                        ),
                    ));
                }
                demote(open.element, &mut self.stack, build);
            }
        }
        Ok(())
    }

    /// One token; false at the end of the text.
    fn step(&mut self, cursor: &mut Cursor<'_>, build: &mut dyn Build) -> Result<bool, Stop> {
        let Some(token) = cursor.next_token()? else {
            return Ok(false);
        };
        match token {
            Token::Text { text, line, pos } => {
                if text.trim().is_empty() {
                    return Ok(true);
                }
                let context = match (&self.after, self.stack.last()) {
                    (Some(closed), _) => format!("after </{closed}>"),
                    (None, Some(open)) => format!("inside <{}>", open.element.name),
                    (None, None) => "outside any element".to_string(),
                };
                Err(PluginError::bad_input(
                    format!("line {line}, column {}", cursor.column_at(pos)),
                    format!("unexpected text `{}` {context}", excerpt(&text)),
                )
                .into())
            }
            Token::Start { name, line, empty } => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(PluginError::bad_input(
                        format!("line {line}"),
                        format!("<{name}> is nested deeper than {MAX_DEPTH} elements"),
                    )
                    .into());
                }
                if empty {
                    self.after = None;
                    build.attach(&mut self.stack, leaf(name, String::new(), line), Role::Keep);
                    return Ok(true);
                }
                let (value_line, value_pos) = (cursor.line, cursor.pos);
                let value = cursor.leaf_text()?;
                // What follows the text decides what the element is: it must have arrived.
                cursor.need_tag()?;
                self.after = None;
                let value_is_blank = value.trim().is_empty();
                if is_known_aggregate(&name) {
                    if !value_is_blank {
                        let skipped = value.len() - value.trim_start().len();
                        let lead = &value[..skipped];
                        let (line, column) = match lead.rfind('\n') {
                            Some(nl) => (
                                value_line + lead.matches('\n').count(),
                                lead[nl + 1..].chars().count() + 1,
                            ),
                            None => (
                                value_line,
                                cursor.column_at(value_pos) + lead.chars().count(),
                            ),
                        };
                        return Err(PluginError::bad_input(
                            format!("line {line}, column {column}"),
                            format!("unexpected text `{}` inside <{name}>", excerpt(&value)),
                        )
                        .into());
                    }
                    let role = build.open(&self.stack, &name);
                    self.stack.push(Open {
                        element: aggregate(name, line),
                        tentative: false,
                        role,
                    });
                } else if !value_is_blank || cursor.at_end_tag(&name) {
                    cursor.skip_end_tag(&name);
                    let element = leaf(name, value.trim().to_string(), line);
                    build.attach(&mut self.stack, element, Role::Keep);
                } else {
                    self.stack.push(Open {
                        element: aggregate(name, line),
                        tentative: true,
                        role: Role::Keep,
                    });
                }
                Ok(true)
            }
            Token::End { name, line, pos } => {
                let at = || format!("line {line}, column {}", cursor.column_at(pos));
                close(&mut self.stack, build, &name, &at)?;
                self.after = Some(name);
                Ok(true)
            }
        }
    }
}

fn leaf(name: String, value: String, line: usize) -> Element {
    Element {
        name,
        value: Some(value),
        children: Vec::new(),
        line,
    }
}

fn aggregate(name: String, line: usize) -> Element {
    Element {
        name,
        value: None,
        children: Vec::new(),
        line,
    }
}

/// A tentative aggregate that was never closed was an empty SGML leaf: its "children" are its siblings.
fn demote(element: Element, stack: &mut [Open], build: &mut dyn Build) {
    let Element {
        name,
        children,
        line,
        ..
    } = element;
    build.attach(stack, leaf(name, String::new(), line), Role::Keep);
    for child in children {
        build.attach(stack, child, Role::Keep);
    }
}

fn close(
    stack: &mut Vec<Open>,
    build: &mut dyn Build,
    name: &str,
    at: &dyn Fn() -> String,
) -> Result<(), PluginError> {
    if !stack.iter().any(|o| o.element.name == name) {
        return Err(PluginError::bad_input(
            at(),
            format!("closing tag </{name}> without a matching opening tag"),
        ));
    }
    while let Some(open) = stack.pop() {
        if open.element.name == name {
            build.attach(stack, open.element, open.role);
            return Ok(());
        }
        if !open.tentative {
            return Err(PluginError::bad_input(
                at(),
                format!(
                    "closing tag </{name}> while <{}> opened on line {} is still open",
                    open.element.name, open.element.line
                ),
            ));
        }
        demote(open.element, stack, build);
    }
    Ok(())
}

fn excerpt(text: &str) -> String {
    let trimmed = text.trim();
    let mut out: String = trimmed.chars().take(40).collect();
    if trimmed.chars().count() > 40 {
        out.push_str("...");
    }
    out
}

enum Token {
    Start {
        name: String,
        line: usize,
        /// `<NAME/>`
        empty: bool,
    },
    End {
        name: String,
        line: usize,
        /// Byte offset, turned into a column only for error messages.
        pos: usize,
    },
    Text {
        text: String,
        line: usize,
        pos: usize,
    },
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
    /// Characters on `text`'s first line before it.
    column_base: usize,
    /// Whether `text` runs to the end of the document; otherwise reaching its end means waiting for more.
    last: bool,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn column(&self) -> usize {
        self.column_at(self.pos)
    }

    /// 1-based column of a byte offset; only computed for errors, as OFX files may be one long line.
    fn column_at(&self, pos: usize) -> usize {
        match self.text[..pos].rfind('\n') {
            Some(nl) => self.text[nl + 1..pos].chars().count() + 1,
            None => self.column_base + self.text[..pos].chars().count() + 1,
        }
    }

    fn advance(&mut self, len: usize) {
        let end = (self.pos + len).min(self.text.len());
        self.line += self.text.as_bytes()[self.pos..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        self.pos = end;
    }

    fn error(&self, message: impl Into<String>) -> Stop {
        Stop::Bad(PluginError::bad_input(
            format!("line {}, column {}", self.line, self.column()),
            message,
        ))
    }

    /// Reached the end of the text: the end of the document, or wait for more.
    fn incomplete(&self, message: impl Into<String>) -> Stop {
        if self.last {
            self.error(message)
        } else {
            Stop::More
        }
    }

    /// Skips comments and processing instructions; true when something was skipped.
    fn skip_markup(&mut self) -> Result<bool, Stop> {
        for (open, close) in [("<!--", "-->"), ("<?", "?>"), ("<!DOCTYPE", ">")] {
            if self.rest().starts_with(open) {
                match self.rest().find(close) {
                    Some(end) => {
                        self.advance(end + close.len());
                        return Ok(true);
                    }
                    None => return Err(self.incomplete(format!("`{open}` is never closed"))),
                }
            }
        }
        Ok(false)
    }

    fn next_token(&mut self) -> Result<Option<Token>, Stop> {
        loop {
            if self.pos >= self.text.len() {
                return Ok(None);
            }
            if !self.skip_markup()? {
                break;
            }
        }
        let line = self.line;
        let pos = self.pos;
        let rest = self.rest();
        if rest.starts_with("<![CDATA[") || !rest.starts_with('<') {
            let text = self.text_run()?;
            return Ok(Some(Token::Text { text, line, pos }));
        }
        let Some(end) = rest.find('>') else {
            return Err(self.incomplete("truncated file: tag is never closed with `>`"));
        };
        let inner = &rest[1..end];
        let (closing, inner) = match inner.strip_prefix('/') {
            Some(name) => (true, name),
            None => (false, inner),
        };
        let (empty, inner) = match inner.strip_suffix('/') {
            Some(name) => (true, name),
            None => (false, inner),
        };
        let name = inner.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
        {
            return Err(self.error(format!("malformed tag `<{}>`", excerpt(&rest[1..end]))));
        }
        let name = name.to_string();
        self.advance(end + 1);
        Ok(Some(if closing {
            Token::End { name, line, pos }
        } else {
            Token::Start { name, line, empty }
        }))
    }

    /// Text (and CDATA sections) up to the next tag, entities decoded.
    fn text_run(&mut self) -> Result<String, Stop> {
        let mut out = String::new();
        loop {
            let rest = self.rest();
            if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
                let Some(end) = cdata.find("]]>") else {
                    return Err(self.incomplete("CDATA section is never closed"));
                };
                check_text(&cdata[..end]).map_err(|m| self.error(m))?;
                out.push_str(&cdata[..end]);
                self.advance("<![CDATA[".len() + end + "]]>".len());
                continue;
            }
            if rest.starts_with("<!--") {
                self.skip_markup()?;
                continue;
            }
            if rest.starts_with('<') {
                // `<` at the end of what arrived may begin a CDATA section or a comment, which the text goes on after.
                if !self.last && ("<![CDATA[".starts_with(rest) || "<!--".starts_with(rest)) {
                    return Err(Stop::More);
                }
                return Ok(out);
            }
            if rest.is_empty() {
                return if self.last { Ok(out) } else { Err(Stop::More) };
            }
            let Some(end) = rest.find('<') else {
                if !self.last {
                    return Err(Stop::More);
                }
                check_text(rest).map_err(|m| self.error(m))?;
                decode_entities(rest, &mut out);
                self.advance(rest.len());
                continue;
            };
            let raw = &rest[..end];
            check_text(raw).map_err(|m| self.error(m))?;
            decode_entities(raw, &mut out);
            self.advance(end);
        }
    }

    /// The value after a start tag: text up to the next tag (empty when a tag follows at once).
    fn leaf_text(&mut self) -> Result<String, Stop> {
        self.text_run()
    }

    /// The tag that follows has arrived whole (or the document ends).
    fn need_tag(&self) -> Result<(), Stop> {
        if self.last || self.rest().contains('>') {
            Ok(())
        } else {
            Err(Stop::More)
        }
    }

    fn at_end_tag(&self, name: &str) -> bool {
        self.end_tag_len(name).is_some()
    }

    fn end_tag_len(&self, name: &str) -> Option<usize> {
        let rest = self.rest().strip_prefix("</")?;
        let rest = rest.strip_prefix(name)?;
        let trimmed = rest.trim_start();
        trimmed
            .starts_with('>')
            .then(|| 2 + name.len() + (rest.len() - trimmed.len()) + 1)
    }

    fn skip_end_tag(&mut self, name: &str) {
        if let Some(len) = self.end_tag_len(name) {
            self.advance(len);
        }
    }
}

fn check_text(text: &str) -> Result<(), String> {
    match text
        .chars()
        .find(|c| (c.is_control() && !matches!(c, '\t' | '\r' | '\n')) || *c == '\u{FFFD}')
    {
        Some(c) => Err(format!(
            "binary data (character U+{:04X}) in element text",
            c as u32
        )),
        None => Ok(()),
    }
}

fn decode_entities(raw: &str, out: &mut String) {
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let decoded = tail.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let entity = &tail[1..semi];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{A0}'),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            // SGML files carry bare `&` in names ("A&W"): keep it as it is.
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
}

/// The whole tree of a body, every element kept (for tests).
#[cfg(test)]
pub fn parse(body: &str, first_line: usize) -> Result<Vec<Element>, PluginError> {
    let mut keep = KeepAll(Vec::new());
    let mut tree = TreeStream::new(first_line);
    tree.feed(body, true, &mut keep)?;
    Ok(keep.0)
}

/// A [`Build`] that keeps every element, giving the roots.
#[cfg(test)]
struct KeepAll(Vec<Element>);

#[cfg(test)]
impl Build for KeepAll {
    fn open(&mut self, _: &[Open], _: &str) -> Role {
        Role::Keep
    }

    fn attach(&mut self, stack: &mut [Open], element: Element, _: Role) {
        match stack.last_mut() {
            Some(open) => open.element.children.push(element),
            None => self.0.push(element),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body fed one character at a time.
    fn trickled(body: &str, first_line: usize) -> Result<Vec<Element>, PluginError> {
        let mut keep = KeepAll(Vec::new());
        let mut tree = TreeStream::new(first_line);
        let mut buf = [0u8; 4];
        for c in body.chars() {
            tree.feed(c.encode_utf8(&mut buf), false, &mut keep)?;
        }
        tree.feed("", true, &mut keep)?;
        Ok(keep.0)
    }

    #[test]
    fn any_split_of_the_body_gives_the_same_tree_or_error() {
        let bodies = [
            "<OFX><STATUS><CODE>0<SEVERITY>INFO</STATUS></OFX>",
            "<OFX>\n <NAME><![CDATA[A <b> ]]></NAME>\n <!-- a > comment --><MEMO>Fish &amp; Chips &#233;</MEMO>\n <X></X><Y/></OFX>",
            "<OFX><STMTTRN><MEMO><NAME>x</STMTTRN></OFX>",
            "<OFX>\n<STATUS></STATUS>garbage\n</OFX>",
            "<OFX><STMTTRN>junk<TRNAMT>1</STMTTRN></OFX>",
            "<OFX>\n<STMTTRN><TRNAMT>1",
            "<OFX><STMTTRN></STATUS></OFX>",
            "<OFX><NAME>a\u{1}b</OFX>",
            "<?xml version=\"1.0\"?>\n<OFX><NAME>x</NAME><MEMO>é</MEMO>\n</OFX> ",
            "<OFX><NAME>unfinished <!-- comment",
        ];
        for body in bodies {
            let whole = parse(body, 3).map_err(|e| (e.location, e.message));
            let split = trickled(body, 3).map_err(|e| (e.location, e.message));
            assert_eq!(format!("{whole:?}"), format!("{split:?}"), "{body}");
        }
    }

    #[test]
    fn one_endless_text_is_refused_naming_its_line() {
        let mut keep = KeepAll(Vec::new());
        let mut tree = TreeStream::new(1);
        let chunk = "x".repeat(1024 * 1024);
        let mut fed = tree.feed("<OFX>\n<MEMO>", false, &mut keep);
        let mut sent = 0;
        while fed.is_ok() && sent <= MAX_TOKEN + chunk.len() {
            fed = tree.feed(&chunk, false, &mut keep);
            sent += chunk.len();
        }
        let err = fed.err().map(|e| (e.location, e.message));
        assert_eq!(
            err,
            Some((
                Some("line 2".to_string()),
                "one tag or text is longer than 16 MiB: not an ofx document".to_string()
            ))
        );
    }

    fn tree(body: &str) -> Vec<Element> {
        match parse(body, 1) {
            Ok(t) => t,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    #[test]
    fn sgml_leaves_without_end_tags_become_leaves() {
        let roots = tree("<OFX><STATUS><CODE>0<SEVERITY>INFO</STATUS></OFX>");
        let status = &roots[0].children[0];
        assert_eq!(status.name, "STATUS");
        assert_eq!(status.leaf("CODE"), Some("0"));
        assert_eq!(status.leaf("SEVERITY"), Some("INFO"));
    }

    #[test]
    fn xml_leaves_with_end_tags_and_cdata_and_entities() {
        let roots = tree(
            "<OFX>\n <NAME><![CDATA[A  ]]></NAME>\n <MEMO>Fish &amp; Chips &#233;</MEMO>\n <X></X><Y/></OFX>",
        );
        assert_eq!(roots[0].leaf("NAME"), Some("A"));
        assert_eq!(roots[0].leaf("MEMO"), Some("Fish & Chips é"));
        assert_eq!(
            roots[0].child("X").and_then(|e| e.value.as_deref()),
            Some("")
        );
        assert_eq!(
            roots[0].child("Y").and_then(|e| e.value.as_deref()),
            Some("")
        );
    }

    #[test]
    fn empty_sgml_leaf_is_demoted_and_its_siblings_kept() {
        let roots = tree("<OFX><STMTTRN><MEMO><NAME>x</STMTTRN></OFX>");
        let trn = &roots[0].children[0];
        let names: Vec<&str> = trn.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["MEMO", "NAME"]);
        assert_eq!(trn.leaf("NAME"), Some("x"));
    }

    #[test]
    fn garbage_after_end_tag_names_line_and_column() {
        let err = parse("<OFX>\n<STATUS></STATUS>garbage\n</OFX>", 10).err();
        let err = err.map(|e| (e.location, e.message));
        assert_eq!(
            err,
            Some((
                Some("line 11, column 18".to_string()),
                "unexpected text `garbage` after </STATUS>".to_string()
            ))
        );
    }

    #[test]
    fn text_inside_known_aggregate_is_rejected() {
        let err = parse("<OFX><STMTTRN>junk<TRNAMT>1</STMTTRN></OFX>", 1).err();
        assert_eq!(
            err.map(|e| e.message),
            Some("unexpected text `junk` inside <STMTTRN>".to_string())
        );
    }

    #[test]
    fn unclosed_aggregate_is_truncation() {
        let err = parse("<OFX>\n<STMTTRN><TRNAMT>1", 1).err();
        assert_eq!(
            err.and_then(|e| e.location),
            Some("line 2".to_string()),
            "the innermost unclosed aggregate is named"
        );
    }

    #[test]
    fn mismatched_end_tag_is_rejected() {
        let err = parse("<OFX><STMTTRN></STATUS></OFX>", 1).err();
        assert_eq!(
            err.map(|e| e.message),
            Some("closing tag </STATUS> without a matching opening tag".to_string())
        );
    }

    #[test]
    fn control_characters_are_binary_data() {
        let err = parse("<OFX><NAME>a\u{1}b</OFX>", 1).err();
        assert_eq!(
            err.map(|e| e.message),
            Some("binary data (character U+0001) in element text".to_string())
        );
    }
}
