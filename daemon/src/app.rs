//! Daemon-side commands: `run`, `init`, `backup`, `restore`. Wires config, store, engine, plugin host, transports,
//! scheduler and API together, and shuts them down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState, Metrics};
use crate::config::{Config, LogFormat};
use crate::engine::{Engine, SystemClock};
use crate::plugin_host::{HostConfig, PluginHost};
use crate::store::{Store, StoreOptions};

/// Options of `settled run` that override the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// `--json-logs`.
    pub json_logs: bool,
}

/// The config file: `--config`, else `$SETTLED_CONFIG`, else `<data dir>/settled.toml` when it exists; `None`: the
/// embedded defaults.
pub fn config_file(options: &RunOptions) -> Option<PathBuf> {
    let explicit = options
        .config
        .clone()
        .or_else(|| std::env::var_os("SETTLED_CONFIG").map(PathBuf::from));
    explicit.or_else(|| {
        let dir = options
            .data_dir
            .clone()
            .unwrap_or_else(crate::config::default_data_dir);
        let candidate = dir.join("settled.toml");
        candidate.exists().then_some(candidate)
    })
}

/// Load the config file [`config_file`] names (else the embedded defaults) and apply the command line's overrides.
pub fn load_config(options: &RunOptions) -> anyhow::Result<Config> {
    let mut config = match config_file(options) {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(dir) = &options.data_dir {
        config.data_dir = Some(dir.clone());
    }
    if let Some(listen) = options.listen {
        config.listen = listen;
    }
    if options.json_logs {
        config.log_format = LogFormat::Json;
    }
    Ok(config)
}

/// Set up `tracing` (RUST_LOG filters, default `info`).
pub fn init_logging(format: LogFormat) {
    init_logging_with(format, "info");
}

/// Set up `tracing` with a default level used when RUST_LOG is unset.
pub fn init_logging_with(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Shortest API token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 32;

/// The API token: `$SETTLED_API_TOKEN`, else the token file (created with a fresh random token, mode 0600, when missing).
/// A token shorter than [`MIN_TOKEN_LEN`] bytes, or a token file group or others may read, is refused.
pub fn api_token(config: &Config) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("SETTLED_API_TOKEN") {
        if !token.trim().is_empty() {
            return long_enough(token.trim(), "SETTLED_API_TOKEN");
        }
    }
    let path = token_path(config);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            private_to_owner(&path)?;
            long_enough(t.trim(), &format!("API token file {}", path.display()))
        }
        Ok(_) => bail!(
            "API token file {} is empty; delete it to have a new one made",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token();
            write_private(&path, &format!("{token}\n"))?;
            tracing::info!(path = %path.display(), "created a new API token");
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("reading API token file {}", path.display())),
    }
}

fn long_enough(token: &str, source: &str) -> anyhow::Result<String> {
    if token.len() < MIN_TOKEN_LEN {
        bail!(
            "{source}: the API token is {} bytes, shorter than the {MIN_TOKEN_LEN} bytes required; \
             use a random one, e.g. `openssl rand -hex 32`, or delete the token file and run `settled init` for a new one",
            token.len()
        );
    }
    Ok(token.to_string())
}

/// Refuses a token file group or others can read (or write), naming the `chmod` that fixes it.
fn private_to_owner(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading API token file {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "API token file {} is readable by group or others (mode {mode:03o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

fn token_path(config: &Config) -> PathBuf {
    config
        .api_token_file
        .clone()
        .unwrap_or_else(|| config.data_dir().join("api-token"))
}

fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `settled init`: write a commented default config and a fresh API token into the data dir.
pub fn init(data_dir: Option<PathBuf>, force: bool) -> anyhow::Result<()> {
    let dir = data_dir.unwrap_or_else(crate::config::default_data_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let config_path = dir.join("settled.toml");
    if config_path.exists() && !force {
        bail!(
            "{} exists already; pass --force to overwrite it",
            config_path.display()
        );
    }
    std::fs::write(&config_path, crate::config::DEFAULT_CONFIG)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let token_path = dir.join("api-token");
    if token_path.exists() {
        std::fs::remove_file(&token_path)
            .with_context(|| format!("replacing {}", token_path.display()))?;
    }
    write_private(&token_path, &format!("{}\n", new_token()))?;
    println!("wrote {}", config_path.display());
    println!("wrote {} (mode 0600)", token_path.display());
    println!(
        "start the daemon with: settled run --data-dir {}",
        dir.display()
    );
    Ok(())
}

/// `settled backup FILE`.
pub fn backup(options: &RunOptions, file: &Path) -> anyhow::Result<()> {
    let config = load_config(options)?;
    let store = Store::open(&config.data_dir(), &StoreOptions::default())?;
    // The invoices as the journal leaves them: replayed (by the engine) and written back before the dump.
    let engine = Engine::new(store.clone(), config.clone(), Box::new(SystemClock))?;
    engine.checkpoint()?;
    let n = crate::store::backup_to(&store, file)?;
    println!("backed up {n} records to {}", file.display());
    Ok(())
}

/// `settled restore FILE`: into an empty data directory.
pub fn restore(options: &RunOptions, file: &Path) -> anyhow::Result<()> {
    let config = load_config(options)?;
    let store = Store::open(&config.data_dir(), &StoreOptions::default())?;
    let n = crate::store::restore_from(&store, file)?;
    println!("restored {n} records into {}", config.data_dir().display());
    Ok(())
}

/// `settled run`: the daemon, until SIGTERM or SIGINT.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let config = load_config(&options)?;
    init_logging(config.log_format);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        signal.cancel();
    });
    let mut daemon = Daemon::start(config).await?;
    daemon.config_file = config_file(&options);
    daemon.serve(shutdown.cancelled_owned()).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A started daemon: store open, engine built, plugins loaded, listener bound.
pub struct Daemon {
    /// Shared handler state.
    pub state: AppState,
    listener: tokio::net::TcpListener,
    config: Config,
    /// The file `config` came from: watched (and re-read on SIGHUP) to apply `[[connector]]` changes while running.
    pub config_file: Option<PathBuf>,
}

impl Daemon {
    /// Open everything and bind the listener (so a caller knows the port before serving).
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        let started = std::time::Instant::now();
        let data_dir = config.data_dir();
        let store = Store::open(
            &data_dir,
            &StoreOptions {
                cache_bytes: config.cache_mib * 1024 * 1024,
            },
        )?;
        let token = api_token(&config)?;
        let engine = Engine::new(store, config.clone(), Box::new(SystemClock))?;
        let host = start_plugins(&config, &data_dir).await;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let outbox = match &host {
            Some(host) => Some(Arc::new(crate::outbox::Dispatcher::new(
                engine.clone(),
                Arc::clone(host),
            )?)),
            None => None,
        };
        let state = AppState {
            engine,
            token: Arc::new(token),
            host,
            metrics: Arc::new(Metrics::default()),
            outbox,
            limits: Arc::new(api::limits::Limits::new(&config)),
        };
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            data_dir = %data_dir.display(),
            open_invoices = state.engine.open_invoice_count(),
            ready_ms = started.elapsed().as_millis() as u64,
            "settled ready"
        );
        Ok(Daemon {
            state,
            listener,
            config,
            config_file: None,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` resolves, then stop intake, drain, flush.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(crate::scheduler::run(
            self.state.engine.clone(),
            cancel.clone(),
        ));
        tasks.spawn(reopen_closed_store(
            self.state.engine.clone(),
            cancel.clone(),
        ));
        tasks.spawn(checkpoints(
            self.state.engine.clone(),
            Duration::from_secs(self.config.journal.checkpoint_every_secs),
            cancel.clone(),
        ));
        if self.state.host.is_some() {
            // Before the listener serves uploads, whose spool files must not be taken for leftovers.
            let unfinished = api::unfinished_imports(&self.state);
            tasks.spawn(api::resume_imports(
                self.state.clone(),
                unfinished,
                cancel.clone(),
            ));
        }
        if let Some(host) = self.state.host.clone() {
            tasks.spawn(crate::mailbox::run(
                self.state.clone(),
                host.clone(),
                cancel.clone(),
            ));
            tasks.spawn(crate::poll::run(
                self.state.clone(),
                host.clone(),
                cancel.clone(),
            ));
            let inboxes = crate::inbox::inboxes(&self.config, &host);
            tasks.spawn(crate::inbox::run(
                self.state.clone(),
                host,
                inboxes,
                cancel.clone(),
            ));
        }
        if let Some(outbox) = &self.state.outbox {
            outbox.spawn(&tasks, &cancel);
        }
        if let (Some(host), Some(file)) = (&self.state.host, &self.config_file) {
            tasks.spawn(crate::config_watch::run(
                file.clone(),
                Arc::clone(host),
                cancel.clone(),
            ));
        }
        let app = api::router(self.state.clone());
        let stop = cancel.clone();
        api::listener::serve(self.listener, app, &self.config.http, async move {
            shutdown.await;
            stop.cancel();
        })
        .await;
        cancel.cancel();
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within 30 s");
        }
        if let Some(host) = &self.state.host {
            host.shutdown().await;
        }
        if let Err(error) = self.state.engine.checkpoint() {
            tracing::error!(%error, "the last checkpoint failed: the next start replays the journal");
        }
        self.state.engine.store().flush()?;
        tracing::info!("settled stopped cleanly");
        Ok(())
    }
}

/// How often a store closed by a failed write (a full disk) is tried again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// While the store is closed after a failed write, try to reopen it every [`STORE_RETRY`]: it reopens from disk once
/// the disk takes writes again, and `/healthz` says ok again.
async fn reopen_closed_store(engine: Engine, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(STORE_RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if engine.store().failure().is_none() {
            continue;
        }
        let attempt = engine.clone();
        match tokio::task::spawn_blocking(move || attempt.recover_store()).await {
            Ok(Ok(true)) => tracing::info!(
                data_dir = %engine.store().path().display(),
                "the store can write again: reopened it from disk"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::debug!(%error, "the store cannot be reopened yet"),
            Err(error) => tracing::error!(%error, "reopening the store panicked"),
        }
    }
}

/// Write the invoice payment state ingested payments deferred back to the store every `every` (see `[journal]`).
async fn checkpoints(engine: Engine, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let engine = engine.clone();
        match tokio::task::spawn_blocking(move || engine.checkpoint()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "checkpoint failed: the journal still holds every change")
            }
            Err(error) => tracing::error!(%error, "checkpoint panicked"),
        }
    }
}

/// Start the plugin host; a plugin problem is logged, never fatal to the daemon.
async fn start_plugins(config: &Config, data_dir: &Path) -> Option<Arc<PluginHost>> {
    let plugin_dir = plugin_dir(config, data_dir);
    let connectors = config.connectors.clone();
    let host_exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot find our own executable; plugins disabled");
            return None;
        }
    };
    let host_config = HostConfig {
        plugin_dir,
        cache_dir: data_dir.join("plugin-cache"),
        allowlist: config.plugins.allowlist.clone(),
        connectors,
        host_exe,
        call_timeout: Duration::from_millis(config.plugins.call_timeout_ms),
        quarantine_after: config.plugins.quarantine_after,
        watch: config.plugins.watch,
        require_sandbox: config.plugins.require_sandbox,
        defaults: config.plugins.defaults,
    };
    match PluginHost::start(host_config).await {
        Ok(host) => Some(host),
        Err(e) => {
            tracing::error!(error = %e, "plugin host failed to start; running without plugins");
            None
        }
    }
}

/// The plugin folder (`[plugins] dir`, else `<data_dir>/plugins`, filled with the bundled plugins on first use).
fn plugin_dir(config: &Config, data_dir: &Path) -> PathBuf {
    let plugin_dir = config
        .plugins
        .dir
        .clone()
        .unwrap_or_else(|| data_dir.join("plugins"));
    if config.plugins.dir.is_none() && !plugin_dir.exists() {
        install_bundled_plugins(&plugin_dir);
    }
    plugin_dir
}

/// First start with the default plugin folder: copy the plugins built next to the binary into it.
pub(crate) fn install_bundled_plugins(dir: &Path) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the plugin folder");
        return;
    }
    let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&exe_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("libsettled_plugin_") && name.ends_with(".so") {
            let target = dir.join(&name);
            match std::fs::copy(entry.path(), &target) {
                Ok(_) => tracing::info!(plugin = %name, "installed bundled plugin"),
                Err(e) => {
                    tracing::warn!(plugin = %name, error = %e, "cannot install bundled plugin")
                }
            }
        }
    }
}
