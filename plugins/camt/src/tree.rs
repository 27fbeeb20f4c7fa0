//! A small element tree built with quick-xml, keyed by local names so that namespaces and prefixes
//! (`camt:Ntry`, `<Ntry xmlns="...camt.053.001.08">`) do not matter.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use settled_plugin_api::PluginError;

/// One XML element: local name, attributes by local name, text content and child elements.
#[derive(Debug, Default)]
pub struct Element {
    /// Local name without prefix.
    pub name: String,
    /// Attributes as (local name, unescaped value).
    pub attrs: Vec<(String, String)>,
    /// Text content of this element as written (children's text excluded).
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Namespace URIs declared on this element (`xmlns` and `xmlns:*`).
    pub namespaces: Vec<String>,
}

impl Element {
    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at a `/`-separated path of local names below this one (first match at each step).
    pub fn at(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |el, step| el.child(step))
    }

    /// Trimmed text at a path, `None` when missing or empty.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.at(path)
            .map(|e| e.text.trim())
            .filter(|t| !t.is_empty())
    }

    /// An attribute by local name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Most elements open at once. camt nests about a dozen deep; a deeper document is refused before its
/// depth costs anything (a tree that deep would also overflow the stack when dropped).
pub const MAX_DEPTH: usize = 64;

/// Most bytes held for one unfinished piece of the document (a tag, a text, a comment) between feeds.
pub const MAX_TOKEN: usize = 16 * 1024 * 1024;

/// Parses a whole document into its root element. Truncated or malformed XML is an error naming the line.
#[cfg(test)]
pub fn parse_document(text: &str) -> Result<Element, PluginError> {
    let mut keep = |_: &[Element], element: Element| -> Result<Option<Element>, PluginError> {
        Ok(Some(element))
    };
    let mut tree = TreeStream::default();
    tree.feed(text.as_bytes(), &mut keep)?;
    tree.finish(&mut keep)
}

/// A document read in pieces of any size: each element is handed to `on_close` when it closes, with the
/// still-open ancestors (outermost first). `on_close` returns the element to keep it in the tree, or `None`
/// when it consumed it, so large repeated elements are processed one at a time without holding the whole
/// document. Between feeds only the unfinished tail (one tag or text, at most [`MAX_TOKEN`]) and the open
/// elements (at most [`MAX_DEPTH`]) are held.
#[derive(Default)]
pub struct TreeStream {
    /// Open elements, outermost first.
    stack: Vec<Element>,
    /// Their qualified names, for checking end tags.
    qnames: Vec<Vec<u8>>,
    root: Option<Element>,
    /// Bytes received but not parsed yet.
    pending: Vec<u8>,
    /// Line breaks before `pending`.
    lines_before: usize,
    /// Whether any byte arrived.
    any_bytes: bool,
    /// Whether the start (byte order mark, first `<`) was checked.
    started: bool,
}

/// What is called with each closed element: see [`TreeStream`].
pub type OnClose<'a> = dyn FnMut(&[Element], Element) -> Result<Option<Element>, PluginError> + 'a;

impl TreeStream {
    /// The next bytes of the document.
    pub fn feed(&mut self, chunk: &[u8], on_close: &mut OnClose<'_>) -> Result<(), PluginError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.any_bytes = true;
        if chunk.contains(&0) {
            return Err(PluginError::bad_input(
                "file",
                "binary file: contains NUL bytes, not a camt xml document",
            ));
        }
        self.pending.extend_from_slice(chunk);
        self.parse(false, on_close)?;
        if self.pending.len() > MAX_TOKEN {
            return Err(PluginError::bad_input(
                self.line_at(0),
                format!(
                    "one tag or text is longer than {} MiB: not a camt document",
                    MAX_TOKEN / (1024 * 1024)
                ),
            ));
        }
        Ok(())
    }

    /// The end of the document: its root element (with what `on_close` kept).
    pub fn finish(mut self, on_close: &mut OnClose<'_>) -> Result<Element, PluginError> {
        if !self.any_bytes {
            return Err(PluginError::bad_input("file", "empty file: 0 bytes"));
        }
        self.parse(true, on_close)?;
        if let Some(open) = self.stack.last() {
            return Err(PluginError::bad_input(
                self.line_at(self.pending.len()),
                format!("truncated xml: <{}> is never closed", open.name),
            ));
        }
        self.root
            .ok_or_else(|| PluginError::bad_input("line 1", "no xml element found"))
    }

    /// `line N` of a byte offset into `pending`.
    fn line_at(&self, offset: usize) -> String {
        let end = offset.min(self.pending.len());
        let here = self.pending[..end].iter().filter(|&&b| b == b'\n').count();
        format!("line {}", self.lines_before + here + 1)
    }

    /// Checks the start once enough of it is there: a byte order mark is dropped, the first other character
    /// must be `<`. Returns false while it cannot tell yet.
    fn start(&mut self, last: bool) -> Result<bool, PluginError> {
        if self.started {
            return Ok(true);
        }
        if self.pending.len() < 3 && !last && b"\xEF\xBB\xBF".starts_with(&self.pending) {
            return Ok(false);
        }
        if self.pending.starts_with(b"\xEF\xBB\xBF") {
            self.pending.drain(..3);
        }
        match self.pending.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'<') => {}
            Some(_) => {
                // Invalid UTF-8 there is reported as such, as in a file that starts well.
                self.valid_text(last)?;
                return Err(PluginError::bad_input(
                    "line 1",
                    "not an xml document: expected `<` at the start",
                ));
            }
            None if last => {}
            None => return Ok(false),
        }
        self.started = true;
        Ok(true)
    }

    /// How many bytes of `pending` are complete UTF-8; invalid bytes are an error naming their line.
    fn valid_text(&self, last: bool) -> Result<usize, PluginError> {
        match std::str::from_utf8(&self.pending) {
            Ok(text) => Ok(text.len()),
            // A character cut by the end of this chunk: the rest comes with the next one.
            Err(e) if e.error_len().is_none() && !last => Ok(e.valid_up_to()),
            Err(e) => Err(PluginError::bad_input(
                self.line_at(e.valid_up_to()),
                "not utf-8 text: camt files must be utf-8 encoded xml",
            )),
        }
    }

    /// Parses what `pending` holds completely; keeps an unfinished tail unless `last`.
    fn parse(&mut self, last: bool, on_close: &mut OnClose<'_>) -> Result<(), PluginError> {
        if !self.start(last)? {
            return Ok(());
        }
        let valid = self.valid_text(last)?;
        let pending = std::mem::take(&mut self.pending);
        let result = self.parse_text(&pending[..valid], last, on_close);
        self.pending = pending;
        let consumed = result?;
        self.lines_before += self.pending[..consumed]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.pending.drain(..consumed);
        Ok(())
    }

    /// Parses complete events of `bytes` (valid UTF-8); returns how many bytes they took.
    fn parse_text(
        &mut self,
        bytes: &[u8],
        last: bool,
        on_close: &mut OnClose<'_>,
    ) -> Result<usize, PluginError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| PluginError::bad_input("file", format!("not utf-8 text: {e}")))?;
        let lines_before = self.lines_before;
        let line_of = |offset: u64| {
            let end = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(text.len());
            let here = text.as_bytes()[..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            format!("line {}", lines_before + here + 1)
        };
        let mut reader = Reader::from_str(text);
        // Text is kept as written: `Ustrd` parts of exactly 140 characters are joined without a space,
        // which needs their untrimmed length. Accessors trim. End tags are matched here, across feeds.
        reader.config_mut().trim_text(false);
        reader.config_mut().check_end_names = false;
        reader.config_mut().allow_unmatched_ends = true;
        let mut consumed = 0usize;
        loop {
            let position = reader.buffer_position();
            let at = || line_of(position);
            let event = match reader.read_event() {
                Ok(event) => event,
                // Input ended inside a tag, comment, CDATA or declaration: the rest comes later.
                Err(quick_xml::Error::Syntax(_)) if !last => break,
                Err(e) => {
                    return Err(PluginError::bad_input(
                        line_of(reader.error_position()),
                        format!("malformed xml: {e}"),
                    ))
                }
            };
            let done = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
            match event {
                // A text running to the end of what arrived may go on in the next chunk.
                Event::Text(_) if done >= text.len() && !last => break,
                Event::Text(t) => {
                    let value = t
                        .unescape()
                        .map_err(|e| PluginError::bad_input(at(), format!("bad text: {e}")))?;
                    push_text(&mut self.stack, &value, at)?;
                }
                Event::CData(c) => {
                    let value = String::from_utf8_lossy(&c).into_owned();
                    push_text(&mut self.stack, &value, at)?;
                }
                Event::Start(start) => {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(PluginError::bad_input(
                            at(),
                            format!(
                                "xml nested deeper than {MAX_DEPTH} elements: not a camt document"
                            ),
                        ));
                    }
                    let element =
                        element_from(&start).map_err(|m| PluginError::bad_input(at(), m))?;
                    self.stack.push(element);
                    self.qnames.push(start.name().as_ref().to_vec());
                }
                Event::Empty(start) => {
                    let element =
                        element_from(&start).map_err(|m| PluginError::bad_input(at(), m))?;
                    self.close(element, on_close, at)?;
                }
                Event::End(end) => {
                    let (Some(element), Some(qname)) = (self.stack.pop(), self.qnames.pop()) else {
                        return Err(PluginError::bad_input(
                            at(),
                            format!(
                                "malformed xml: end tag </{}> without a start tag",
                                String::from_utf8_lossy(end.name().as_ref())
                            ),
                        ));
                    };
                    if qname != end.name().as_ref() {
                        return Err(PluginError::bad_input(
                            at(),
                            format!(
                                "malformed xml: expected </{}>, found </{}>",
                                String::from_utf8_lossy(&qname),
                                String::from_utf8_lossy(end.name().as_ref())
                            ),
                        ));
                    }
                    self.close(element, on_close, at)?;
                }
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
                Event::Eof => {
                    consumed = text.len();
                    break;
                }
            }
            consumed = done;
        }
        Ok(consumed)
    }

    /// Hands a closed element to `on_close` and attaches what it keeps.
    fn close(
        &mut self,
        element: Element,
        on_close: &mut OnClose<'_>,
        at: impl Fn() -> String,
    ) -> Result<(), PluginError> {
        if let Some(element) = on_close(&self.stack, element)? {
            attach(&mut self.stack, &mut self.root, element, at)?;
        }
        Ok(())
    }
}

fn element_from(start: &BytesStart<'_>) -> Result<Element, String> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut element = Element {
        name,
        ..Element::default()
    };
    for attr in start.attributes() {
        let attr = attr.map_err(|e| format!("bad attribute in <{}>: {e}", element.name))?;
        let value = attr
            .unescape_value()
            .map_err(|e| format!("bad attribute value in <{}>: {e}", element.name))?
            .into_owned();
        let key = attr.key.as_ref();
        if key == b"xmlns" || key.starts_with(b"xmlns:") {
            element.namespaces.push(value);
        } else {
            let key = String::from_utf8_lossy(attr.key.local_name().as_ref()).into_owned();
            element.attrs.push((key, value));
        }
    }
    Ok(element)
}

fn attach(
    stack: &mut [Element],
    root: &mut Option<Element>,
    element: Element,
    at: impl Fn() -> String,
) -> Result<(), PluginError> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None if root.is_none() => *root = Some(element),
        None => {
            return Err(PluginError::bad_input(
                at(),
                format!("second root element <{}>", element.name),
            ))
        }
    }
    Ok(())
}

fn push_text(
    stack: &mut [Element],
    value: &str,
    at: impl Fn() -> String,
) -> Result<(), PluginError> {
    match stack.last_mut() {
        Some(open) => {
            open.text.push_str(value);
            Ok(())
        }
        None if value.trim().is_empty() => Ok(()),
        None => Err(PluginError::bad_input(
            at(),
            "text outside the root element",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_names_are_matched_by_local_name() {
        let root = parse_document(
            r#"<c:Document xmlns:c="urn:x"><c:A Ccy="EUR">1 &amp; 2</c:A><c:B/></c:Document>"#,
        )
        .unwrap();
        assert_eq!(root.name, "Document");
        assert_eq!(root.text_at("A"), Some("1 & 2"));
        assert_eq!(root.at("A").and_then(|a| a.attr("Ccy")), Some("EUR"));
        assert!(root.child("B").is_some());
    }

    #[test]
    fn truncated_document_names_the_unclosed_element() {
        let err = parse_document("<Document>\n<Stmt>\n<Ntry>").unwrap_err();
        assert_eq!(err.code, "bad_input");
        assert!(err.message.contains("truncated"), "{err}");
        assert_eq!(err.location.as_deref(), Some("line 3"));
    }

    #[test]
    fn mismatched_end_tag_is_an_error_with_its_line() {
        let err = parse_document("<Document>\n<A></B>\n</Document>").unwrap_err();
        assert_eq!(err.location.as_deref(), Some("line 2"));
        assert!(err.message.starts_with("malformed xml"), "{err}");
    }
}
