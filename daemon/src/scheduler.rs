//! Time-driven changes: quotes expire and invoices become overdue by themselves, at start-up and within a minute
//! of the moment, through the engine like any other change (so they are audited and reach the outbox).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

/// How often the scheduler looks.
pub const TICK: Duration = Duration::from_secs(30);

/// Run until cancelled.
pub async fn run(engine: Engine, cancel: CancellationToken) {
    loop {
        tick(&engine).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One pass: expire quotes, announce overdue invoices.
pub async fn tick(engine: &Engine) {
    match engine.expire_quotes("scheduler").await {
        Ok(0) => {}
        Ok(n) => tracing::info!(quotes = n, "quotes expired"),
        Err(e) => tracing::error!(error = %e, "expiring quotes failed"),
    }
    match engine.publish_overdue("scheduler").await {
        Ok(0) => {}
        Ok(n) => tracing::info!(invoices = n, "invoices became overdue"),
        Err(e) => tracing::error!(error = %e, "announcing overdue invoices failed"),
    }
}
