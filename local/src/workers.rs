//! The local stand-ins for the worker Lambda and the sweeper schedule.

use std::time::Duration;

use bulk_export::embedded::SqliteQueue;
use bulk_export::engine::{Disposition, Services};
use bulk_export::ports::WorkQueue;
use tokio::sync::watch;
use tokio::time::Instant;

/// Receives one message at a time and handles it within the invocation
/// budget; `Services::process` decides whether a failed one comes back
/// (after a growing delay) or fails its job.
pub async fn work_loop(
    n: usize,
    engine: Services,
    queue: SqliteQueue,
    budget: Duration,
    visibility: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let deliveries = match queue.receive(1, visibility).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(worker = n, error = %e, "queue receive failed");
                Vec::new()
            }
        };
        if deliveries.is_empty() {
            tokio::select! {
                _ = queue.wait_for_work(Duration::from_millis(100)) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        for d in deliveries {
            let result = match engine
                .worker
                .process(&d.message, d.receive_count, Instant::now() + budget)
                .await
            {
                Disposition::Done => queue.delete(&d.receipt).await,
                Disposition::RetryAfter(delay) => queue.retry_later(&d.receipt, delay).await,
            };
            if let Err(e) = result {
                tracing::warn!(worker = n, error = %e, "could not settle a handled message");
            }
        }
    }
}

pub async fn sweep_loop(engine: Services, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = engine.sweeper.sweep().await {
            tracing::warn!(error = %e, "sweep failed");
        }
    }
}

/// The in-process scheduler: every `every`, fires the schedules that are
/// due (the same engine call the scheduler Lambda makes each minute).
pub async fn schedule_loop(engine: Services, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match engine.schedules.fire_due_schedules().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "scheduled runs started"),
            Err(e) => tracing::warn!(error = %e, "scheduler tick failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
