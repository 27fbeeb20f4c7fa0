//! The plugin host: finds connector plugins in the plugin folder, checks and loads them, runs one connector
//! instance per `[[connector]]` table (in a child process by default, or in-process), times out and
//! quarantines misbehaving ones, and swaps in new versions dropped into the folder while the daemon runs.
//!
//! Invariants:
//! - No plugin code runs in the daemon unless an instance asks for `in-process`: every new file is
//!   handshaken (header check, init, manifest) in a `settled plugin-host` child first.
//! - A library is never unloaded; a replaced version stays mapped while calls on it finish.
//! - A file that fails any check or handshake changes nothing that is running; the reason is logged and
//!   shown in [`PluginHost::status`].

mod checks;
mod child;
mod connectors;
mod native;
mod reload;
mod sandbox;
mod session;

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use settled_plugin_api::{
    ops, FileRequest, HttpRequestSpec, IntakeOutcome, IntakeRequest, MailOutcome, MailRequest,
    Manifest, ParseReply, PluginError, PollReply, PollResponse, PollStart, Role, SinkInput,
    SinkStep, SniffReply, SniffRequest,
};

pub use child::child_main;
use child::{ChildFailure, ProcInstance, ProcOutcome};
pub use connectors::ReloadReport;
use native::{NativeInstance, NativeLib, NoAnswer, Reply, Workers};
pub use session::ParseSession;

/// Most recent load errors kept per plugin file.
const MAX_LOAD_ERRORS: usize = 8;
/// Durations kept per instance for the latency percentiles.
const LATENCY_WINDOW: usize = 1024;

/// One `[[connector]]` table: an instance of a plugin with its own settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Instance name, unique; used in URLs (`/intake/{name}`) and logs. Letters, digits, `-` and `_`.
    pub name: String,
    /// The plugin's manifest name (`plugin = "webform"`).
    pub plugin: String,
    /// `process` (default, a crash only kills a child) or `in-process` (fastest, no protection from crashes).
    #[serde(default)]
    pub isolation: Isolation,
    /// The plugin's own settings (the `[connector.settings]` table as JSON); the plugin validates them.
    #[serde(default)]
    pub settings: serde_json::Value,
    /// Per-call timeout for this instance in milliseconds; the host's `call_timeout` when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// File inbox folder of this instance (used by the file transport).
    #[serde(default)]
    pub inbox: Option<PathBuf>,
    /// Import a file even when the engine refuses some of its records: the good ones are kept and the refused ones listed
    /// in the import summary. Off by default: one refused record sends the whole file to `failed/`, recording nothing.
    #[serde(default)]
    pub allow_partial: bool,
    /// For a sink plugin: the outbox event types this instance delivers (`invoice.issued`,
    /// `invoice.payment_status_changed`, `payment.recorded`, ...); every outbox event when absent.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// IMAP account or Maildir folder of this instance (used by the mailbox transport, `mail` role).
    #[serde(default)]
    pub mailbox: Option<crate::mailbox::MailboxConfig>,
    /// Environment variables of the daemon passed to this instance's plugin child in `process` isolation, e.g.
    /// `env = ["TYPEFORM_SECRET"]` for a plugin setting `secret_env = "TYPEFORM_SECRET"`. The child's environment is
    /// otherwise empty (see the plugin guide's sandbox section); `SETTLED_API_TOKEN` cannot be passed. An `in-process`
    /// instance runs in the daemon and sees its whole environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// `[connector.intake]`: this instance's intake limits (body size, rate per sender); what it leaves out comes from `[intake]`.
    #[serde(default)]
    pub intake: crate::config::IntakeLimits,
    /// For a `poll` plugin: seconds between two polls of the remote system (default 60, at least 1). A poll that
    /// says there is more is followed at once by the next page; a failed poll is tried again after this interval.
    #[serde(default)]
    pub poll_every_secs: Option<u64>,
}

/// Where an instance's plugin code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In a `settled plugin-host` child process, restarted with backoff when it crashes or hangs.
    #[default]
    Process,
    /// In the daemon itself: fastest, but a crash takes the daemon down and a hung call leaves a thread behind.
    InProcess,
}

/// Everything the host needs to start.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The watched folder plugins are dropped into.
    pub plugin_dir: PathBuf,
    /// A private folder for the hash-named copies that actually get loaded.
    pub cache_dir: PathBuf,
    /// When set, only files whose SHA-256 (hex) is listed are loaded.
    pub allowlist: Option<Vec<String>>,
    /// The connector instances to run.
    pub connectors: Vec<ConnectorConfig>,
    /// The binary spawned as `HOST_EXE plugin-host --library PATH` for process isolation.
    pub host_exe: PathBuf,
    /// Default per-call timeout (10 s).
    pub call_timeout: Duration,
    /// Consecutive failed calls (panic, timeout, crash, bad output) before an instance is quarantined (5).
    pub quarantine_after: u32,
    /// Watch the plugin folder and hot-reload.
    pub watch: bool,
    /// Refuse to load a plugin in a child whose sandbox is not complete (false: load it and report it).
    pub require_sandbox: bool,
    /// Run a default instance (named after the plugin, default settings) of every loaded plugin no connector names.
    pub defaults: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            plugin_dir: PathBuf::from("plugins"),
            cache_dir: PathBuf::from("cache/plugins"),
            allowlist: None,
            connectors: Vec::new(),
            host_exe: std::env::current_exe().unwrap_or_default(),
            call_timeout: Duration::from_secs(10),
            quarantine_after: 5,
            watch: true,
            require_sandbox: false,
            defaults: false,
        }
    }
}

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration is inconsistent.
    #[error("plugin host config: {0}")]
    Config(String),
    /// A folder could not be read or created.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The folder watcher could not start.
    #[error("watching plugin folder {}: {source}", path.display())]
    Watch {
        /// The plugin folder.
        path: PathBuf,
        /// The underlying error.
        source: notify::Error,
    },
}

/// Why a call did not produce the plugin's answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No `[[connector]]` has this name.
    #[error("unknown connector instance `{0}`")]
    UnknownInstance(String),
    /// The instance is configured but not running (plugin missing, failed to load, settings rejected).
    #[error("connector instance `{instance}` (plugin `{plugin}`) is not running: {reason}")]
    NotRunning {
        /// Instance name.
        instance: String,
        /// Plugin name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The plugin answered with its own error (bad input, bad signature, unsupported, ...).
    #[error("{0}")]
    Plugin(PluginError),
    /// The plugin panicked during the call.
    #[error("connector instance `{instance}` (plugin `{plugin}`) panicked: {message}")]
    Panicked {
        /// Instance name.
        instance: String,
        /// Plugin name.
        plugin: String,
        /// The panic message.
        message: String,
    },
    /// The call did not finish in time.
    #[error("connector instance `{instance}` (plugin `{plugin}`) timed out after {} ms", after.as_millis())]
    Timeout {
        /// Instance name.
        instance: String,
        /// Plugin name.
        plugin: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The plugin's process died (abort, segfault) or could not be restarted.
    #[error("connector instance `{instance}` (plugin `{plugin}`) crashed: {detail}")]
    Crashed {
        /// Instance name.
        instance: String,
        /// Plugin name.
        plugin: String,
        /// Exit status or restart failure.
        detail: String,
    },
    /// Too many consecutive failures; calls are refused until a new version is dropped in.
    #[error("connector instance `{instance}` (plugin `{plugin}`) is quarantined: {reason}")]
    Quarantined {
        /// Instance name.
        instance: String,
        /// Plugin name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The request is larger than a plugin call can carry; the host refused to send it. The sender's or the host's
    /// fault, never the plugin's: it does not count towards quarantine.
    #[error("connector instance `{instance}` (plugin `{plugin}`): the request is {size} bytes encoded, over the {limit} bytes a plugin call carries; it was not sent")]
    TooLarge {
        /// Instance name.
        instance: String,
        /// Plugin name.
        plugin: String,
        /// The encoded request's size in bytes.
        size: usize,
        /// The largest request a call carries.
        limit: usize,
    },
    /// The instance was still busy with earlier calls when this one's time ran out; the call never reached the plugin.
    /// Load, not a plugin fault: it does not count towards quarantine.
    #[error("connector instance `{instance}` (plugin `{plugin}`) is busy: earlier calls still held it after {} ms", waited.as_millis())]
    Busy {
        /// Instance name.
        instance: String,
        /// Plugin name.
        plugin: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The output broke the contract: bad UTF-8 or JSON, wrong envelope version, over 64 MiB, wrong shape.
    #[error("connector instance `{instance}` (plugin `{plugin}`) returned bad output: {detail}")]
    BadOutput {
        /// Instance name.
        instance: String,
        /// Plugin name.
        plugin: String,
        /// What was wrong.
        detail: String,
    },
}

impl CallError {
    /// Whether this failure is the plugin's own (a panic, timeout, crash, bad output) and so counts towards
    /// quarantine. A fault of the host or of the sender (a request too large to send, a call that waited for a busy
    /// instance) never does, so no sender can switch a connector off by what it sends.
    pub fn counts_against_plugin(&self) -> bool {
        matches!(
            self,
            CallError::Panicked { .. }
                | CallError::Timeout { .. }
                | CallError::Crashed { .. }
                | CallError::BadOutput { .. }
        )
    }
}

/// Largest encoded request the host sends to a plugin: within the child's frame limit, with room for the frame header.
pub(crate) const MAX_REQUEST: usize = settled_plugin_api::abi::MAX_OUTPUT;

/// A configured instance as the transports see it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    /// Instance name.
    pub name: String,
    /// Plugin name.
    pub plugin: String,
    /// Roles from the running plugin's manifest (empty when not running).
    pub roles: Vec<Role>,
    /// Isolation mode.
    pub isolation: Isolation,
    /// File inbox folder, if configured.
    pub inbox: Option<PathBuf>,
    /// Whether a file may be imported without the records the engine refuses.
    pub allow_partial: bool,
    /// Whether calls can currently be made.
    pub running: bool,
}

/// The state of an instance in [`PluginHost::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Accepting calls.
    Running,
    /// Refusing calls after repeated failures.
    Quarantined,
    /// Not running: see `reason`.
    Failed,
}

/// One instance in [`PluginStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    /// Instance name.
    pub name: String,
    /// Isolation mode.
    pub isolation: Isolation,
    /// Running, quarantined or failed.
    pub state: InstanceState,
    /// Why it is quarantined or failed.
    pub reason: Option<String>,
    /// Calls made since the daemon started.
    pub calls: u64,
    /// Calls that failed, including the plugin's own errors.
    pub errors: u64,
    /// Records from this instance the engine refused (invalid email, unknown currency, ...).
    pub refused: u64,
    /// Median call latency over the last 1024 calls, microseconds.
    pub p50_us: Option<u64>,
    /// 99th percentile call latency over the last 1024 calls, microseconds.
    pub p99_us: Option<u64>,
}

/// One plugin file (or one configured plugin no file provides) for `settled plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// Manifest name, when a version is loaded (or the configured name when no file provides it).
    pub plugin: Option<String>,
    /// The file in the plugin folder.
    pub file: Option<PathBuf>,
    /// SHA-256 of the running version.
    pub sha256: Option<String>,
    /// The running version's own version string.
    pub version: Option<String>,
    /// ABI the running version was built for, `major.minor`.
    pub abi: Option<String>,
    /// Versions of this file loaded since the daemon started.
    pub loads: u64,
    /// Instances of this plugin.
    pub instances: Vec<InstanceStatus>,
    /// Why recent versions of this file were refused (cleared when a version loads).
    pub load_errors: Vec<String>,
    /// What the sandbox of its `process` children enforces (`enforced: ...`, or `INCOMPLETE: ...` /
    /// `NOT ENFORCED: ...` naming what the kernel lacks), as seen when the running version loaded.
    pub sandbox: Option<String>,
}

/// A loaded version of a plugin file.
struct Loaded {
    file: PathBuf,
    sha256: String,
    cache_path: PathBuf,
    manifest: Manifest,
    abi: (u32, u32),
    /// The sandbox summary of the child that handshook this version.
    sandbox: String,
    native: tokio::sync::OnceCell<Arc<NativeLib>>,
}

enum Backend {
    Native(Arc<NativeInstance>),
    Process(Box<ProcInstance>),
}

/// One running instance of one version.
struct Instance {
    plugin: Arc<Loaded>,
    backend: Backend,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    consecutive_failures: u32,
    quarantined: Option<String>,
}

#[derive(Default)]
struct Stats {
    calls: u64,
    errors: u64,
    refused: u64,
    latencies_us: Vec<u64>,
    next: usize,
}

impl Stats {
    fn record(&mut self, took: Duration, failed: bool) {
        self.calls += 1;
        if failed {
            self.errors += 1;
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if self.latencies_us.len() < LATENCY_WINDOW {
            self.latencies_us.push(us);
        } else {
            self.latencies_us[self.next] = us;
        }
        self.next = (self.next + 1) % LATENCY_WINDOW;
    }

    /// (p50, p99) over the window, nearest-rank.
    fn percentiles(&self) -> (Option<u64>, Option<u64>) {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let rank = |p: usize| {
            let n = sorted.len();
            (n > 0).then(|| sorted[((n * p).div_ceil(100)).clamp(1, n) - 1])
        };
        (rank(50), rank(99))
    }
}

/// A configured instance and whatever currently serves it.
struct Slot {
    config: ConnectorConfig,
    /// A default instance (no `[[connector]]` names its plugin), which goes when its plugin file goes.
    default: bool,
    live: RwLock<Option<Arc<Instance>>>,
    failed: Mutex<Option<String>>,
    stats: Mutex<Stats>,
}

impl Slot {
    fn new(config: ConnectorConfig, default: bool) -> Slot {
        Slot {
            config,
            default,
            live: RwLock::new(None),
            failed: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
        }
    }
}

#[derive(Default)]
struct FileEntry {
    current: Option<Arc<Loaded>>,
    errors: Vec<String>,
    loads: u64,
    /// Set when the last attempt failed writing the private copy (a full disk): when to try the same file again.
    retry_at: Option<Instant>,
}

/// How long after a failed cache copy (a full disk) the file is tried again, by the folder watcher.
pub(crate) const CACHE_RETRY: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The running plugin host. Shared as `Arc<PluginHost>`.
pub struct PluginHost {
    config: HostConfig,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// What the config asks for now: the `[[connector]]` tables and whether default instances run.
    wanted: Mutex<connectors::Wanted>,
    /// The outcome of the last config reload, for `/v1/plugins` and `/healthz`.
    reloaded: Mutex<Option<ReloadReport>>,
    files: Mutex<BTreeMap<PathBuf, FileEntry>>,
    reload: tokio::sync::Mutex<()>,
    workers: Arc<Workers>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("plugin_dir", &self.config.plugin_dir)
            .field("instances", &read(&self.slots).keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PluginHost {
    /// Validates the config, loads every plugin in the folder, starts the configured instances and,
    /// if `watch` is set, the folder watcher. Plugins that fail to load do not stop the start; they show
    /// up in [`PluginHost::status`].
    pub async fn start(config: HostConfig) -> Result<Arc<PluginHost>, HostError> {
        validate(&config)?;
        if !config.plugin_dir.is_dir() {
            return Err(HostError::Config(format!(
                "plugin folder {} does not exist",
                config.plugin_dir.display()
            )));
        }
        checks::ensure_cache_dir(&config.cache_dir).map_err(|source| HostError::Io {
            what: "creating plugin cache folder",
            path: config.cache_dir.clone(),
            source,
        })?;
        checks::clear_stale_cache(&config.cache_dir);
        let slots = config
            .connectors
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Slot::new(c.clone(), false))))
            .collect();
        let wanted = connectors::Wanted {
            connectors: config.connectors.clone(),
            defaults: config.defaults,
        };
        let host = Arc::new(PluginHost {
            config,
            slots: RwLock::new(slots),
            wanted: Mutex::new(wanted),
            reloaded: Mutex::new(None),
            files: Mutex::new(BTreeMap::new()),
            reload: tokio::sync::Mutex::new(()),
            workers: Arc::new(Workers::default()),
            watcher: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        // Watch first, so that nothing dropped in during the initial scan is missed; a file seen by both
        // is loaded once (the second look finds the same hash).
        if host.config.watch {
            reload::start(&host).map_err(|source| HostError::Watch {
                path: host.config.plugin_dir.clone(),
                source,
            })?;
        }
        let entries =
            std::fs::read_dir(&host.config.plugin_dir).map_err(|source| HostError::Io {
                what: "reading plugin folder",
                path: host.config.plugin_dir.clone(),
                source,
            })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| reload::is_candidate(p))
            .collect();
        found.sort();
        for path in found {
            host.reconcile(&path).await;
        }
        Ok(host)
    }

    /// Runs operation `op` on an instance with a JSON payload and returns the plugin's reply payload.
    pub async fn call(
        &self,
        instance: &str,
        op: &str,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, CallError> {
        let target = self.target(instance)?;
        let payload = serde_json::to_vec(&payload).unwrap_or_default();
        target.call(op, payload, None).await.0
    }

    /// What serves `instance` now, with everything needed to call it.
    fn target(&self, instance: &str) -> Result<Target, CallError> {
        let slot = self
            .slot(instance)
            .ok_or_else(|| CallError::UnknownInstance(instance.to_string()))?;
        let live = read(&slot.live).clone();
        let Some(live) = live else {
            return Err(CallError::NotRunning {
                instance: instance.to_string(),
                plugin: slot.config.plugin.clone(),
                reason: self.not_running_reason(&slot),
            });
        };
        Ok(Target {
            timeout: self.timeout_of(&slot.config),
            slot,
            live,
            workers: Arc::clone(&self.workers),
            quarantine_after: self.config.quarantine_after,
        })
    }

    /// `intake`: an inbound HTTP request.
    pub async fn intake(
        &self,
        instance: &str,
        req: IntakeRequest,
    ) -> Result<IntakeOutcome, CallError> {
        self.typed(instance, ops::INTAKE, req).await
    }

    /// `file`: does this file belong to the instance's plugin?
    pub async fn sniff(&self, instance: &str, req: SniffRequest) -> Result<SniffReply, CallError> {
        self.typed(instance, ops::SNIFF, req).await
    }

    /// `file`: parse a whole file.
    pub async fn parse(&self, instance: &str, req: FileRequest) -> Result<ParseReply, CallError> {
        self.typed(instance, ops::PARSE, req).await
    }

    /// `mail`: one raw message.
    pub async fn mail(&self, instance: &str, req: MailRequest) -> Result<MailOutcome, CallError> {
        self.typed(instance, ops::MAIL, req).await
    }

    /// `sink`: the next step of delivering an event.
    pub async fn sink_step(&self, instance: &str, input: SinkInput) -> Result<SinkStep, CallError> {
        self.typed(instance, ops::SINK_STEP, input).await
    }

    /// `poll_start`: the request a poll connector wants performed, given its committed cursor.
    pub async fn poll_start(
        &self,
        instance: &str,
        start: PollStart,
    ) -> Result<HttpRequestSpec, CallError> {
        self.typed(instance, ops::POLL_START, start).await
    }

    /// `poll_response`: the records and next cursor a poll connector made of the peer's answer.
    pub async fn poll_response(
        &self,
        instance: &str,
        response: PollResponse,
    ) -> Result<PollReply, CallError> {
        self.typed(instance, ops::POLL_RESPONSE, response).await
    }

    /// Every configured instance.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.all_slots()
            .iter()
            .map(|slot| {
                let live = read(&slot.live).clone();
                InstanceInfo {
                    name: slot.config.name.clone(),
                    plugin: slot.config.plugin.clone(),
                    roles: live
                        .as_ref()
                        .map(|l| l.plugin.manifest.roles.clone())
                        .unwrap_or_default(),
                    isolation: slot.config.isolation,
                    inbox: slot.config.inbox.clone(),
                    allow_partial: slot.config.allow_partial,
                    running: live.is_some(),
                }
            })
            .collect()
    }

    /// Counts `n` records of `instance` the engine refused (shown in [`PluginHost::status`]).
    pub fn count_refused(&self, instance: &str, n: u64) {
        if let Some(slot) = self.slot(instance) {
            lock(&slot.stats).refused += n;
        }
    }

    /// Each plugin file with its running version and instances, then configured plugins no file provides.
    pub fn status(&self) -> Vec<PluginStatus> {
        let files = lock(&self.files);
        let mut out = Vec::new();
        let mut provided = std::collections::BTreeSet::new();
        for (path, entry) in files.iter() {
            let name = entry.current.as_ref().map(|c| c.manifest.name.clone());
            if let Some(name) = &name {
                provided.insert(name.clone());
            }
            out.push(PluginStatus {
                plugin: name.clone(),
                file: Some(path.clone()),
                sha256: entry.current.as_ref().map(|c| c.sha256.clone()),
                version: entry.current.as_ref().map(|c| c.manifest.version.clone()),
                abi: entry
                    .current
                    .as_ref()
                    .map(|c| format!("{}.{}", c.abi.0, c.abi.1)),
                loads: entry.loads,
                instances: name
                    .map(|name| self.instance_statuses(&name))
                    .unwrap_or_default(),
                load_errors: entry.errors.clone(),
                sandbox: entry.current.as_ref().map(|c| c.sandbox.clone()),
            });
        }
        let slots = self.all_slots();
        let missing: std::collections::BTreeSet<&str> = slots
            .iter()
            .map(|s| s.config.plugin.as_str())
            .filter(|p| !provided.contains(*p))
            .collect();
        for name in missing {
            out.push(PluginStatus {
                plugin: Some(name.to_string()),
                file: None,
                sha256: None,
                version: None,
                abi: None,
                loads: 0,
                instances: self.instance_statuses(name),
                load_errors: vec![format!(
                    "no file in {} provides plugin `{name}`",
                    self.config.plugin_dir.display()
                )],
                sandbox: None,
            });
        }
        out
    }

    /// Stops watching and stops every instance (children are killed; in-flight calls finish first).
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop(lock(&self.watcher).take());
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for task in tasks {
            task.abort();
        }
        let _reload = self.reload.lock().await;
        for slot in self.all_slots() {
            *write(&slot.live) = None;
            *lock(&slot.failed) = Some("the plugin host shut down".to_string());
        }
    }

    async fn typed<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        instance: &str,
        op: &str,
        request: Req,
    ) -> Result<Resp, CallError> {
        let payload = serde_json::to_value(request).map_err(|e| CallError::BadOutput {
            instance: instance.to_string(),
            plugin: self.plugin_of(instance),
            detail: format!("cannot encode the `{op}` request: {e}"),
        })?;
        let reply = self.call(instance, op, payload).await?;
        serde_json::from_value(reply).map_err(|e| CallError::BadOutput {
            instance: instance.to_string(),
            plugin: self.plugin_of(instance),
            detail: format!("the `{op}` reply does not match the contract: {e}"),
        })
    }

    fn plugin_of(&self, instance: &str) -> String {
        self.slot(instance)
            .map(|s| s.config.plugin.clone())
            .unwrap_or_default()
    }

    fn timeout_of(&self, config: &ConnectorConfig) -> Duration {
        config
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.call_timeout)
    }

    fn not_running_reason(&self, slot: &Slot) -> String {
        lock(&slot.failed).clone().unwrap_or_else(|| {
            format!(
                "no file in {} provides plugin `{}`",
                self.config.plugin_dir.display(),
                slot.config.plugin
            )
        })
    }

    fn instance_statuses(&self, plugin: &str) -> Vec<InstanceStatus> {
        self.all_slots()
            .iter()
            .filter(|s| s.config.plugin == plugin)
            .map(|slot| {
                let live = read(&slot.live).clone();
                let (state, reason) = match &live {
                    Some(live) => match lock(&live.health).quarantined.clone() {
                        Some(reason) => (InstanceState::Quarantined, Some(reason)),
                        None => (InstanceState::Running, None),
                    },
                    None => (InstanceState::Failed, Some(self.not_running_reason(slot))),
                };
                let stats = lock(&slot.stats);
                let (p50_us, p99_us) = stats.percentiles();
                InstanceStatus {
                    name: slot.config.name.clone(),
                    isolation: slot.config.isolation,
                    state,
                    reason,
                    calls: stats.calls,
                    errors: stats.errors,
                    refused: stats.refused,
                    p50_us,
                    p99_us,
                }
            })
            .collect()
    }

    /// Brings the host in line with one file of the plugin folder: load, replace or remove.
    async fn reconcile(&self, path: &Path) {
        let _one_at_a_time = self.reload.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.remove_file(path),
            _ => self.load_file(path).await,
        }
    }

    fn remove_file(&self, path: &Path) {
        let Some(entry) = lock(&self.files).remove(path) else {
            return;
        };
        let Some(current) = entry.current else {
            return;
        };
        for slot in self.all_slots() {
            let mut live = write(&slot.live);
            if live.as_ref().is_some_and(|l| l.plugin.file == path) {
                *live = None;
                *lock(&slot.failed) = Some(format!("plugin file {} was removed", path.display()));
            }
        }
        // A default instance exists for a plugin in the folder: it goes with the plugin.
        write(&self.slots)
            .retain(|_, slot| !(slot.default && slot.config.plugin == current.manifest.name));
        tracing::info!(
            plugin = %current.manifest.name,
            file = %path.display(),
            "plugin file removed; its instances stopped"
        );
    }

    fn reject(&self, path: &Path, why: String) {
        self.refuse(path, why, None);
    }

    /// Records a refusal; `retry_at` makes the folder watcher try the file again then.
    fn refuse(&self, path: &Path, why: String, retry_at: Option<Instant>) {
        let mut files = lock(&self.files);
        let entry = files.entry(path.to_path_buf()).or_default();
        entry.retry_at = retry_at;
        match &entry.current {
            Some(running) => tracing::warn!(
                file = %path.display(),
                reason = %why,
                running = %running.manifest.version,
                "plugin file refused; the running version stays"
            ),
            None => tracing::warn!(file = %path.display(), reason = %why, "plugin file refused"),
        }
        if entry.errors.len() >= MAX_LOAD_ERRORS {
            entry.errors.remove(0);
        }
        entry.errors.push(why);
    }

    async fn load_file(&self, path: &Path) {
        let (dir, allowlist) = (self.config.cache_dir.clone(), self.config.allowlist.clone());
        let source = path.to_path_buf();
        let prepared = tokio::task::spawn_blocking(move || {
            checks::prepare(&source, &dir, allowlist.as_deref())
        })
        .await
        .unwrap_or_else(|e| Err(checks::Refusal::File(format!("the check task failed: {e}"))));
        let candidate = match prepared {
            Ok(candidate) => candidate,
            Err(checks::Refusal::File(why)) => return self.reject(path, why),
            Err(checks::Refusal::Cache(why)) => {
                let retry = Instant::now() + CACHE_RETRY;
                let why = format!("{why} (tried again every {} s)", CACHE_RETRY.as_secs());
                return self.refuse(path, why, Some(retry));
            }
        };
        if let Some(entry) = lock(&self.files).get_mut(path) {
            entry.retry_at = None;
        }
        let old = lock(&self.files).get(path).and_then(|e| e.current.clone());
        if old.as_ref().is_some_and(|o| o.sha256 == candidate.sha256) {
            // The running version is back in place: earlier refusals no longer describe the file.
            if let Some(entry) = lock(&self.files).get_mut(path) {
                entry.errors.clear();
            }
            return;
        }
        let label = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ready = match child::probe(
            &self.launch(),
            &candidate.cache_path,
            &label,
            child::HANDSHAKE_TIMEOUT,
        )
        .await
        {
            Ok(ready) => ready,
            Err(why) => return self.reject(path, why),
        };
        let name = ready.manifest.name.clone();
        let clash = lock(&self.files).iter().find_map(|(other, entry)| {
            let provides = entry
                .current
                .as_ref()
                .is_some_and(|c| c.manifest.name == name);
            (other != path && provides).then(|| other.clone())
        });
        if let Some(other) = clash {
            let why = format!("plugin `{name}` is already provided by {}", other.display());
            return self.reject(path, why);
        }
        let loaded = Arc::new(Loaded {
            file: path.to_path_buf(),
            sha256: candidate.sha256,
            cache_path: candidate.cache_path,
            manifest: ready.manifest,
            abi: ready.abi,
            sandbox: ready.sandbox.summary(),
            native: tokio::sync::OnceCell::new(),
        });
        if !ready.sandbox.complete() {
            tracing::warn!(
                plugin = %name,
                file = %path.display(),
                sandbox = %loaded.sandbox,
                "the plugin sandbox is not complete on this system: process-isolated plugins can do more than the \
                 plugin guide says (set [plugins] require_sandbox = true to refuse them)"
            );
        }
        self.add_default_slot(&name);
        let mut created = Vec::new();
        let mut failed = Vec::new();
        // An instance whose settings this version rejects does not hold the version back (it may be the
        // upgrade that fixes it): it is reported failed, with the reason, and the others move on.
        for slot in self.slots_of(&name) {
            match self.create_instance(&loaded, &slot.config).await {
                Ok(instance) => created.push((slot, instance)),
                Err(why) => {
                    let why = format!("instance `{}`: {why}", slot.config.name);
                    failed.push((slot, why));
                }
            }
        }
        for (slot, instance) in created {
            *write(&slot.live) = Some(instance);
            *lock(&slot.failed) = None;
        }
        for (slot, why) in failed {
            tracing::warn!(instance = %slot.config.name, plugin = %name, reason = %why, "connector instance not started");
            *write(&slot.live) = None;
            *lock(&slot.failed) = Some(why);
        }
        if let Some(old) = &old {
            if old.manifest.name != name {
                self.remove_file(path);
            }
        }
        tracing::info!(
            plugin = %name,
            version = %loaded.manifest.version,
            sha256 = %loaded.sha256,
            file = %path.display(),
            replaced = old.is_some(),
            "plugin loaded"
        );
        let mut files = lock(&self.files);
        let entry = files.entry(path.to_path_buf()).or_default();
        entry.current = Some(loaded);
        entry.loads += 1;
        entry.errors.clear();
    }

    fn launch(&self) -> child::Launch {
        child::Launch {
            host_exe: self.config.host_exe.clone(),
            require_sandbox: self.config.require_sandbox,
            env: Vec::new(),
        }
    }

    async fn create_instance(
        &self,
        loaded: &Arc<Loaded>,
        config: &ConnectorConfig,
    ) -> Result<Arc<Instance>, String> {
        let settings = serde_json::to_vec(&config.settings).unwrap_or_default();
        let timeout = self.timeout_of(config);
        let backend = match config.isolation {
            Isolation::InProcess => {
                let lib = loaded
                    .native
                    .get_or_try_init(|| open_in_process(loaded))
                    .await?
                    .clone();
                match self
                    .workers
                    .call(timeout, move || lib.create(&settings))
                    .await
                {
                    Ok(Ok(instance)) => Backend::Native(Arc::new(instance)),
                    Ok(Err(reply)) => return Err(describe_configure_failure(reply)),
                    Err(NoAnswer::NotRun) => {
                        return Err("configure ended without an answer".to_string())
                    }
                    Err(NoAnswer::TimedOut) => {
                        return Err(format!(
                            "configure did not return within {} ms",
                            timeout.as_millis()
                        ))
                    }
                }
            }
            Isolation::Process => Backend::Process(Box::new(
                ProcInstance::start(
                    &child::Launch {
                        env: config
                            .env
                            .iter()
                            .filter_map(|name| Some((name.clone(), std::env::var_os(name)?)))
                            .collect(),
                        ..self.launch()
                    },
                    &loaded.cache_path,
                    &loaded.manifest.name,
                    settings,
                    timeout,
                )
                .await
                .map_err(describe_configure_failure)?,
            )),
        };
        Ok(Arc::new(Instance {
            plugin: Arc::clone(loaded),
            backend,
            health: Mutex::new(Health::default()),
        }))
    }
}

/// One live instance and what it takes to call it, detached from the host: a parse session keeps its
/// own, so that it stays with the version (and, in process mode, the child) it began in.
#[derive(Clone)]
struct Target {
    slot: Arc<Slot>,
    live: Arc<Instance>,
    workers: Arc<Workers>,
    timeout: Duration,
    quarantine_after: u32,
}

/// The error of a session call whose child was replaced since the session began.
const RESTARTED: &str = "plugin restarted during the parse session; the file was not imported";

impl Target {
    /// Runs one operation, recording stats and health. In process mode the second value is the child
    /// generation that served the call; `pinned` restricts the call to that generation.
    async fn call(
        &self,
        op: &str,
        payload: Vec<u8>,
        pinned: Option<u64>,
    ) -> (Result<serde_json::Value, CallError>, Option<u64>) {
        let instance = self.slot.config.name.clone();
        let plugin = self.slot.config.plugin.clone();
        if let Some(reason) = lock(&self.live.health).quarantined.clone() {
            let refused = CallError::Quarantined {
                instance,
                plugin,
                reason,
            };
            return (Err(refused), None);
        }
        if payload.len() > MAX_REQUEST {
            // Never frame what the child would refuse (it would die on it): the host's refusal, not the plugin's fault.
            let refused = CallError::TooLarge {
                instance,
                plugin,
                size: payload.len(),
                limit: MAX_REQUEST,
            };
            return (Err(refused), None);
        }
        let started = Instant::now();
        let (result, generation) = match &self.live.backend {
            Backend::Native(native) => (self.call_native(native, op, payload).await, None),
            Backend::Process(child) => {
                let (outcome, generation) = child.call_in(op, &payload, self.timeout, pinned).await;
                let result = match outcome {
                    ProcOutcome::Reply(reply) => Ok(reply),
                    ProcOutcome::Failed(failure) => Err(failure),
                };
                (result, Some(generation))
            }
        };
        let took = started.elapsed();
        let outcome = match result {
            Ok(Reply::Ok(value)) => Ok(value),
            Ok(Reply::Err(error)) => Err(CallError::Plugin(error)),
            Ok(Reply::Panicked(message)) => Err(CallError::Panicked {
                instance,
                plugin,
                message,
            }),
            Ok(Reply::Bad(detail))
            | Err(ChildFailure::Bad(detail))
            | Err(ChildFailure::Refused(detail)) => Err(CallError::BadOutput {
                instance,
                plugin,
                detail,
            }),
            Err(ChildFailure::Timeout) => Err(CallError::Timeout {
                instance,
                plugin,
                after: self.timeout,
            }),
            Err(ChildFailure::Crashed(detail)) => Err(CallError::Crashed {
                instance,
                plugin,
                detail,
            }),
            Err(ChildFailure::Busy) => {
                // Queued behind earlier calls until the time ran out: nothing reached the plugin.
                let busy = CallError::Busy {
                    instance,
                    plugin,
                    waited: self.timeout,
                };
                return (Err(busy), generation);
            }
            Err(ChildFailure::Restarted) => {
                // Nothing reached the plugin: neither its stats nor its health change.
                let lost = CallError::Crashed {
                    instance,
                    plugin,
                    detail: RESTARTED.to_string(),
                };
                return (Err(lost), generation);
            }
        };
        lock(&self.slot.stats).record(took, outcome.is_err());
        self.update_health(&outcome);
        (outcome, generation)
    }

    async fn call_native(
        &self,
        native: &Arc<NativeInstance>,
        op: &str,
        payload: Vec<u8>,
    ) -> Result<Reply, ChildFailure> {
        let native = Arc::clone(native);
        let op = op.to_string();
        match self
            .workers
            .call(self.timeout, move || native.call(&op, &payload))
            .await
        {
            Ok(reply) => Ok(reply),
            Err(NoAnswer::TimedOut) => Err(ChildFailure::Timeout),
            Err(NoAnswer::NotRun) => Err(ChildFailure::Crashed(
                "the call thread ended without an answer".to_string(),
            )),
        }
    }

    fn update_health(&self, outcome: &Result<serde_json::Value, CallError>) {
        let slot = &self.slot;
        let mut health = lock(&self.live.health);
        let failure = match outcome {
            Ok(_) | Err(CallError::Plugin(_)) => None,
            Err(e) if !e.counts_against_plugin() => return,
            Err(e) => Some(e),
        };
        let Some(failure) = failure else {
            health.consecutive_failures = 0;
            return;
        };
        health.consecutive_failures += 1;
        tracing::warn!(
            instance = %slot.config.name,
            plugin = %slot.config.plugin,
            error = %failure,
            consecutive = health.consecutive_failures,
            "plugin call failed"
        );
        let hung_in_process = slot.config.isolation == Isolation::InProcess
            && matches!(failure, CallError::Timeout { .. });
        let reason = if hung_in_process {
            Some(format!(
                "a call hung in-process ({failure}); its thread cannot be reclaimed. Drop in a fixed version or use isolation = \"process\""
            ))
        } else if health.consecutive_failures >= self.quarantine_after {
            Some(format!(
                "{} consecutive failed calls, the last: {failure}. Drop in a fixed version to resume",
                health.consecutive_failures
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            if health.quarantined.is_none() {
                tracing::error!(
                    instance = %slot.config.name,
                    plugin = %slot.config.plugin,
                    %reason,
                    "plugin instance quarantined"
                );
                health.quarantined = Some(reason);
            }
        }
    }
}

fn describe_configure_failure(reply: Reply) -> String {
    match reply {
        Reply::Err(e) => format!("settings rejected: {e}"),
        Reply::Panicked(m) => format!("panicked in configure: {m}"),
        Reply::Bad(m) => m,
        Reply::Ok(_) => "configure answered without an instance".to_string(),
    }
}

/// Where an in-process library's log lines go: the daemon's `tracing`, tagged with the plugin's name.
struct LogCtx {
    plugin: String,
}

extern "C" fn in_process_log(
    ctx: *const c_void,
    level: u32,
    target: *const u8,
    target_len: usize,
    message: *const u8,
    message_len: usize,
) {
    let text = |ptr: *const u8, len: usize| {
        if ptr.is_null() || len == 0 {
            String::new()
        } else {
            // SAFETY: the plugin passes `len` readable bytes valid for this call.
            String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(ptr, len) }).into_owned()
        }
    };
    if ctx.is_null() {
        return;
    }
    // SAFETY: `ctx` is the leaked `LogCtx` given to this library's init; it lives for the whole process.
    let ctx = unsafe { &*ctx.cast::<LogCtx>() };
    let _ = std::panic::catch_unwind(|| {
        emit_plugin_log(
            &ctx.plugin,
            level,
            &text(target, target_len),
            &text(message, message_len),
        );
    });
}

async fn open_in_process(loaded: &Arc<Loaded>) -> Result<Arc<NativeLib>, String> {
    let ctx: &'static LogCtx = Box::leak(Box::new(LogCtx {
        plugin: loaded.manifest.name.clone(),
    }));
    let path = loaded.cache_path.clone();
    let ctx_ptr = (ctx as *const LogCtx).cast::<c_void>() as usize;
    tokio::task::spawn_blocking(move || {
        NativeLib::open(
            &path,
            in_process_log,
            ctx_ptr as *const c_void,
            native::max_level(),
        )
    })
    .await
    .unwrap_or_else(|e| Err(format!("the loader task failed: {e}")))
}

/// Re-emits one plugin log line in the daemon's `tracing`, with `plugin = name`.
pub(crate) fn emit_plugin_log(plugin: &str, level: u32, target: &str, message: &str) {
    use settled_plugin_api::abi::level as l;
    match level {
        l::ERROR => {
            tracing::error!(target: "settled::plugin", plugin, plugin_target = target, "{message}")
        }
        l::WARN => {
            tracing::warn!(target: "settled::plugin", plugin, plugin_target = target, "{message}")
        }
        l::INFO => {
            tracing::info!(target: "settled::plugin", plugin, plugin_target = target, "{message}")
        }
        l::DEBUG => {
            tracing::debug!(target: "settled::plugin", plugin, plugin_target = target, "{message}")
        }
        _ => {
            tracing::trace!(target: "settled::plugin", plugin, plugin_target = target, "{message}")
        }
    }
}

fn validate(config: &HostConfig) -> Result<(), HostError> {
    validate_connectors(&config.connectors)?;
    if config.quarantine_after == 0 {
        return Err(HostError::Config(
            "quarantine_after must be at least 1".to_string(),
        ));
    }
    Ok(())
}

fn validate_connectors(connectors: &[ConnectorConfig]) -> Result<(), HostError> {
    let mut seen = std::collections::BTreeSet::new();
    for c in connectors {
        let ok_name = !c.name.is_empty()
            && c.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
        if !ok_name {
            return Err(HostError::Config(format!(
                "connector name `{}`: use letters, digits, `-` and `_` only",
                c.name
            )));
        }
        if c.plugin.is_empty() {
            return Err(HostError::Config(format!(
                "connector `{}`: `plugin` is empty",
                c.name
            )));
        }
        if let Some(bad) = c.env.iter().find(|v| {
            v.as_str() == "SETTLED_API_TOKEN" || v.is_empty() || v.contains('=') || v.contains('\0')
        }) {
            return Err(HostError::Config(format!(
                "connector `{}`: `env` cannot pass `{bad}` to a plugin",
                c.name
            )));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(HostError::Config(format!(
                "connector `{}` is configured twice",
                c.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(name: &str) -> ConnectorConfig {
        ConnectorConfig {
            name: name.to_string(),
            plugin: "good".to_string(),
            isolation: Isolation::Process,
            settings: serde_json::Value::Null,
            ..ConnectorConfig::default()
        }
    }

    fn check(names: &[&str], expected: Result<(), &str>) {
        let config = HostConfig {
            connectors: names.iter().map(|n| connector(n)).collect(),
            ..HostConfig::default()
        };
        assert_eq!(
            validate(&config).map_err(|e| e.to_string()),
            expected.map_err(str::to_string)
        );
    }

    #[test]
    fn validate_refuses_duplicate_and_unsafe_instance_names() {
        check(&["site-a", "site_b"], Ok(()));
        check(
            &["a", "a"],
            Err("plugin host config: connector `a` is configured twice"),
        );
        check(
            &["a/b"],
            Err("plugin host config: connector name `a/b`: use letters, digits, `-` and `_` only"),
        );
        check(
            &[""],
            Err("plugin host config: connector name ``: use letters, digits, `-` and `_` only"),
        );
    }

    #[test]
    fn validate_refuses_passing_the_api_token_to_a_plugin() {
        let with_env = |env: &[&str]| HostConfig {
            connectors: vec![ConnectorConfig {
                env: env.iter().map(|v| v.to_string()).collect(),
                ..connector("site")
            }],
            ..HostConfig::default()
        };
        assert!(validate(&with_env(&["TYPEFORM_SECRET"])).is_ok());
        for bad in ["SETTLED_API_TOKEN", "", "A=B"] {
            assert_eq!(
                validate(&with_env(&[bad])).map_err(|e| e.to_string()),
                Err(format!(
                    "plugin host config: connector `site`: `env` cannot pass `{bad}` to a plugin"
                ))
            );
        }
    }

    #[test]
    fn connector_config_reads_kebab_case_isolation_and_refuses_unknown_keys() {
        let c: ConnectorConfig = serde_json::from_value(serde_json::json!({
            "name": "a", "plugin": "p", "isolation": "in-process", "settings": {"k": 1}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.isolation, Isolation::InProcess);
        assert_eq!(c.settings["k"], 1);
        let defaulted: ConnectorConfig =
            serde_json::from_value(serde_json::json!({"name": "a", "plugin": "p"}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(defaulted.isolation, Isolation::Process);
        let unknown = serde_json::from_value::<ConnectorConfig>(
            serde_json::json!({"name": "a", "plugin": "p", "isolate": "process"}),
        );
        assert!(unknown.is_err_and(|e| e.to_string().contains("unknown field `isolate`")));
    }

    #[test]
    fn the_host_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<PluginHost>();
        shareable::<CallError>();
        fn sendable<T: Send + 'static>() {}
        sendable::<ParseSession>();
    }

    #[test]
    fn percentiles_use_nearest_rank_over_the_window() {
        let mut stats = Stats::default();
        assert_eq!(stats.percentiles(), (None, None));
        for us in 1..=100u64 {
            stats.record(Duration::from_micros(us), us % 10 == 0);
        }
        assert_eq!(stats.percentiles(), (Some(50), Some(99)));
        assert_eq!((stats.calls, stats.errors), (100, 10));
        for _ in 0..LATENCY_WINDOW {
            stats.record(Duration::from_micros(7), false);
        }
        assert_eq!(stats.percentiles(), (Some(7), Some(7)));
    }
}
