//! The local stand-ins for the worker Lambda and the sweeper schedule.

use std::time::Duration;

use bulk_export::embedded::SqliteQueue;
use bulk_export::engine::Engine;
use bulk_export::ports::WorkQueue;
use tokio::sync::watch;
use tokio::time::Instant;

/// Receives one message at a time and handles it within the invocation
/// budget. A message whose handler fails stays on the queue and comes back
/// after the visibility timeout; one that fails on its last allowed attempt
/// fails its job.
pub async fn work_loop(
    n: usize,
    engine: Engine,
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
            match engine.handle(&d.message, Instant::now() + budget).await {
                Ok(_) => {
                    if let Err(e) = queue.delete(&d.receipt).await {
                        tracing::warn!(worker = n, error = %e, "could not delete a handled message");
                    }
                }
                // Only failures count: a duplicate delivery that succeeds (and
                // loses its checkpoint race harmlessly) never fails a job.
                Err(e) if d.receive_count >= engine.config.max_attempts => {
                    let reason = format!("work failed {} times; last error: {e}", d.receive_count);
                    if engine.fail_job(d.message.job_id(), &reason).await.is_ok() {
                        let _ = queue.delete(&d.receipt).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = n, message = ?d.message, error = %e, "work failed; it will be retried");
                }
            }
        }
    }
}

pub async fn sweep_loop(engine: Engine, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = engine.sweep().await {
            tracing::warn!(error = %e, "sweep failed");
        }
    }
}
