//! File imports over HTTP (`POST /v1/imports`): the upload is spooled to disk, recorded as an `import`, and handed to
//! the file pipeline (`crate::import`); a start finishes the imports a stop interrupted from their spool files.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::intake::{host, plugin_error};
use super::{ApiError, AppState};
use crate::engine::{Import, ImportCounts, ImportSummary};
use crate::import::ImportError;

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
    let result = state
        .pipeline(host)
        .import_journaled(
            &import.file,
            import.connector.as_deref(),
            &path,
            Some(import),
        )
        .await
        .map_err(ApiError::from);
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

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            e @ ImportError::Unrecognised(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unrecognised_file",
                e.to_string(),
            ),
            e @ ImportError::NoFileConnector(_) => {
                ApiError::bad_request(Some("plugin".into()), e.to_string())
            }
            ImportError::Plugin(e) => plugin_error(e),
            ImportError::Refused { message, summary } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused_records", message)
                    .with_summary(serde_json::to_value(summary).unwrap_or_default())
            }
            ImportError::Engine(e) => e.into(),
            e @ (ImportError::Io { .. } | ImportError::Internal(_)) => internal(e.to_string()),
        }
    }
}
