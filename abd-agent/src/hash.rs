//! The hash job: read a whole device and hash it with BLAKE3. The A3's diag job attaches a
//! small test disk of known content and compares the digest, which proves that hot-plug,
//! device resolution and reads work on this ABD without touching the store.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use a3_shared::proto::{AgentMsg, HashJob};
use anyhow::Context;

use crate::device;
use crate::jobs::Counters;

/// Bytes per read.
const READ_BYTES: usize = 1 << 20;

/// Runs one hash job; the message to send when it succeeds.
pub async fn run(job: HashJob, c: Arc<Counters>) -> anyhow::Result<AgentMsg> {
    let (file, size) = device::open_read(&job.device).await?;
    c.total.store(size, Ordering::Relaxed);
    let started = Instant::now();
    let counters = c.clone();
    let label = job.device.clone();
    let digest = tokio::task::spawn_blocking(move || -> anyhow::Result<[u8; 32]> {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; READ_BYTES];
        let mut at = 0u64;
        while at < size {
            let want = usize::try_from((size - at).min(READ_BYTES as u64)).unwrap_or(READ_BYTES);
            let n = file
                .read_at(&mut buf[..want], at)
                .with_context(|| format!("device '{label}': read at byte {at}"))?;
            if n == 0 {
                anyhow::bail!("device '{label}': ended at byte {at} of {size}");
            }
            hasher.update(&buf[..n]);
            at += n as u64;
            Counters::add(&counters.done, n as u64);
            Counters::add(&counters.bytes_io, n as u64);
        }
        Ok(*hasher.finalize().as_bytes())
    })
    .await
    .context("the hash task died")??;
    Ok(AgentMsg::Hashed {
        job: job.job,
        size,
        digest,
        micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_every_byte_of_the_device() {
        let path = std::env::temp_dir().join(format!("abd-hash-test-{}", std::process::id()));
        let content: Vec<u8> = (0..(3 * READ_BYTES + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        let c = Arc::new(Counters::default());
        let job = HashJob {
            job: 7,
            device: path.display().to_string(),
        };
        let msg = run(job, c.clone()).await.unwrap();
        let AgentMsg::Hashed {
            job, size, digest, ..
        } = msg
        else {
            panic!("{msg:?}");
        };
        assert_eq!((job, size), (7, content.len() as u64));
        assert_eq!(digest, *blake3::hash(&content).as_bytes());
        assert_eq!(c.done.load(Ordering::Relaxed), content.len() as u64);
        std::fs::remove_file(&path).unwrap();
    }
}
