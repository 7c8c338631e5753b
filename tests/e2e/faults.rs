//! Artifact-store wrappers that make a running export stop where a test
//! wants it: blocked at a gate, or failing like a crashed worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bulk_export::domain::job::UploadedChunk;
use bulk_export::ports::{ArtifactStore, PortError, PortResult};
use bytes::Bytes;
use tokio::sync::watch;

/// Holds every chunk upload until the test opens the gate.
pub struct Gate {
    open: watch::Sender<bool>,
    pub waiting: AtomicUsize,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: watch::channel(false).0,
            waiting: AtomicUsize::new(0),
        })
    }
    pub fn open(&self) {
        // send_replace: `send` drops the value when no upload is waiting
        // (say, the held one was killed), and the gate would stay shut.
        self.open.send_replace(true);
    }
    /// Waits until some upload is held at the gate (the export is mid-way).
    pub async fn reached(&self) {
        for _ in 0..2000 {
            if self.waiting.load(Ordering::SeqCst) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no upload reached the gate");
    }
}

/// An artifact store whose chunk uploads pass through a hook.
pub struct Intercepted<H> {
    pub inner: Arc<dyn ArtifactStore>,
    pub hook: H,
}

#[async_trait]
pub trait ChunkHook: Send + Sync {
    /// Runs before the upload; an error stands for a crash before it.
    async fn before(&self) -> PortResult<usize>;
    /// Runs after the upload of call `n`; an error stands for a crash after it.
    async fn after(&self, n: usize) -> PortResult<()>;
}

/// Holds chunk uploads at the gate.
#[async_trait]
impl ChunkHook for Arc<Gate> {
    async fn before(&self) -> PortResult<usize> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|open| *open).await;
        Ok(0)
    }
    async fn after(&self, _n: usize) -> PortResult<()> {
        Ok(())
    }
}

/// A hook that lets `pass` chunk uploads through, then holds the rest at
/// the gate.
pub struct HoldAfter {
    pass: usize,
    calls: AtomicUsize,
    gate: Arc<Gate>,
}

impl HoldAfter {
    pub fn new(pass: usize, gate: Arc<Gate>) -> Self {
        HoldAfter {
            pass,
            calls: AtomicUsize::new(0),
            gate,
        }
    }
}

#[async_trait]
impl ChunkHook for HoldAfter {
    async fn before(&self) -> PortResult<usize> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n > self.pass {
            self.gate.before().await?;
        }
        Ok(n)
    }
    async fn after(&self, _n: usize) -> PortResult<()> {
        Ok(())
    }
}

/// Fails chosen `upload_chunk` calls: `before` ones fail without writing
/// (a crash before the upload), `after` ones write and then fail (a crash
/// between the upload and the checkpoint).
pub struct Crashes {
    pub calls: AtomicUsize,
    pub fail_before: Vec<usize>,
    pub fail_after: Vec<usize>,
    pub failures: Arc<AtomicUsize>,
}

#[async_trait]
impl ChunkHook for Crashes {
    async fn before(&self) -> PortResult<usize> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_before.contains(&n) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(PortError::transient(
                "injected crash",
                format!("chunk call {n} failed before the upload"),
            ));
        }
        Ok(n)
    }
    async fn after(&self, n: usize) -> PortResult<()> {
        if self.fail_after.contains(&n) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(PortError::transient(
                "injected crash",
                format!("chunk call {n} failed after the upload"),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl<H: ChunkHook> ArtifactStore for Intercepted<H> {
    async fn upload_chunk(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> PortResult<String> {
        let n = self.hook.before().await?;
        let etag = self
            .inner
            .upload_chunk(key, upload_id, number, data)
            .await?;
        self.hook.after(n).await?;
        Ok(etag)
    }
    async fn start_upload(&self, key: &str) -> PortResult<String> {
        self.inner.start_upload(key).await
    }
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        chunks: &[UploadedChunk],
    ) -> PortResult<()> {
        self.inner.complete_upload(key, upload_id, chunks).await
    }
    async fn abort_upload(&self, key: &str, upload_id: &str) -> PortResult<()> {
        self.inner.abort_upload(key, upload_id).await
    }
    async fn delete(&self, key: &str) -> PortResult<()> {
        self.inner.delete(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: usize) -> PortResult<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn retain_only(&self, prefix: &str, keep: &[String]) -> PortResult<()> {
        self.inner.retain_only(prefix, keep).await
    }
    async fn get(&self, key: &str) -> PortResult<Bytes> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, data: Bytes) -> PortResult<()> {
        self.inner.put(key, data).await
    }
    async fn delete_prefix(&self, prefix: &str) -> PortResult<()> {
        self.inner.delete_prefix(prefix).await
    }
    async fn list(&self, prefix: &str) -> PortResult<Vec<String>> {
        self.inner.list(prefix).await
    }
    async fn list_uploads(&self, prefix: &str) -> PortResult<Vec<String>> {
        self.inner.list_uploads(prefix).await
    }
    async fn presign_get(&self, key: &str, ttl: Duration) -> PortResult<String> {
        self.inner.presign_get(key, ttl).await
    }
}
