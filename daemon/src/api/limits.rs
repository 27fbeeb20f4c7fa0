//! What an anonymous intake sender may use: the body size and time, the request rate per sender address (a token
//! bucket per connector and address), and the intake requests served at once (the rest of the connection cap is kept
//! for the API and `/healthz`). Every refusal happens before a plugin is called.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::config::{Config, IntakeLimitValues, IntakeLimits};

/// Rate-limit checks between two sweeps of sender addresses not seen for a while.
const SWEEP_EVERY: u64 = 4096;

/// Intake limits of every connector, built lazily from the config.
pub struct Limits {
    base: IntakeLimits,
    per_connector: HashMap<String, IntakeLimits>,
    limiters: Mutex<HashMap<String, Arc<ConnectorLimiter>>>,
    slots: Arc<Semaphore>,
    slot_count: usize,
}

/// One connector's limits and its token buckets, one per sender address.
pub struct ConnectorLimiter {
    /// The connector's resolved limits.
    pub values: IntakeLimitValues,
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
}

impl Limits {
    /// From the config's `[intake]`, `[connector.intake]` and `[http]` tables.
    pub fn new(config: &Config) -> Limits {
        let slot_count = config
            .http
            .max_connections
            .saturating_sub(config.http.api_reserve)
            .max(1);
        Limits {
            base: config.intake.clone(),
            per_connector: config
                .connectors
                .iter()
                .map(|c| (c.name.clone(), c.intake.clone()))
                .collect(),
            limiters: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(slot_count)),
            slot_count,
        }
    }

    /// The limits of connector `name` (the `[intake]` ones when no `[[connector]]` names it).
    pub fn connector(&self, name: &str) -> Arc<ConnectorLimiter> {
        let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(limiter) = limiters.get(name) {
            return Arc::clone(limiter);
        }
        let values = self
            .per_connector
            .get(name)
            .map(|own| own.resolve(&self.base))
            .unwrap_or_else(|| self.base.resolve(&IntakeLimits::default()));
        let period = Duration::from_secs(60) / values.rate_per_minute.get();
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(values.rate_per_minute))
            .allow_burst(values.burst);
        let limiter = Arc::new(ConnectorLimiter {
            values,
            buckets: RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        });
        limiters.insert(name.to_string(), Arc::clone(&limiter));
        limiter
    }

    /// Intake requests being served now (each holds a slot).
    pub fn intake_in_progress(&self) -> usize {
        self.slot_count
            .saturating_sub(self.slots.available_permits())
    }

    /// A slot for one intake request, held until it is answered; 503 when every slot is taken (the remaining
    /// connections are the API's reserve).
    pub fn intake_slot(&self, connector: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            tracing::warn!(%connector, slots = self.slot_count, "intake refused: every intake slot is in use");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "connector `{connector}`: {} intake requests are in progress, the most served at once \
                     (http.max_connections - http.api_reserve); try again shortly",
                    self.slot_count
                ),
            )
            .with_retry_after(1)
        })
    }
}

impl ConnectorLimiter {
    /// Takes a token of `sender`'s bucket, or answers 429 with `Retry-After`.
    pub fn check_rate(&self, connector: &str, sender: IpAddr) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Forget senders whose bucket is full again, so memory stays bounded by the recent senders.
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets.check_key(&sender).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.buckets.clock().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::info!(%connector, %sender, retry_after_s = secs, "intake refused: rate limit");
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "connector `{connector}`: more than {} requests at once or {} a minute from {sender}; try again in {secs} s",
                    self.values.burst, self.values.rate_per_minute
                ),
            )
            .with_retry_after(secs.max(1))
        })
    }

    /// Reads a request body within the connector's size and time limits: 413 from `Content-Length` before a byte is
    /// read, or as soon as more than the limit arrived (what arrived is dropped); 408 when it is too slow.
    pub async fn read_body(
        &self,
        connector: &str,
        headers: &HeaderMap,
        body: axum::body::Body,
    ) -> Result<Bytes, ApiError> {
        let limit = self.values.max_body;
        let too_large = |size: String| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "connector `{connector}`: the body is {size}, over its limit of {limit} bytes \
                     ([connector.intake] max_body_kib = {})",
                    limit / 1024
                ),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(declared) = declared {
            if declared > limit as u64 {
                return Err(too_large(format!("{declared} bytes (Content-Length)")));
            }
        }
        let mut stream = body.into_data_stream();
        let mut out = BytesMut::with_capacity(declared.map_or(0, |d| d as usize).min(limit));
        let read = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::bad_request(None, format!("reading the request body: {e}"))
                })?;
                if out.len() + chunk.len() > limit {
                    return Err(too_large(format!("more than {limit} bytes")));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(())
        };
        match tokio::time::timeout(self.values.body_timeout, read).await {
            Ok(Ok(())) => Ok(out.freeze()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "connector `{connector}`: the body did not arrive within {} s ([connector.intake] body_timeout_secs)",
                    self.values.body_timeout.as_secs()
                ),
            )),
        }
    }
}
