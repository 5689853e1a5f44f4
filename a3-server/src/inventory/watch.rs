//! One task per pool keeps its inventory current: connect to the master (failing over to
//! the other hosts), take a full sync, then apply `event.from` batches until the
//! connection breaks, and start over with a backoff.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::xapi::{EventWatcher, Session, XapiError};

use super::{Inventory, InventoryError, sync};

/// The first pause after a failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A connected session and the event token its full sync started from.
pub struct Connected {
    /// The session on the master.
    pub session: Arc<Session>,
    /// Events after this token are not in the catalog yet.
    pub token: String,
}

/// Runs until `cancel` fires or the pool is removed. `initial` is the connection host add
/// already synchronised through, so the watcher does not sync twice.
pub async fn run(
    inventory: Inventory,
    pool_uuid: String,
    cancel: CancellationToken,
    mut initial: Option<Connected>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut lost = false;
    loop {
        let mut connected = false;
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = watch(&inventory, &pool_uuid, initial.take(), &mut connected, lost) => r,
        };
        lost = true;
        let Err(e) = outcome;
        if let InventoryError::UnknownPool(_) = e {
            return;
        }
        if connected {
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(pool = %pool_uuid, error = %e, "pool connection lost; reconnecting");
        if let Err(ce) = inventory
            .catalog
            .set_pool_status(&pool_uuid, None, &e.to_string())
        {
            tracing::error!(pool = %pool_uuid, error = %ce, "cannot record the pool's status");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn watch(
    inventory: &Inventory,
    pool_uuid: &str,
    initial: Option<Connected>,
    connected: &mut bool,
    again: bool,
) -> Result<Infallible, InventoryError> {
    let Connected { session, token } = match initial {
        Some(c) => c,
        None => {
            let (session, pool_ref) = inventory.connect(pool_uuid).await?;
            let session = Arc::new(session);
            // The token first: changes made during the sync arrive again as events.
            let token = EventWatcher::current_token(&session, &pool_ref).await?;
            let report = sync::full_sync(&inventory.catalog, pool_uuid, &session).await?;
            tracing::info!(pool = %pool_uuid, master = %session.endpoint(), objects = report.objects, "inventory synchronised");
            Connected { session, token }
        }
    };
    *connected = true;
    inventory
        .catalog
        .set_pool_status(pool_uuid, Some(&session.endpoint().to_string()), "")?;
    if again {
        // No one listening is fine: the reconciler's periodic pass comes anyway.
        let _ = inventory.reconnected.send(pool_uuid.to_owned());
    }
    let mut watcher = EventWatcher::new(session, sync::EVENT_CLASSES, token);
    loop {
        let events = match watcher.next_batch().await {
            Ok(events) => events,
            Err(e @ XapiError::EventsLost { .. }) => return Err(e.into()),
            Err(e) => {
                // Let the host go: a failover may pick another one.
                if !e.is_unreachable() {
                    watcher.session().logout().await;
                }
                return Err(e.into());
            }
        };
        let changes = sync::changes(events);
        let catalog = inventory.catalog.clone();
        let pool = pool_uuid.to_owned();
        tokio::task::spawn_blocking(move || catalog.apply_changes(&pool, &changes))
            .await
            .map_err(|e| InventoryError::Internal(format!("inventory writer: {e}")))??;
    }
}
