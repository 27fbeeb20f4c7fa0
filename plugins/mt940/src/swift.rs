//! Splitting a SWIFT text file into messages and tagged fields.
//!
//! Messages start at `:20:` (or a `{1:...}{2:...}{4:` header) and end at a `-` line, a `-}` trailer,
//! or the next `:20:`. A field runs from its `:NN[a]:` tag to the next tag; its further lines are kept
//! as written so that the 65-character wrapping can be undone by the field's own rules.

use settled_plugin_api::PluginError;

/// One message (a statement or an interim report).
#[derive(Debug, Default)]
pub struct Message {
    /// 1-based line of the `:20:` field (or of the `{4:` header).
    pub line: usize,
    /// The message type from block 2 (`940`, `942`), when the file has SWIFT headers.
    pub block_type: Option<u16>,
    /// Fields in order.
    pub fields: Vec<Field>,
}

impl Message {
    /// The first field with one of these tags.
    pub fn field(&self, tags: &[&str]) -> Option<&Field> {
        self.fields.iter().find(|f| tags.contains(&f.tag.as_str()))
    }

    /// The `:20:` transaction reference, for error messages.
    pub fn reference(&self) -> &str {
        self.field(&["20"])
            .and_then(|f| f.lines.first())
            .map_or("", |l| l.trim())
    }
}

/// One tagged field: `:61:` etc.
#[derive(Debug, Clone)]
pub struct Field {
    /// The tag without colons: `20`, `28C`, `61`, `86`.
    pub tag: String,
    /// 1-based line number of the tag.
    pub line: usize,
    /// The first line after the tag, then every continuation line, as written (no line ends).
    pub lines: Vec<String>,
}

/// Splits decoded text into messages.
pub fn split_messages(text: &str) -> Result<Vec<Message>, PluginError> {
    let mut messages: Vec<Message> = Vec::new();
    let mut open: Option<Message> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = raw.trim_end_matches(['\r', '\u{1a}']);
        let mut rest = line;
        if line.starts_with('{') {
            // `{1:...}{2:I940...}{4:` opens a message; anything after `{4:` on the same line is its first field.
            let Some(body_at) = line.find("{4:") else {
                continue;
            };
            close(&mut open, &mut messages);
            open = Some(Message {
                line: number,
                block_type: block_type(&line[..body_at]),
                fields: Vec::new(),
            });
            rest = &line[body_at + 3..];
            if rest.trim().is_empty() {
                continue;
            }
        }
        if rest.trim().is_empty() {
            continue;
        }
        if rest.trim() == "-" || rest.starts_with("-}") {
            close(&mut open, &mut messages);
            continue;
        }
        match tag_of(rest) {
            Some((tag, value)) => {
                if tag == "20" {
                    let reuse = open.as_ref().is_some_and(|m| m.fields.is_empty());
                    if !reuse {
                        close(&mut open, &mut messages);
                        open = Some(Message {
                            line: number,
                            ..Message::default()
                        });
                    }
                }
                let Some(message) = open.as_mut() else {
                    return Err(PluginError::bad_input(
                        format!("line {number}"),
                        format!("field :{tag}: outside a message (no :20: before it)"),
                    ));
                };
                if message.fields.is_empty() {
                    message.line = number;
                }
                message.fields.push(Field {
                    tag: tag.to_string(),
                    line: number,
                    lines: vec![value.to_string()],
                });
            }
            None => match open.as_mut().map(|m| m.fields.last_mut()) {
                Some(Some(field)) => field.lines.push(rest.to_string()),
                Some(None) => {
                    return Err(PluginError::bad_input(
                        format!("line {number}"),
                        "text before the first field of a message",
                    ))
                }
                // Lines outside a message are bank preambles (ABN AMRO repeats `ABNANL2A`/`940` before each one).
                None => {}
            },
        }
    }
    close(&mut open, &mut messages);
    Ok(messages)
}

fn close(open: &mut Option<Message>, messages: &mut Vec<Message>) {
    if let Some(message) = open.take() {
        if !message.fields.is_empty() {
            messages.push(message);
        }
    }
}

/// `:61:rest` -> (`61`, `rest`); a tag is two digits and an optional upper-case letter between colons.
fn tag_of(line: &str) -> Option<(&str, &str)> {
    let inner = line.strip_prefix(':')?;
    let end = inner.find(':')?;
    let tag = &inner[..end];
    let bytes = tag.as_bytes();
    let valid = match bytes {
        [a, b] => a.is_ascii_digit() && b.is_ascii_digit(),
        [a, b, c] => a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_uppercase(),
        _ => false,
    };
    valid.then(|| (tag, &inner[end + 1..]))
}

/// `{2:I940...}` or `{2:O942...}` -> 940 / 942.
fn block_type(headers: &str) -> Option<u16> {
    let at = headers.find("{2:")?;
    headers.get(at + 4..at + 7)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_at_dashes_headers_and_new_reference_fields() {
        let text = "ABNANL2A\r\n940\r\n:20:A\r\n:25:1\r\n:86:x\r\ny\r\n-\r\n\
                    {1:F01BANK}{2:I942BANKXXXXN}{4:\r\n:20:B\r\n:25:2\r\n-}\r\n:20:C\r\n:25:3\r\n:20:D\r\n";
        let messages = split_messages(text).unwrap();
        let summary: Vec<(usize, Option<u16>, &str, usize)> = messages
            .iter()
            .map(|m| (m.line, m.block_type, m.reference(), m.fields.len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (3, None, "A", 3),
                (9, Some(942), "B", 2),
                (12, None, "C", 2),
                (14, None, "D", 1)
            ]
        );
        assert_eq!(messages[0].fields[2].lines, vec!["x", "y"]);
    }

    #[test]
    fn a_field_outside_a_message_is_an_error() {
        let err = split_messages(":25:123\n:20:A\n").unwrap_err();
        assert_eq!(err.location.as_deref(), Some("line 1"));
    }

    #[test]
    fn only_real_tags_start_fields() {
        assert_eq!(tag_of(":61:1811"), Some(("61", "1811")));
        assert_eq!(tag_of(":28C:00004"), Some(("28C", "00004")));
        assert_eq!(tag_of(":ab:x"), None);
        assert_eq!(tag_of(":123:x"), None);
        assert_eq!(tag_of("text :20: here"), None);
    }
}
