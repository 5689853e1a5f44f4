//! `GET /metrics`: the A3's figures in the Prometheus text format (0.0.4), behind the API
//! token like the rest of the API (Prometheus: `authorization: { credentials_file:
//! <state-dir>/api.token }`).
//!
//! The store's figures come from a walk of its chunks, so a walk serves the scrapes of the
//! next minute: scraping every 15 s costs one walk a minute, not four.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{ApiError, AppState};
use crate::dataport::Transport;
use crate::store::StoreStats;

/// How long a walk of the store serves.
const STORE_STATS_TTL: Duration = Duration::from_secs(60);

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// The last walk of the store, and when it was made.
#[derive(Clone, Default)]
pub struct StoreStatsCache(Arc<tokio::sync::Mutex<Option<(Instant, StoreStats)>>>);

impl StoreStatsCache {
    async fn get(&self, state: &AppState) -> Result<StoreStats, ApiError> {
        // Held across the walk: concurrent scrapes wait for one walk, not start several.
        let mut cached = self.0.lock().await;
        if let Some((at, stats)) = cached.as_ref()
            && at.elapsed() < STORE_STATS_TTL
        {
            return Ok(stats.clone());
        }
        let store = state.store.clone();
        let stats = tokio::task::spawn_blocking(move || store.stats())
            .await
            .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        *cached = Some((Instant::now(), stats.clone()));
        Ok(stats)
    }
}

/// Everything one scrape reports.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The store's figures.
    pub store: StoreStats,
    /// Runs by `(job kind, state)`.
    pub runs: Vec<(String, String, u64)>,
    /// Connected ABDs over QUIC and over the TCP fallback.
    pub connected: (u64, u64),
    /// ABD VMs by state (`idle`, `busy`, ...).
    pub abd_vms: Vec<(String, u64)>,
    /// Pools added.
    pub pools: u64,
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let store = state.metrics.get(&state).await?;
    let connected = state.dataport.connected();
    let over = |t: Transport| connected.values().filter(|c| c.transport == t).count() as u64;
    let mut abd_vms = std::collections::BTreeMap::<String, u64>::new();
    for row in state.catalog.abd_vm_list(None)? {
        *abd_vms.entry(row.state).or_default() += 1;
    }
    let snapshot = Snapshot {
        store,
        runs: state.catalog.run_counts()?,
        connected: (over(Transport::Quic), over(Transport::Tcp)),
        abd_vms: abd_vms.into_iter().collect(),
        pools: state.catalog.pool_uuids()?.len() as u64,
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&snapshot),
    ))
}

/// The text format: `# HELP`, `# TYPE` and the samples of each metric.
pub fn render(s: &Snapshot) -> String {
    let mut out = Text(String::new());
    let st = &s.store;
    out.gauge(
        "a3_store_versions",
        "Committed versions in the store.",
        &[(vec![], st.versions as f64)],
    );
    out.gauge(
        "a3_store_disk_versions",
        "Disk versions in the committed versions.",
        &[(vec![], st.disks as f64)],
    );
    out.gauge(
        "a3_store_logical_bytes",
        "The sum of the disk sizes of every version: what plain copies would take.",
        &[(vec![], st.logical_bytes as f64)],
    );
    out.gauge(
        "a3_store_stored_bytes",
        "Bytes of the live chunks on disk.",
        &[(vec![], st.stored_bytes as f64)],
    );
    out.gauge(
        "a3_store_chunks",
        "Live chunks.",
        &[(vec![], st.chunks as f64)],
    );
    out.gauge(
        "a3_store_quarantined_chunks",
        "Chunks quarantined by verify (corrupt, kept for inspection).",
        &[(vec![], st.quarantined_chunks as f64)],
    );
    if let Some(ratio) = st.dedup_ratio {
        out.gauge(
            "a3_store_dedup_ratio",
            "Logical bytes over stored bytes: what dedup, zero skipping and compression save.",
            &[(vec![], ratio)],
        );
    }
    let runs: Vec<_> = s
        .runs
        .iter()
        .map(|(kind, state, n)| {
            (
                vec![("kind", kind.as_str()), ("state", state.as_str())],
                *n as f64,
            )
        })
        .collect();
    out.gauge("a3_runs", "Job runs by kind and state.", &runs);
    out.gauge(
        "a3_abds_connected",
        "ABD agents connected to port 2811, by transport.",
        &[
            (vec![("transport", "QUIC")], s.connected.0 as f64),
            (vec![("transport", "TLS/TCP")], s.connected.1 as f64),
        ],
    );
    let abds: Vec<_> = s
        .abd_vms
        .iter()
        .map(|(state, n)| (vec![("state", state.as_str())], *n as f64))
        .collect();
    out.gauge("a3_abd_vms", "ABD VMs by state.", &abds);
    out.gauge(
        "a3_pools",
        "Pools added to this A3.",
        &[(vec![], s.pools as f64)],
    );
    out.0
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

struct Text(String);

impl Text {
    fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} gauge");
        for (labels, value) in samples {
            self.0.push_str(name);
            if !labels.is_empty() {
                let inner: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(self.0, "{{{}}}", inner.join(","));
            }
            let _ = writeln!(self.0, " {value}");
        }
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let s = Snapshot {
            store: StoreStats {
                versions: 2,
                logical_bytes: 3 << 20,
                stored_bytes: 1 << 20,
                dedup_ratio: Some(3.0),
                ..StoreStats::default()
            },
            runs: vec![("backup".into(), "succeeded".into(), 4)],
            connected: (1, 0),
            abd_vms: vec![("idle".into(), 2)],
            pools: 1,
        };
        let text = render(&s);
        for line in [
            "# TYPE a3_store_versions gauge",
            "a3_store_versions 2",
            "a3_store_dedup_ratio 3",
            "a3_runs{kind=\"backup\",state=\"succeeded\"} 4",
            "a3_abds_connected{transport=\"QUIC\"} 1",
            "a3_abds_connected{transport=\"TLS/TCP\"} 0",
            "a3_abd_vms{state=\"idle\"} 2",
            "a3_pools 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
