//! One delivery attempt: the `sink` conversation between a plugin and the host, which performs the plugin's HTTP
//! requests (the plugin never touches a socket).

use std::time::Duration;

use settled_plugin_api::{HttpRequestSpec, HttpResponseSpec, SinkInput, SinkStep};

use crate::plugin_host::{CallError, PluginHost};

/// Requests one conversation may make before it is cut off as a plugin bug.
const MAX_STEPS: usize = 16;
/// The longest pause a plugin may ask for between two steps.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// How an attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Delivered (or the plugin does not want this event).
    Done,
    /// Try again later; `after` is the peer's `Retry-After` as the plugin read it.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// The peer refused it for good: a dead letter.
    Failed { error: String },
    /// The sink's plugin is not running (quarantined, failed to load): the event waits without using an attempt.
    Unavailable { error: String },
}

/// An attempt's outcome with the last HTTP status seen.
#[derive(Debug)]
pub struct Attempted {
    pub outcome: Outcome,
    pub status: Option<u16>,
}

/// Run the conversation for one event on `instance`; answers above `max_body` bytes are refused.
pub async fn attempt(
    host: &PluginHost,
    http: &reqwest::Client,
    instance: &str,
    event: serde_json::Value,
    attempt: u32,
    max_body: usize,
) -> Attempted {
    let mut state = serde_json::Value::Null;
    let mut response = None;
    let mut status = None;
    for _ in 0..MAX_STEPS {
        let input = SinkInput {
            event: event.clone(),
            attempt,
            now: chrono::Utc::now().timestamp(),
            state,
            response: response.take(),
        };
        let step = match host.sink_step(instance, input).await {
            Ok(step) => step,
            Err(
                e @ (CallError::Quarantined { .. }
                | CallError::NotRunning { .. }
                | CallError::UnknownInstance(_)),
            ) => {
                return Attempted {
                    outcome: Outcome::Unavailable {
                        error: e.to_string(),
                    },
                    status,
                }
            }
            Err(CallError::Plugin(e)) => {
                // The plugin could not use what it was given (most often the peer's answer): say which sink.
                let what = if status.is_some() {
                    "the peer's answer"
                } else {
                    "the event"
                };
                return Attempted {
                    outcome: Outcome::Retry {
                        error: format!("sink `{instance}` could not read {what}: {e}"),
                        after: None,
                    },
                    status,
                };
            }
            Err(e) => {
                return Attempted {
                    outcome: Outcome::Retry {
                        error: e.to_string(),
                        after: None,
                    },
                    status,
                }
            }
        };
        let outcome = match step {
            SinkStep::Done | SinkStep::Ignored => Outcome::Done,
            SinkStep::RetryLater { after_secs, reason } => Outcome::Retry {
                error: reason,
                after: (after_secs > 0).then(|| Duration::from_secs(after_secs)),
            },
            SinkStep::Failed { reason } => Outcome::Failed { error: reason },
            SinkStep::Wait {
                millis,
                state: next,
            } => {
                tokio::time::sleep(Duration::from_millis(millis).min(MAX_WAIT)).await;
                state = next;
                continue;
            }
            SinkStep::Request {
                request,
                state: next,
            } => match perform(http, &request, max_body).await {
                Ok(answer) => {
                    status = Some(answer.status);
                    response = Some(answer);
                    state = next;
                    continue;
                }
                Err(error) => Outcome::Retry { error, after: None },
            },
        };
        return Attempted { outcome, status };
    }
    Attempted {
        outcome: Outcome::Failed {
            error: format!(
                "plugin of `{instance}` asked for more than {MAX_STEPS} requests for one event"
            ),
        },
        status,
    }
}

/// The HTTP client that performs plugins' requests (sink conversations and polls): `timeout_ms` per request, no
/// redirects followed.
pub(crate) fn http_client(timeout_ms: u64) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("settled/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("building the http client for plugins: {e}"))
}

/// Perform one request for a plugin; the error says why no response came, or why it was not handed over.
pub(crate) async fn perform(
    http: &reqwest::Client,
    spec: &HttpRequestSpec,
    max_body: usize,
) -> Result<HttpResponseSpec, String> {
    let url = reqwest::Url::parse(&spec.url)
        .map_err(|e| format!("plugin asked for a bad url `{}`: {e}", spec.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("plugin asked for a non-http url `{}`", spec.url));
    }
    let method = reqwest::Method::from_bytes(spec.method.as_bytes())
        .map_err(|_| format!("plugin asked for a bad http method `{}`", spec.method))?;
    let mut req = http.request(method, url.clone());
    for (name, value) in &spec.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let mut resp = req
        .body(spec.body.clone())
        .send()
        .await
        .map_err(|e| describe(&e, &url))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).to_string(),
            )
        })
        .collect();
    let too_large = || {
        format!(
            "the answer from {url} (status {status}) is larger than {} MiB, the `[outbox] max_response_mib` setting; \
             it was not handed to the plugin",
            max_body / (1024 * 1024)
        )
    };
    if resp
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > max_body))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e, &url))? {
        if body.len() + chunk.len() > max_body {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponseSpec {
        status,
        headers,
        body,
    })
}

fn describe(err: &reqwest::Error, url: &reqwest::Url) -> String {
    let mut cause = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if err.is_timeout() {
        format!("no answer from {url} in time ({cause})")
    } else if err.is_connect() {
        format!("cannot connect to {url}: {cause}")
    } else {
        format!("request to {url} failed: {cause}")
    }
}
