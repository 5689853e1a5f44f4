//! Adding a pool: the inventory records it through any of its hosts, then the SR service
//! gives it its `Alike_SR`.

use crate::inventory::{AddedPool, Inventory, InventoryError};
use crate::sr::SrService;
use crate::xapi::Credentials;

/// Adds the pool of the host at `address`, then creates or adopts its `Alike_SR` and plugs
/// it everywhere. An SR failure is logged and kept for `sr status`; the pool stays added.
///
/// It runs as its own task, to completion even if the caller goes away, so a pool is never
/// half-added.
pub async fn add_host(
    inventory: &Inventory,
    sr: &SrService,
    address: String,
    credentials: Credentials,
) -> Result<AddedPool, InventoryError> {
    let inventory = inventory.clone();
    let sr = sr.clone();
    tokio::spawn(async move {
        let added = inventory.add_host(&address, credentials).await?;
        sr.pool_added(&added.pool.uuid).await;
        Ok(added)
    })
    .await
    .map_err(|e| InventoryError::Internal(format!("host add task failed: {e}")))?
}
