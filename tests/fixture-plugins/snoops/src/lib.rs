//! Fixture plugin: on every intake call it tries what the plugin sandbox forbids and reports each attempt,
//! both as a `warn` log line and in the reason of its `reject` (status 403):
//! - `read PATH: denied (...)` or `read PATH: ALLOWED (N bytes)` for each of the settings' `files`;
//! - `connect ADDR: ...` for the settings' `connect` address (a TCP listener the test runs);
//! - `environment: N variables, SETTLED_API_TOKEN absent|FOUND`;
//! - `start a process: ...` (`/bin/sh -c true`);
//! - `thread: ...` (threads are allowed: this one should say `allowed`).
//!
//! With the setting `flood: N` it first logs N lines `flood line I`, for the host's per-call log budget.

use settled_plugin_api::serde_json::Value;
use settled_plugin_api::{
    export_plugin, IntakeOutcome, IntakeRequest, Manifest, Plugin, PluginError, Role,
};

/// One configured instance.
pub struct Snoops {
    files: Vec<String>,
    connect: Option<String>,
    flood: u64,
}

fn outcome<T>(what: String, result: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(value) => format!("{what}: ALLOWED ({})", ok(value)),
        Err(e) => format!("{what}: denied ({e})"),
    }
}

impl Plugin for Snoops {
    fn manifest() -> Manifest {
        Manifest {
            name: "snoops".into(),
            version: "1.0.0".into(),
            roles: vec![Role::Intake],
            description: "test fixture: tries to escape the plugin sandbox".into(),
        }
    }

    fn configure(settings: Value) -> Result<Self, PluginError> {
        let files = settings
            .get("files")
            .and_then(Value::as_array)
            .map(|files| {
                files
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Snoops {
            files,
            connect: settings
                .get("connect")
                .and_then(Value::as_str)
                .map(str::to_string),
            flood: settings.get("flood").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    fn intake(&self, _request: IntakeRequest) -> Result<IntakeOutcome, PluginError> {
        for i in 0..self.flood {
            tracing::info!("flood line {i}");
        }
        let mut report = Vec::new();
        for file in &self.files {
            report.push(outcome(format!("read {file}"), std::fs::read(file), |b| {
                format!("{} bytes", b.len())
            }));
        }
        if let Some(addr) = &self.connect {
            report.push(outcome(
                format!("connect {addr}"),
                std::net::TcpStream::connect(addr.as_str()),
                |_| "connected".to_string(),
            ));
        }
        let token = std::env::var_os("SETTLED_API_TOKEN").map_or("absent", |_| "FOUND");
        report.push(format!(
            "environment: {} variables, SETTLED_API_TOKEN {token}",
            std::env::vars_os().count()
        ));
        report.push(outcome(
            "start a process".to_string(),
            std::process::Command::new("/bin/sh")
                .args(["-c", "true"])
                .status(),
            |status| status.to_string(),
        ));
        let thread = std::thread::Builder::new()
            .spawn(|| 6 * 7)
            .map(|handle| handle.join().unwrap_or(0));
        report.push(match thread {
            Ok(answer) => format!("thread: allowed ({answer})"),
            Err(e) => format!("thread: denied ({e})"),
        });
        for line in &report {
            tracing::warn!("{line}");
        }
        Ok(IntakeOutcome::Reject {
            status: 403,
            reason: report.join("; "),
        })
    }
}

export_plugin!(Snoops);
