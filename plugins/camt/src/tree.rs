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

/// Parses a whole document into its root element. Truncated or malformed XML is an error naming the line.
#[cfg(test)]
pub fn parse_document(text: &str) -> Result<Element, PluginError> {
    parse_streaming(text, |_, element| Ok(Some(element)))
}

/// Parses a document, handing each element to `on_close` when it closes, with the still-open ancestors
/// (outermost first). `on_close` returns the element to keep it in the tree, or `None` when it consumed
/// it, so large repeated elements can be processed one at a time without holding the whole document.
pub fn parse_streaming(
    text: &str,
    mut on_close: impl FnMut(&[Element], Element) -> Result<Option<Element>, PluginError>,
) -> Result<Element, PluginError> {
    let mut reader = Reader::from_str(text);
    // Text is kept as written: `Ustrd` parts of exactly 140 characters are joined without a space,
    // which needs their untrimmed length. Accessors trim.
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let position = reader.buffer_position();
        let event = reader.read_event().map_err(|e| {
            let at = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
            PluginError::bad_input(line_of(text, at), format!("malformed xml: {e}"))
        })?;
        let at = || line_of(text, usize::try_from(position).unwrap_or(usize::MAX));
        match event {
            Event::Start(start) => {
                stack.push(element_from(&start).map_err(|m| PluginError::bad_input(at(), m))?)
            }
            Event::Empty(start) => {
                let element = element_from(&start).map_err(|m| PluginError::bad_input(at(), m))?;
                if let Some(element) = on_close(&stack, element)? {
                    attach(&mut stack, &mut root, element, at)?;
                }
            }
            Event::End(_) => {
                // quick-xml has already checked that the end tag matches the open one.
                if let Some(element) = stack.pop() {
                    if let Some(element) = on_close(&stack, element)? {
                        attach(&mut stack, &mut root, element, at)?;
                    }
                }
            }
            Event::Text(t) => {
                let value = t
                    .unescape()
                    .map_err(|e| PluginError::bad_input(at(), format!("bad text: {e}")))?;
                push_text(&mut stack, &value, at)?;
            }
            Event::CData(c) => {
                let value = String::from_utf8_lossy(&c).into_owned();
                push_text(&mut stack, &value, at)?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(PluginError::bad_input(
            line_of(text, text.len()),
            format!("truncated xml: <{}> is never closed", open.name),
        ));
    }
    root.ok_or_else(|| PluginError::bad_input("line 1", "no xml element found"))
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

/// `line N` (1-based) for a byte offset.
fn line_of(text: &str, offset: usize) -> String {
    let end = offset.min(text.len());
    let line = text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    format!("line {line}")
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
