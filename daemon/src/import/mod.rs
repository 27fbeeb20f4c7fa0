//! The file import pipeline: sniff, parse (whole or streamed), check every record against the engine's refusals,
//! commit, sum up. One pipeline below three transports: the HTTP upload (`api/imports.rs`), the file inbox
//! (`inbox.rs`) and mailed attachments (`mailbox/`). They differ only in where the bytes come from and how they
//! report; every one of them hands over a file on disk and gets an [`ImportSummary`] or an [`ImportError`].
//!
//! Small files are parsed in one call; files above `[imports] stream_above_kib` stream through a parse session
//! twice, once to validate the whole file and once to commit it while the plugin parses the next piece, so memory
//! is bounded and a bad file records nothing.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use settled_plugin_api::{FileRequest, Record, Role, SniffRequest};

use crate::engine::{refusal, Engine, EngineError, Failure, Import, ImportJournal, ImportSummary};
use crate::plugin_host::{CallError, PluginHost};

/// Why a file was not imported. Nothing of it was recorded, except where a commit failed part way (`Engine`): then
/// the records committed before dedupe when the file is read again.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// No file connector claims the file.
    #[error("no connector recognises `{0}`; pass --plugin to choose one (see `settled plugins`)")]
    Unrecognised(String),
    /// The connector asked for is not a file connector.
    #[error("no file connector named `{0}`")]
    NoFileConnector(String),
    /// The plugin refused the file (bad input, naming where) or could not be called.
    #[error("{}", plugin_message(.0))]
    Plugin(CallError),
    /// The engine refuses some records and the connector does not allow partial files; the summary lists each.
    #[error("{message}")]
    Refused {
        /// One line per refused record (the first ones).
        message: String,
        /// The file's summary, listing every refused record.
        summary: Box<ImportSummary>,
    },
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The engine or the store failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A task of the pipeline ended abnormally.
    #[error("{0}")]
    Internal(String),
}

impl ImportError {
    /// The summary listing refused records, for [`ImportError::Refused`].
    pub fn summary(&self) -> Option<&ImportSummary> {
        match self {
            ImportError::Refused { summary, .. } => Some(summary),
            _ => None,
        }
    }

    /// Whether the file itself is at fault (so reading it again gives the same answer), rather than the environment
    /// (a plugin unavailable, the store, the disk).
    pub fn is_bad_file(&self) -> bool {
        match self {
            ImportError::Unrecognised(_)
            | ImportError::NoFileConnector(_)
            | ImportError::Refused { .. } => true,
            ImportError::Plugin(e) => matches!(e, CallError::Plugin(_)),
            ImportError::Engine(EngineError::Domain(_)) => true,
            _ => false,
        }
    }
}

/// A plugin's own error with its location first; other call errors as they are.
fn plugin_message(e: &CallError) -> String {
    match e {
        CallError::Plugin(p) => match &p.location {
            Some(loc) => format!("{loc}: {}", p.message),
            None => p.message.clone(),
        },
        other => other.to_string(),
    }
}

/// Bytes read from a streamed file per plugin call. Up to four pieces are in flight (one parsing, two queued, one
/// committing), and a piece's decoded records take about eight times its bytes: 1 MiB pieces held ~37 MiB of records
/// during a bulk import; 256 KiB pieces hold a quarter of that, with no change in speed beyond the machine's spread (a
/// plugin call costs microseconds against the milliseconds of parsing a piece).
const CHUNK: usize = 256 << 10;

/// Refused records listed one by one in the log and in a file's error; the rest are summed up.
const LISTED: usize = 20;

/// What the pipeline works with: the engine, the plugins and the `/metrics` counter of committed records.
#[derive(Clone, Copy)]
pub struct Pipeline<'a> {
    /// The engine committing the records.
    pub engine: &'a Engine,
    /// The file connectors.
    pub host: &'a PluginHost,
    /// Records committed from connectors (`settled_records_ingested_total`).
    pub ingested: &'a AtomicU64,
}

impl Pipeline<'_> {
    /// Sniff (unless `forced` names the connector), parse and ingest one file from disk.
    pub async fn import(
        &self,
        name: &str,
        forced: Option<&str>,
        path: &Path,
    ) -> Result<ImportSummary, ImportError> {
        self.import_journaled(name, forced, path, None).await
    }

    /// [`Pipeline::import`], keeping `import`'s record in step with every committed chunk when given.
    pub async fn import_journaled(
        &self,
        name: &str,
        forced: Option<&str>,
        path: &Path,
        import: Option<&Import>,
    ) -> Result<ImportSummary, ImportError> {
        use tokio::io::AsyncReadExt;
        let io = |error| ImportError::Io {
            path: path.display().to_string(),
            error,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let mut head = vec![0u8; 4096.min(size as usize)];
        file.read_exact(&mut head).await.map_err(io)?;
        let (instance, plugin) = self.choose_instance(name, forced, &head).await?;
        let allow_partial = self
            .host
            .instances()
            .iter()
            .any(|i| i.name == instance && i.allow_partial);
        let journal = import.map(|i| ImportJournal::new(i, &instance));
        if size <= self.engine.config().imports.stream_above_kib * 1024 {
            let started = std::time::Instant::now();
            let content = tokio::fs::read(path).await.map_err(io)?;
            let reply = self
                .host
                .parse(
                    &instance,
                    FileRequest {
                        name: name.to_string(),
                        content,
                    },
                )
                .await
                .map_err(ImportError::Plugin)?;
            let parsed = started.elapsed();
            let n = reply.records.len() as u64;
            let refused = refusals(1, &reply.records);
            self.refuse_file_if((&instance, &plugin), name, allow_partial, n, refused)?;
            let mut run = self.engine.begin_ingest(&instance, &plugin, Some(name));
            if let Some(journal) = journal {
                run = run.with_journal(journal);
            }
            run.add(reply.records)?;
            let summary = run.finish().await?;
            self.ingested
                .fetch_add(n - summary.failed.len() as u64, Ordering::Relaxed);
            tracing::info!(file = %name, connector = %instance, records = n, parse_ms = parsed.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64, "file imported");
            return Ok(summary);
        }
        // Pass 1: the whole file must parse, and the engine accept each record, before anything is recorded.
        let mut validated = 0u64;
        let mut refused = Vec::new();
        self.stream_file(&instance, name, path, |records| {
            refused.extend(refusals(validated + 1, &records));
            validated += records.len() as u64;
            Ok(())
        })
        .await?;
        self.refuse_file_if(
            (&instance, &plugin),
            name,
            allow_partial,
            validated,
            refused,
        )?;
        // Pass 2: commit as the records come.
        let mut run = self.engine.begin_ingest(&instance, &plugin, Some(name));
        if let Some(journal) = journal {
            run = run.with_journal(journal);
        }
        self.stream_file(&instance, name, path, |records| {
            run.add(records).map_err(ImportError::from)
        })
        .await?;
        let summary = run.finish().await?;
        if summary.records_read != validated {
            tracing::warn!(file = %name, validated, committed = summary.records_read, "the plugin produced different records on the second pass");
        }
        self.ingested.fetch_add(
            summary.records_read - summary.failed.len() as u64,
            Ordering::Relaxed,
        );
        Ok(summary)
    }

    /// The file-role instance that claims a file most confidently (or the forced one): `(instance, plugin)`.
    pub async fn choose_instance(
        &self,
        name: &str,
        forced: Option<&str>,
        content: &[u8],
    ) -> Result<(String, String), ImportError> {
        let candidates: Vec<_> = self
            .host
            .instances()
            .into_iter()
            .filter(|i| i.roles.contains(&Role::File))
            .collect();
        if let Some(forced) = forced {
            return candidates
                .into_iter()
                .find(|i| i.name == forced)
                .map(|i| (i.name, i.plugin))
                .ok_or_else(|| ImportError::NoFileConnector(forced.to_string()));
        }
        let head = content[..content.len().min(4096)].to_vec();
        let mut best: Option<(u8, String, String)> = None;
        for c in candidates {
            let reply = self
                .host
                .sniff(
                    &c.name,
                    SniffRequest {
                        name: name.to_string(),
                        head: head.clone(),
                    },
                )
                .await;
            match reply {
                Ok(r) if r.confidence > 0 && best.as_ref().is_none_or(|b| r.confidence > b.0) => {
                    best = Some((r.confidence, c.name, c.plugin));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(connector = %c.name, error = %e, "sniff failed"),
            }
        }
        best.map(|(_, instance, plugin)| (instance, plugin))
            .ok_or_else(|| ImportError::Unrecognised(name.to_string()))
    }

    /// Report a file's refused records; unless its instance allows partial files, the file is refused with them.
    fn refuse_file_if(
        &self,
        (instance, plugin): (&str, &str),
        name: &str,
        allow_partial: bool,
        records_read: u64,
        refused: Vec<Failure>,
    ) -> Result<(), ImportError> {
        if refused.is_empty() {
            return Ok(());
        }
        report_refused(self.host, instance, plugin, Some(name), &refused);
        if allow_partial {
            return Ok(());
        }
        Err(refused_file(name, instance, records_read, refused))
    }

    async fn stream_file(
        &self,
        instance: &str,
        name: &str,
        path: &Path,
        mut sink: impl FnMut(Vec<Record>) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        use tokio::io::AsyncReadExt;
        let io = |path: &Path, error| ImportError::Io {
            path: path.display().to_string(),
            error,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(|e| io(path, e))?;
        let mut session = self
            .host
            .parse_begin(instance, name)
            .await
            .map_err(ImportError::Plugin)?;
        // The plugin parses the next piece while the engine commits the last one: on two cores the parse is nearly free.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<Record>, ImportError>>(2);
        let path = path.to_path_buf();
        let producer = tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        session.abort().await;
                        let _ = tx.send(Err(io(&path, e))).await;
                        return;
                    }
                };
                if n == 0 {
                    break;
                }
                match session.feed(&buf[..n]).await {
                    Ok(records) => {
                        if tx.send(Ok(records)).await.is_err() {
                            // The consumer gave up (a commit failed): nothing more to parse.
                            session.abort().await;
                            return;
                        }
                    }
                    Err(e) => {
                        session.abort().await;
                        let _ = tx.send(Err(ImportError::Plugin(e))).await;
                        return;
                    }
                }
            }
            let _ = tx
                .send(session.finish().await.map_err(ImportError::Plugin))
                .await;
        });
        let mut outcome = Ok(());
        // Committing a piece is seconds of CPU on a large file. `block_in_place` hands this worker's other tasks (the
        // producer above, woken by our `recv`, sits in its queue) to another worker meanwhile: without it the plugin call
        // waiting there could run into its timeout before it ever ran.
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        while let Some(piece) = rx.recv().await {
            let committed = piece.and_then(|records| {
                if multi_thread {
                    tokio::task::block_in_place(|| sink(records))
                } else {
                    sink(records)
                }
            });
            if let Err(e) = committed {
                outcome = Err(e);
                break;
            }
        }
        drop(rx);
        if let Err(join) = producer.await {
            outcome = outcome.and(Err(ImportError::Internal(format!(
                "parsing {name}: {join}"
            ))));
        }
        outcome
    }
}

/// The records the engine refuses, numbered from `first`.
pub fn refusals(first: u64, records: &[Record]) -> Vec<Failure> {
    (first..)
        .zip(records)
        .filter_map(|(index, record)| refusal(index, record))
        .collect()
}

/// Counts refused records against their instance and logs them.
pub fn report_refused(
    host: &PluginHost,
    instance: &str,
    plugin: &str,
    file: Option<&str>,
    refused: &[Failure],
) {
    host.count_refused(instance, refused.len() as u64);
    for f in refused.iter().take(LISTED) {
        tracing::warn!(connector = %instance, %plugin, file = file.unwrap_or("-"), record = f.record,
            location = f.location.as_deref().unwrap_or("-"), field = f.field.as_deref().unwrap_or("-"),
            reason = %f.reason, "record refused");
    }
    if refused.len() > LISTED {
        tracing::warn!(connector = %instance, %plugin, file = file.unwrap_or("-"),
            more = refused.len() - LISTED, "more records refused");
    }
}

/// A file not imported because the engine refuses some of its records; the summary lists each of them.
fn refused_file(
    name: &str,
    instance: &str,
    records_read: u64,
    refused: Vec<Failure>,
) -> ImportError {
    let mut message = format!(
        "{} of {records_read} records refused, nothing was imported (allow_partial is off for connector `{instance}`)",
        refused.len()
    );
    for f in refused.iter().take(LISTED) {
        message.push_str(&format!("\n  {}", describe(f)));
    }
    if refused.len() > LISTED {
        message.push_str(&format!(
            "\n  and {} more, listed in the summary",
            refused.len() - LISTED
        ));
    }
    let summary = ImportSummary {
        file: Some(name.to_string()),
        plugin: instance.to_string(),
        records_read,
        failed: refused,
        ..ImportSummary::default()
    };
    ImportError::Refused {
        message,
        summary: Box::new(summary),
    }
}

fn describe(f: &Failure) -> String {
    match &f.location {
        Some(location) => format!("record {} ({location}): {}", f.record, f.reason),
        None => format!("record {}: {}", f.record, f.reason),
    }
}
