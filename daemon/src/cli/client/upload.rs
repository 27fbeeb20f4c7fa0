//! Streaming a file as a request body, with a progress line on stderr for big files.
//!
//! The file is read in chunks as the connection takes them, so a large statement never sits in memory whole,
//! and the bytes read are a fair measure of the bytes sent.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::anyhow;
use tokio::io::{AsyncRead, ReadBuf};

/// Files at least this big report progress; smaller ones are sent before anyone would read it.
const PROGRESS_MIN_BYTES: u64 = 1024 * 1024;

/// The file as a streaming body, and its length for `Content-Length`.
pub(super) async fn file_body(file: &Path) -> anyhow::Result<(reqwest::Body, u64)> {
    let handle = tokio::fs::File::open(file)
        .await
        .map_err(|e| anyhow!("reading {}: {e}", file.display()))?;
    let len = handle
        .metadata()
        .await
        .map_err(|e| anyhow!("reading {}: {e}", file.display()))?
        .len();
    let label = file.display().to_string();
    let reader = Progress {
        inner: handle,
        sent: 0,
        total: len,
        reported: 0,
        report: (len >= PROGRESS_MIN_BYTES).then(|| {
            Box::new(move |sent: u64, total: u64| {
                eprintln!(
                    "uploading {label}: {}% ({} of {})",
                    percent(sent, total),
                    size(sent),
                    size(total)
                );
            }) as Reporter
        }),
    };
    let stream = tokio_util::io::ReaderStream::new(reader);
    Ok((reqwest::Body::wrap_stream(stream), len))
}

type Reporter = Box<dyn FnMut(u64, u64) + Send>;

/// Counts bytes read through it and reports each newly reached tenth of the total.
struct Progress<R> {
    inner: R,
    sent: u64,
    total: u64,
    /// Last tenth reported (0..=10).
    reported: u64,
    report: Option<Reporter>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Progress<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = u64::try_from(buf.filled().len().saturating_sub(before)).unwrap_or(u64::MAX);
            let this = &mut *self;
            this.sent = this.sent.saturating_add(read);
            if let Some(tenth) = next_report(this.sent, this.total, this.reported) {
                this.reported = tenth;
                if let Some(report) = this.report.as_mut() {
                    report(this.sent, this.total);
                }
            }
        }
        polled
    }
}

/// The tenth of the upload newly reached, if `sent` crossed one since `reported`.
fn next_report(sent: u64, total: u64, reported: u64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let tenth = u64::try_from(u128::from(sent.min(total)) * 10 / u128::from(total)).unwrap_or(10);
    (tenth > reported).then_some(tenth)
}

fn percent(sent: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    u64::try_from(u128::from(sent.min(total)) * 100 / u128::from(total)).unwrap_or(100)
}

/// Bytes as MiB with one decimal, in integer arithmetic.
fn size(bytes: u64) -> String {
    let tenths = u128::from(bytes) * 10 / (1024 * 1024);
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    #[test]
    fn reports_each_tenth_once() {
        let check = |sent, total, reported, expected| {
            assert_eq!(
                next_report(sent, total, reported),
                expected,
                "sent {sent} of {total} after {reported}"
            );
        };
        check(0, 100, 0, None);
        check(9, 100, 0, None);
        check(10, 100, 0, Some(1));
        check(15, 100, 1, None);
        check(35, 100, 1, Some(3));
        check(100, 100, 9, Some(10));
        check(100, 100, 10, None);
        check(5, 0, 0, None);
    }

    #[test]
    fn sizes_and_percentages_read_well() {
        assert_eq!(size(0), "0.0 MiB");
        assert_eq!(size(1024 * 1024 * 3 / 2), "1.5 MiB");
        assert_eq!(size(200 * 1024 * 1024), "200.0 MiB");
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(3, 3), 100);
        assert_eq!(percent(0, 0), 100);
    }

    #[tokio::test]
    async fn progress_reader_passes_bytes_through_and_reports_ten_times() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let mut reader = Progress {
            inner: &data[..],
            sent: 0,
            total: 1000,
            reported: 0,
            report: Some(Box::new(move |sent, _| {
                if let Ok(mut v) = sink.lock() {
                    v.push(sent);
                }
            })),
        };
        let mut copied = Vec::new();
        let mut chunk = [0u8; 37];
        loop {
            let n = reader.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            copied.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(copied, data);
        let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 10, "reports at {seen:?}");
        assert_eq!(seen.last(), Some(&1000));
    }
}
