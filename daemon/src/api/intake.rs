//! Connector intake over HTTP (`/intake/{instance}`) and file imports (`POST /v1/imports`).
//!
//! The raw request goes to the instance's plugin; its records are committed through the engine; only then does the
//! sender get its 2xx. A rejection records nothing, and neither does a record the engine refuses: the sender gets a 422
//! naming the record and field (and a file goes to `failed/`), unless the instance allows partial files.

use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use settled_plugin_api::{FileRequest, IntakeOutcome, IntakeRequest, Role, SniffRequest};

use super::{ApiError, AppState};
use crate::engine::{refusal, Failure, Import, ImportCounts, ImportJournal, ImportSummary};
use crate::plugin_host::{CallError, PluginHost};

pub(super) async fn intake(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    let host = host(&state)?;
    let instance = params
        .iter()
        .find(|(k, _)| k == "instance")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let rest = params
        .iter()
        .find(|(k, _)| k == "rest")
        .map(|(_, v)| format!("/{v}"));
    let info = host
        .instances()
        .into_iter()
        .find(|i| i.name == instance && i.roles.contains(&Role::Intake))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no intake connector named `{instance}`"),
            )
        })?;
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let remote_addr = peer.map(|p| p.to_string()).unwrap_or_default();
    // The sender's limits before anything of its body is read or any plugin called.
    let limits = state.limits.connector(&instance);
    if let Some(peer) = peer {
        limits.check_rate(&instance, peer.ip())?;
    }
    let _slot = state.limits.intake_slot(&instance)?;
    let (parts, body) = req.into_parts();
    let body = limits.read_body(&instance, &parts.headers, body).await?;
    let request = IntakeRequest {
        method: parts.method.to_string(),
        path: rest.unwrap_or_else(|| "/".into()),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).to_string(),
                )
            })
            .collect(),
        body: body.to_vec(),
        remote_addr,
        received_at: state.engine.now().timestamp(),
    };
    let outcome = host
        .intake(&instance, request)
        .await
        .map_err(plugin_error)?;
    match outcome {
        IntakeOutcome::Reject { status, reason } => {
            tracing::info!(connector = %instance, %status, %reason, "intake rejected");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            Err(ApiError::new(status, "rejected", reason))
        }
        IntakeOutcome::Accept { records, reply } => {
            let refused = refusals(1, &records);
            if let Some(first) = refused.first() {
                report_refused(host, &instance, &info.plugin, None, &refused);
                let message = match records.len() {
                    1 => format!("connector `{instance}`: the record was refused, nothing was recorded: {}", first.reason),
                    n => format!(
                        "connector `{instance}`: {} of {n} records refused, nothing was recorded; the first, record {}: {}",
                        refused.len(),
                        first.record,
                        first.reason
                    ),
                };
                return Err(
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", message)
                        .with_field(first.field.clone()),
                );
            }
            let n = records.len() as u64;
            let summary = state
                .engine
                .ingest(&instance, &info.plugin, None, records)
                .await?;
            state
                .metrics
                .records_ingested
                .fetch_add(n, Ordering::Relaxed);
            match reply {
                Some(reply) => {
                    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
                    let mut response = (status, reply.body).into_response();
                    for (k, v) in reply.headers {
                        if let (Ok(k), Ok(v)) = (
                            HeaderName::try_from(k.as_str()),
                            HeaderValue::try_from(v.as_str()),
                        ) {
                            response.headers_mut().insert(k, v);
                        }
                    }
                    Ok(response)
                }
                None => Ok(Json(json!({
                    "accepted": summary.records_read,
                    "new": summary.new,
                    "duplicates": summary.duplicates,
                    "ids": summary.ids,
                }))
                .into_response()),
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ImportQuery {
    /// The file's name (for sniffing and positions).
    name: String,
    /// Force a connector instance instead of sniffing.
    #[serde(default)]
    plugin: Option<String>,
}

pub(super) async fn import(
    State(state): State<AppState>,
    Query(q): Query<ImportQuery>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    host(&state)?;
    // Spool the upload to disk as it arrives, so a large statement never sits in memory whole. Once whole and on disk
    // it is the import's journal: recorded before any record is committed, removed only after the last commit is durable.
    let spool_dir = spool_dir(&state);
    tokio::fs::create_dir_all(&spool_dir)
        .await
        .map_err(|e| internal(format!("creating {}: {e}", spool_dir.display())))?;
    let spool_name = format!(
        "upload-{}-{}",
        std::process::id(),
        state.engine.now().timestamp_nanos_opt().unwrap_or_default()
    );
    let spool = spool_dir.join(&spool_name);
    let recorded = async {
        spool_body(body, &spool).await?;
        let import = state
            .engine
            .import_started(&q.name, q.plugin.as_deref(), &spool_name)
            .await?;
        Ok::<_, ApiError>(import)
    }
    .await;
    let import = match recorded {
        Ok(import) => import,
        Err(e) => {
            let _ = tokio::fs::remove_file(&spool).await;
            return Err(e);
        }
    };
    // The import runs on its own task, so a client that hangs up does not cut it short.
    let task = tokio::spawn({
        let state = state.clone();
        async move { run_import(&state, &import, false).await }
    });
    let summary = task
        .await
        .map_err(|e| internal(format!("importing {}: {e}", q.name)))??;
    Ok(Json(summary).into_response())
}

/// Where uploads are spooled: `<data_dir>/spool`.
fn spool_dir(state: &AppState) -> std::path::PathBuf {
    state.engine.config().data_dir().join("spool")
}

/// Import a recorded upload from its spool file, record how it ended and remove the spool file once that is durable.
/// A resumed import that fails for a reason of ours or of the environment (a 5xx: a plugin unavailable, the store)
/// keeps its spool file and its state, to be tried again at the next start.
async fn run_import(
    state: &AppState,
    import: &Import,
    resuming: bool,
) -> Result<ImportSummary, ApiError> {
    let host = host(state)?;
    let spool_name = import.spool.as_deref().ok_or_else(|| {
        internal(format!(
            "import {} names no spooled upload; this is a bug, please report it",
            import.id
        ))
    })?;
    let path = spool_dir(state).join(spool_name);
    let result = import_file(
        state,
        host,
        &import.file,
        import.connector.as_deref(),
        &path,
        Some(import),
    )
    .await;
    let recorded = match &result {
        Ok(summary) => {
            let counts = import.counts + ImportCounts::from(summary);
            state.engine.import_finished(&import.id, counts).await
        }
        Err(e) if resuming && e.status().is_server_error() => {
            tracing::warn!(import = %import.id, file = %import.file, error = %e.message(), "resumed import failed; it is tried again at the next start");
            return result;
        }
        Err(e) => state.engine.import_failed(&import.id, e.message()).await,
    };
    if let Err(e) = recorded {
        tracing::error!(import = %import.id, error = %e, "cannot record how an import ended; it is resumed at the next start");
        return Err(e.into());
    }
    if let Err(e) = tokio::fs::remove_file(&path).await {
        tracing::warn!(file = %path.display(), error = %e, "cannot remove a finished import's spool file");
    }
    result
}

/// At start-up, before uploads are accepted: the imports a stop interrupted, and the spool files none of them names
/// (uploads cut off before they were recorded, or finished imports whose spool file was not removed yet) removed.
pub fn unfinished_imports(state: &AppState) -> Vec<Import> {
    let imports = match state.engine.unfinished_imports() {
        Ok(imports) => imports,
        Err(e) => {
            tracing::error!(error = %e, "cannot list unfinished imports; spool files are kept");
            return Vec::new();
        }
    };
    let named: std::collections::HashSet<&str> =
        imports.iter().filter_map(|i| i.spool.as_deref()).collect();
    let dir = spool_dir(state);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if named.contains(name.as_str()) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed an upload that was cut off before it was recorded")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a stale spool file")
                }
            }
        }
    }
    imports
}

/// Finish the imports a stop interrupted, from their spool files (records committed before the stop dedupe).
pub async fn resume_imports(
    state: AppState,
    imports: Vec<Import>,
    cancel: tokio_util::sync::CancellationToken,
) {
    for import in imports {
        let spooled = import
            .spool
            .as_deref()
            .map(|name| spool_dir(&state).join(name))
            .filter(|path| path.exists());
        if spooled.is_none() {
            let why =
                "interrupted by a stop, and its spooled upload is gone; upload the file again";
            if let Err(e) = state.engine.import_failed(&import.id, why).await {
                tracing::error!(import = %import.id, error = %e, "cannot record a lost import");
            }
            continue;
        }
        let import = match state.engine.import_resumed(&import.id).await {
            Ok(import) => import,
            Err(e) => {
                tracing::error!(import = %import.id, error = %e, "cannot resume an import");
                continue;
            }
        };
        tracing::info!(import = %import.id, file = %import.file, committed_before = import.counts.records_read, "resuming an import a stop interrupted");
        tokio::select! {
            _ = cancel.cancelled() => return,
            result = run_import(&state, &import, true) => match result {
                Ok(summary) => tracing::info!(import = %import.id, file = %import.file, new = summary.new, "resumed import finished"),
                Err(e) => tracing::warn!(import = %import.id, file = %import.file, error = %e.message(), "resumed import did not finish"),
            },
        }
    }
}

/// Largest accepted upload: 4 GiB.
const MAX_UPLOAD: u64 = 4 << 30;

async fn spool_body(body: axum::body::Body, path: &std::path::Path) -> Result<(), ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| internal(format!("creating {}: {e}", path.display())))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(None, format!("reading the upload: {e}")))?;
        total += chunk.len() as u64;
        if total > MAX_UPLOAD {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "uploads are limited to 4 GiB",
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| internal(format!("writing {}: {e}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| internal(format!("writing {}: {e}", path.display())))?;
    file.sync_all()
        .await
        .map_err(|e| internal(format!("syncing {}: {e}", path.display())))?;
    // The file's name must survive a power cut too: it is what the import record points at.
    if let Some(dir) = path.parent() {
        let sync_dir = async { tokio::fs::File::open(dir).await?.sync_all().await };
        sync_dir
            .await
            .map_err(|e| internal(format!("syncing {}: {e}", dir.display())))?;
    }
    Ok(())
}

fn internal(message: String) -> ApiError {
    tracing::error!(%message, "import failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

const CHUNK: usize = 1 << 20;

/// Sniff (unless `forced`), parse and ingest one file from disk. Shared by the import endpoint and the file inbox.
pub async fn import_path(
    state: &AppState,
    host: &PluginHost,
    name: &str,
    forced: Option<&str>,
    path: &std::path::Path,
) -> Result<ImportSummary, ApiError> {
    import_file(state, host, name, forced, path, None).await
}

/// [`import_path`], keeping `import`'s record in step with every committed chunk when given.
async fn import_file(
    state: &AppState,
    host: &PluginHost,
    name: &str,
    forced: Option<&str>,
    path: &std::path::Path,
    import: Option<&Import>,
) -> Result<ImportSummary, ApiError> {
    use tokio::io::AsyncReadExt;
    let io = |e: std::io::Error| internal(format!("reading {}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let size = file.metadata().await.map_err(io)?.len();
    let mut head = vec![0u8; 4096.min(size as usize)];
    file.read_exact(&mut head).await.map_err(io)?;
    let (instance, plugin) = choose_instance(host, name, forced, &head).await?;
    let allow_partial = host
        .instances()
        .iter()
        .any(|i| i.name == instance && i.allow_partial);
    let journal = import.map(|i| ImportJournal::new(i, &instance));
    // Small files are parsed in one call; larger ones stream through a parse session twice (once to validate the
    // whole file, once to commit), so memory stays bounded and a bad file records nothing.
    if size <= state.engine.config().imports.stream_above_kib * 1024 {
        let started = std::time::Instant::now();
        let content = tokio::fs::read(path).await.map_err(io)?;
        let reply = host
            .parse(
                &instance,
                FileRequest {
                    name: name.to_string(),
                    content,
                },
            )
            .await
            .map_err(plugin_error)?;
        let parsed = started.elapsed();
        let n = reply.records.len() as u64;
        let refused = refusals(1, &reply.records);
        refuse_file_if(host, (&instance, &plugin), name, allow_partial, n, refused)?;
        let mut run = state.engine.begin_ingest(&instance, &plugin, Some(name));
        if let Some(journal) = journal {
            run = run.with_journal(journal);
        }
        run.add(reply.records)?;
        let summary = run.finish().await?;
        state
            .metrics
            .records_ingested
            .fetch_add(n - summary.failed.len() as u64, Ordering::Relaxed);
        tracing::info!(file = %name, connector = %instance, records = n, parse_ms = parsed.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64, "file imported");
        return Ok(summary);
    }
    // Pass 1: the whole file must parse, and the engine accept each record, before anything is recorded.
    let mut validated = 0u64;
    let mut refused = Vec::new();
    stream_file(host, &instance, name, path, |records| {
        refused.extend(refusals(validated + 1, &records));
        validated += records.len() as u64;
        Ok(())
    })
    .await?;
    refuse_file_if(
        host,
        (&instance, &plugin),
        name,
        allow_partial,
        validated,
        refused,
    )?;
    // Pass 2: commit as the records come.
    let mut run = state.engine.begin_ingest(&instance, &plugin, Some(name));
    if let Some(journal) = journal {
        run = run.with_journal(journal);
    }
    stream_file(host, &instance, name, path, |records| {
        run.add(records).map_err(ApiError::from)
    })
    .await?;
    let summary = run.finish().await?;
    if summary.records_read != validated {
        tracing::warn!(file = %name, validated, committed = summary.records_read, "the plugin produced different records on the second pass");
    }
    state.metrics.records_ingested.fetch_add(
        summary.records_read - summary.failed.len() as u64,
        Ordering::Relaxed,
    );
    Ok(summary)
}

/// The records the engine refuses, numbered from `first`.
fn refusals(first: u64, records: &[settled_plugin_api::Record]) -> Vec<Failure> {
    (first..)
        .zip(records)
        .filter_map(|(index, record)| refusal(index, record))
        .collect()
}

/// Refused records listed one by one in the log and in a file's error; the rest are summed up.
const LISTED: usize = 20;

/// Counts refused records against their instance and logs them.
fn report_refused(
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

/// Report a file's refused records; unless its instance allows partial files, the file is refused with them.
fn refuse_file_if(
    host: &PluginHost,
    (instance, plugin): (&str, &str),
    name: &str,
    allow_partial: bool,
    records_read: u64,
    refused: Vec<Failure>,
) -> Result<(), ApiError> {
    if refused.is_empty() {
        return Ok(());
    }
    report_refused(host, instance, plugin, Some(name), &refused);
    if allow_partial {
        return Ok(());
    }
    Err(refused_file(name, instance, records_read, refused))
}

/// A file not imported because the engine refuses some of its records; the summary lists each of them.
fn refused_file(name: &str, instance: &str, records_read: u64, refused: Vec<Failure>) -> ApiError {
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
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused_records", message)
        .with_summary(serde_json::to_value(summary).unwrap_or_default())
}

fn describe(f: &Failure) -> String {
    match &f.location {
        Some(location) => format!("record {} ({location}): {}", f.record, f.reason),
        None => format!("record {}: {}", f.record, f.reason),
    }
}

async fn stream_file(
    host: &PluginHost,
    instance: &str,
    name: &str,
    path: &std::path::Path,
    mut sink: impl FnMut(Vec<settled_plugin_api::Record>) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    use tokio::io::AsyncReadExt;
    let io = |path: &std::path::Path, e: std::io::Error| {
        internal(format!("reading {}: {e}", path.display()))
    };
    let mut file = tokio::fs::File::open(path).await.map_err(|e| io(path, e))?;
    let mut session = host
        .parse_begin(instance, name)
        .await
        .map_err(plugin_error)?;
    // The plugin parses the next piece while the engine commits the last one: on two cores the parse is nearly free.
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<Vec<settled_plugin_api::Record>, ApiError>>(2);
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
                    let _ = tx.send(Err(plugin_error(e))).await;
                    return;
                }
            }
        }
        let _ = tx.send(session.finish().await.map_err(plugin_error)).await;
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
        outcome = outcome.and(Err(internal(format!("parsing {name}: {join}"))));
    }
    outcome
}

/// The file-role instance that claims a file most confidently (or the forced one).
pub async fn choose_instance(
    host: &PluginHost,
    name: &str,
    forced: Option<&str>,
    content: &[u8],
) -> Result<(String, String), ApiError> {
    let candidates: Vec<_> = host
        .instances()
        .into_iter()
        .filter(|i| i.roles.contains(&Role::File))
        .collect();
    if let Some(forced) = forced {
        return candidates
            .into_iter()
            .find(|i| i.name == forced)
            .map(|i| (i.name, i.plugin))
            .ok_or_else(|| {
                ApiError::bad_request(
                    Some("plugin".into()),
                    format!("no file connector named `{forced}`"),
                )
            });
    }
    let head = content[..content.len().min(4096)].to_vec();
    let mut best: Option<(u8, String, String)> = None;
    for c in candidates {
        let reply = host
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
    best.map(|(_, instance, plugin)| (instance, plugin)).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unrecognised_file",
            format!("no connector recognises `{name}`; pass --plugin to choose one (see `settled plugins`)"),
        )
    })
}

fn host(state: &AppState) -> Result<&PluginHost, ApiError> {
    state.host.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugins_disabled",
            "plugins are not loaded",
        )
    })
}

fn plugin_error(e: CallError) -> ApiError {
    match e {
        CallError::Plugin(p) => {
            let message = match &p.location {
                Some(loc) => format!("{loc}: {}", p.message),
                None => p.message.clone(),
            };
            match p.code.as_str() {
                "bad_signature" => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", message)
                }
                "unsupported" => ApiError::new(StatusCode::NOT_FOUND, "unsupported", message),
                _ => ApiError::bad_request(p.location.clone(), message),
            }
        }
        CallError::UnknownInstance(name) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no connector named `{name}`"),
        ),
        e @ CallError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        e @ CallError::Busy { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
                .with_retry_after(1)
        }
        other => {
            tracing::warn!(error = %other, "plugin call failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "plugin_unavailable",
                other.to_string(),
            )
        }
    }
}
