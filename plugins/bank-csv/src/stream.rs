//! [`CsvStream`]: the chunked parser behind `parse_feed`, giving the same records as [`parse`](crate::parse)
//! while holding only an unfinished row (and the occurrence counts of content-hash ids) between chunks.

use encoding_rs::{Decoder, DecoderResult, Encoding};
use settled_plugin_api::sdk::StreamParser;
use settled_plugin_api::{PluginError, Record};

use crate::{
    compile_dates, csv_error, detect, is_blank, DatevHeader, Detected, Layout, LineCounter,
    Preamble, RowGate, RowParser, RowState, Settings, HEADER_SEARCH_ROWS, RECOGNISE_BYTES,
};

/// Bytes held back before automatic encoding detection (it looks at the BOM and the first 128 bytes).
const DETECT_BYTES: usize = 4096;

enum Decoding {
    /// `auto`: the first bytes, kept until there are enough to detect the encoding.
    Detecting(Vec<u8>),
    /// `auto` without a BOM: UTF-8 so far. `tail` is a character cut by the chunk's end; `non_ascii` says
    /// whether any text so far was not ASCII (then a switch to Windows-1252 would change it).
    Utf8 { tail: Vec<u8>, non_ascii: bool },
    /// Replaces bad bytes, as `parse` does after detection.
    Lossy(Decoder),
    /// The profile names the encoding: bad bytes fail the file.
    Strict {
        decoder: Decoder,
        label: &'static Encoding,
    },
    /// The profile names an encoding that does not exist.
    Unknown(String),
}

/// A `bank-csv` file parsed chunk by chunk. Feed it any split of the file's bytes; the records of all
/// feeds and of [`StreamParser::finish`] are exactly those [`parse`](crate::parse) gives for the whole file.
pub struct CsvStream {
    name: String,
    settings: Settings,
    decoding: Decoding,
    /// Whether any byte was fed (an empty file is an error).
    any_bytes: bool,
    /// `\n` in the text decoded so far, for the line of binary data.
    newlines: usize,
    /// Lines of `skip_rows` still to drop.
    skip_left: usize,
    /// Decoded text not yet consumed: starts at a row boundary.
    text: String,
    /// The csv line number (counted from after the skipped lines, from 1) where `text` starts.
    line_base: u64,
    layout: Option<Layout>,
    /// Set with the layout: skips rows and holds back the trailing ones until the end.
    gate: Option<RowGate>,
    /// Rows that did not fit the profile as a header, and the first one's error.
    candidates: usize,
    first_error: Option<PluginError>,
    rows: RowState,
    /// No profile configured: the file's first bytes, kept until they show which profile reads it.
    waiting: Option<Vec<u8>>,
    /// The profile's `datev` preamble: line 1 as far as it arrived, until its end.
    preamble_line: Option<String>,
    /// The DATEV header, once read.
    datev: Option<DatevHeader>,
}

impl CsvStream {
    /// A parser for the file `name` with an instance's settings.
    pub fn new(name: &str, settings: &Settings) -> CsvStream {
        let profile = &settings.profile;
        let decoding = if profile.encoding.eq_ignore_ascii_case("auto") {
            Decoding::Detecting(Vec::new())
        } else {
            match Encoding::for_label(profile.encoding.as_bytes()) {
                Some(label) => Decoding::Strict {
                    decoder: label.new_decoder(),
                    label,
                },
                None => Decoding::Unknown(profile.encoding.clone()),
            }
        };
        CsvStream {
            name: name.to_string(),
            settings: settings.clone(),
            decoding,
            any_bytes: false,
            newlines: 0,
            skip_left: profile.skip_rows,
            text: String::new(),
            line_base: 1,
            layout: None,
            gate: None,
            candidates: 0,
            first_error: None,
            rows: RowState::default(),
            waiting: settings.recognise.then(Vec::new),
            preamble_line: (profile.preamble == Preamble::Datev).then(String::new),
            datev: None,
        }
    }

    /// Takes `chunk`; while the profile is still to be recognised, only keeps it.
    fn take(&mut self, chunk: &[u8], last: bool) -> Result<Vec<Record>, PluginError> {
        if let Some(head) = &mut self.waiting {
            head.extend_from_slice(chunk);
            if head.len() < RECOGNISE_BYTES && !last {
                return Ok(Vec::new());
            }
            let head = std::mem::take(head);
            self.waiting = None;
            if let Some(settings) = self.settings.for_file(&head) {
                *self = CsvStream::new(&self.name, &settings);
            }
            self.any_bytes = !head.is_empty();
            self.decode(&head, last)?;
        } else {
            self.decode(chunk, last)?;
        }
        if last {
            if let Some(line) = self.preamble_line.take() {
                self.read_preamble(&line)?;
            }
        }
        self.rows(last)
    }

    /// Reads the DATEV header line; its currency is the fixed one unless the settings name one.
    fn read_preamble(&mut self, line: &str) -> Result<(), PluginError> {
        let header = DatevHeader::read(line.trim_end_matches('\r'))?;
        let profile = &mut self.settings.profile;
        if profile.currency.is_none() && header.currency.is_some() {
            profile.currency.clone_from(&header.currency);
        }
        self.datev = Some(header);
        Ok(())
    }

    /// Decodes `chunk` (the last one when `last`) and appends the text to `self.text`.
    fn decode(&mut self, chunk: &[u8], last: bool) -> Result<(), PluginError> {
        let mut piece = String::new();
        if let Decoding::Detecting(head) = &mut self.decoding {
            head.extend_from_slice(chunk);
            if head.len() < DETECT_BYTES && !last {
                return Ok(());
            }
            let head = std::mem::take(head);
            let (decoding, skip) = match detect(&head) {
                Detected::Bom(encoding, bom) => (
                    Decoding::Lossy(encoding.new_decoder_without_bom_handling()),
                    bom,
                ),
                Detected::Utf16(encoding) => (
                    Decoding::Lossy(encoding.new_decoder_without_bom_handling()),
                    0,
                ),
                Detected::Utf8OrWindows1252 => (
                    Decoding::Utf8 {
                        tail: Vec::new(),
                        non_ascii: false,
                    },
                    0,
                ),
            };
            self.decoding = decoding;
            self.decode_into(&head[skip..], last, &mut piece)?;
        } else {
            self.decode_into(chunk, last, &mut piece)?;
        }
        self.take_text(&piece)
    }

    fn decode_into(&mut self, src: &[u8], last: bool, out: &mut String) -> Result<(), PluginError> {
        match &mut self.decoding {
            Decoding::Detecting(_) => Ok(()),
            Decoding::Unknown(label) => Err(PluginError::bad_config(
                "profile.encoding",
                format!("unknown encoding `{label}`"),
            )),
            Decoding::Lossy(decoder) => {
                lossy(decoder, src, last, out);
                Ok(())
            }
            Decoding::Strict { decoder, label } => {
                let label = *label;
                let start = out.len();
                if strict(decoder, src, last, out) {
                    return Ok(());
                }
                // As `parse`: the line of the first bad byte for UTF-8, else the file as a whole.
                let line = if label == encoding_rs::UTF_8 {
                    self.newlines + count_newlines(&out[start..]) + 1
                } else {
                    1
                };
                Err(PluginError::bad_input(
                    format!("line {line}"),
                    format!("bytes that are not {}", label.name()),
                ))
            }
            Decoding::Utf8 { tail, non_ascii } => {
                let joined;
                let data: &[u8] = if tail.is_empty() {
                    src
                } else {
                    tail.extend_from_slice(src);
                    joined = std::mem::take(tail);
                    &joined
                };
                let (valid, rest) = match std::str::from_utf8(data) {
                    Ok(text) => (text, None),
                    Err(e) => {
                        let valid = e.valid_up_to();
                        let text = std::str::from_utf8(&data[..valid]).unwrap_or_default();
                        (text, Some((valid, e.error_len().is_none() && !last)))
                    }
                };
                match rest {
                    None => {
                        *non_ascii |= !valid.is_ascii();
                        out.push_str(valid);
                        Ok(())
                    }
                    Some((valid_len, true)) => {
                        // A character cut by the chunk's end: its first bytes wait for the rest.
                        *non_ascii |= !valid.is_ascii();
                        out.push_str(valid);
                        *tail = data[valid_len..].to_vec();
                        Ok(())
                    }
                    Some(_) if !*non_ascii && valid.is_ascii() => {
                        // `parse` reads a file that is not all UTF-8 as Windows-1252; so far everything was
                        // ASCII, which reads the same in both, so switching now changes nothing before.
                        let mut decoder =
                            encoding_rs::WINDOWS_1252.new_decoder_without_bom_handling();
                        lossy(&mut decoder, data, last, out);
                        self.decoding = Decoding::Lossy(decoder);
                        Ok(())
                    }
                    Some(_) => {
                        let line = self.newlines + count_newlines(valid) + 1;
                        Err(PluginError::bad_input(
                            format!("line {line}"),
                            "bytes that are not utf-8 after non-ascii utf-8 text: set the profile's `encoding` to import this file",
                        ))
                    }
                }
            }
        }
    }

    /// Checks decoded text for binary data, drops the `skip_rows` lines and queues the rest for csv.
    fn take_text(&mut self, piece: &str) -> Result<(), PluginError> {
        let binary = piece
            .bytes()
            .position(|b| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n' | 0x0c));
        if let Some(p) = binary {
            let line = self.newlines + count_newlines(&piece[..p]) + 1;
            return Err(PluginError::bad_input(
                format!("line {line}"),
                "binary data: this is not a text csv export",
            ));
        }
        self.newlines += count_newlines(piece);
        let mut rest = piece;
        if let Some(line) = &mut self.preamble_line {
            match rest.find('\n') {
                Some(nl) => {
                    line.push_str(&rest[..nl]);
                    rest = &rest[nl + 1..];
                    let line = std::mem::take(line);
                    self.preamble_line = None;
                    self.read_preamble(&line)?;
                }
                None => {
                    line.push_str(rest);
                    rest = "";
                }
            }
        }
        while self.skip_left > 0 && !rest.is_empty() {
            match rest.find('\n') {
                Some(nl) => {
                    rest = &rest[nl + 1..];
                    self.skip_left -= 1;
                }
                None => rest = "",
            }
        }
        self.text.push_str(rest);
        Ok(())
    }

    /// Reads the complete rows of `self.text` (all of it when `last`) and keeps the unfinished one.
    fn rows(&mut self, last: bool) -> Result<Vec<Record>, PluginError> {
        let profile = &self.settings.profile;
        let date_formats = compile_dates(profile)?;
        let base = usize::try_from(self.line_base - 1).unwrap_or(usize::MAX);
        let preamble = usize::from(profile.preamble == Preamble::Datev);
        let offset = (profile.skip_rows + preamble).saturating_add(base);
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(profile.delimiter as u8)
            .has_headers(false)
            .flexible(true)
            .from_reader(self.text.as_bytes());
        let mut record = csv::ByteRecord::new();
        let mut lines = LineCounter::default();
        let text = self.text.as_bytes();
        let mut line_of = |position: Option<&csv::Position>| {
            lines
                .line(text, position.map_or(0, csv::Position::byte))
                .saturating_add(offset)
        };
        let mut out = Vec::new();
        let mut consumed = 0usize;
        loop {
            let more = reader
                .read_byte_record(&mut record)
                .map_err(|e| csv_error(&e, line_of(e.position())))?;
            if !more {
                break;
            }
            let end = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
            // A row that runs to the end of the text may go on in the next chunk (or be a quoted field
            // that does): only a row followed by more text is known to be complete.
            if !last && end >= self.text.len() {
                break;
            }
            consumed = end;
            if is_blank(&record) {
                continue;
            }
            let line = line_of(record.position());
            match (&self.layout, &mut self.gate) {
                (Some(layout), Some(gate)) => {
                    let mut rows = RowParser {
                        file: &self.name,
                        profile,
                        layout,
                        date_formats: &date_formats,
                        datev: self.datev.as_ref(),
                        state: &mut self.rows,
                    };
                    gate.admit(&record, line, |row, line| {
                        out.extend(rows.row(row, line)?.map(Record::Payment));
                        Ok(())
                    })?;
                }
                _ => match Layout::from_header(&record, profile, line) {
                    Ok(layout) => {
                        self.gate = Some(RowGate::new(profile, &layout)?);
                        self.layout = Some(layout);
                    }
                    Err(e) => {
                        self.candidates += 1;
                        let first = self.first_error.get_or_insert(e);
                        if self.candidates >= HEADER_SEARCH_ROWS {
                            return Err(first.clone());
                        }
                    }
                },
            }
        }
        drop(reader);
        let consumed_lines = count_newlines(self.text.get(..consumed).unwrap_or_default());
        self.text.drain(..consumed);
        self.line_base += u64::try_from(consumed_lines).unwrap_or(u64::MAX);
        Ok(out)
    }
}

impl StreamParser for CsvStream {
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Record>, PluginError> {
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        self.any_bytes = true;
        self.take(chunk, false)
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<Record>, PluginError> {
        if !self.any_bytes {
            return Err(PluginError::bad_input("file", "empty file"));
        }
        let records = self.take(&[], true)?;
        if self.layout.is_none() {
            return Err(self.first_error.take().unwrap_or_else(|| {
                PluginError::bad_input("file", "no header row: the file has only blank lines")
            }));
        }
        Ok(records)
    }
}

fn count_newlines(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count()
}

/// Decodes with replacement of bad bytes.
fn lossy(decoder: &mut Decoder, mut src: &[u8], last: bool, out: &mut String) {
    loop {
        out.reserve(
            decoder
                .max_utf8_buffer_length(src.len())
                .unwrap_or(src.len().saturating_mul(3).saturating_add(16)),
        );
        let (result, read, _) = decoder.decode_to_string(src, out, last);
        src = &src[read..];
        if matches!(result, encoding_rs::CoderResult::InputEmpty) {
            return;
        }
    }
}

/// Decodes without replacement; false at the first bad byte (the text before it is in `out`).
fn strict(decoder: &mut Decoder, mut src: &[u8], last: bool, out: &mut String) -> bool {
    loop {
        out.reserve(
            decoder
                .max_utf8_buffer_length_without_replacement(src.len())
                .unwrap_or(src.len().saturating_mul(3).saturating_add(16)),
        );
        let (result, read) = decoder.decode_to_string_without_replacement(src, out, last);
        src = &src[read..];
        match result {
            DecoderResult::InputEmpty => return true,
            DecoderResult::OutputFull => {}
            DecoderResult::Malformed(..) => return false,
        }
    }
}

#[cfg(test)]
mod tests;
