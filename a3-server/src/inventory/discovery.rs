//! Reaching a pool: log in through any host, follow `HOST_IS_SLAVE` to the master, and
//! when the master is gone ask the other known hosts (failover).

use std::collections::HashMap;

use crate::catalog::Catalog;
use crate::catalog::inventory::PoolAccess;
use crate::xapi::records::PoolRecord;
use crate::xapi::{Credentials, Endpoint, Fingerprint, Session, Timeouts, Transport, XapiError};

use super::InventoryError;

/// How many `HOST_IS_SLAVE` answers in a row are followed before giving up (a pool in the
/// middle of a master change can point at a host that points on again).
const MAX_REDIRECTS: usize = 3;

/// A session on a pool's master, and the certificates seen on the way there.
pub struct Reached {
    /// The session on the master.
    pub session: Session,
    /// Each host contacted on the way (supporters, then the master) and the certificate
    /// it presented: the pins to record for hosts contacted for the first time.
    pub seen: HashMap<Endpoint, Fingerprint>,
}

/// Logs in at `start`, following `HOST_IS_SLAVE` to the master. Each host is held to its
/// pinned certificate, if the catalog has one.
pub async fn login_following_master(
    catalog: &Catalog,
    start: Endpoint,
    credentials: &Credentials,
    timeouts: Timeouts,
) -> Result<Reached, InventoryError> {
    let mut seen = HashMap::new();
    let mut endpoint = start;
    let mut hops = Vec::new();
    loop {
        let pin = catalog.pin_for(&endpoint)?;
        let transport = Transport::new(endpoint.clone(), pin, timeouts)?;
        let probe = transport.clone();
        let result = Session::login(transport, credentials.clone()).await;
        if let Some(fp) = probe.presented().filter(|fp| pin.is_none_or(|p| p == *fp)) {
            seen.insert(endpoint.clone(), fp);
        }
        match result {
            Ok(session) => return Ok(Reached { session, seen }),
            Err(XapiError::HostIsSlave { master, .. }) if hops.len() < MAX_REDIRECTS => {
                tracing::info!(supporter = %endpoint, %master, "following HOST_IS_SLAVE");
                hops.push(endpoint.to_string());
                // XAPI names the master by address only; pool members share the port.
                endpoint = Endpoint::new(&master, endpoint.port);
            }
            Err(XapiError::HostIsSlave { master, host }) => {
                return Err(InventoryError::MasterLoop {
                    path: format!("{} -> {host} -> {master}", hops.join(" -> ")),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connects to a host only to learn its certificate (to pin a pool member at host add).
/// `None` when it cannot be reached now; it is then pinned when first contacted.
pub async fn probe_certificate(endpoint: Endpoint, timeouts: Timeouts) -> Option<Fingerprint> {
    let transport = Transport::new(endpoint.clone(), None, timeouts).ok()?;
    // Any XAPI answer, even an error, means the handshake completed.
    if let Err(e) = transport.call("system.listMethods", &[]).await {
        tracing::debug!(host = %endpoint, error = %e, "certificate probe");
    }
    transport.presented()
}

/// A session on the current master of a recorded pool: the last known master first, then
/// every other known host, following `HOST_IS_SLAVE`. Records pins of hosts contacted for
/// the first time, and refuses a host that belongs to another pool.
pub async fn connect_pool(
    catalog: &Catalog,
    access: &PoolAccess,
    credentials: &Credentials,
    timeouts: Timeouts,
) -> Result<(Session, String), InventoryError> {
    let mut candidates: Vec<_> = access.hosts.iter().collect();
    // The last known master first; the sort is stable, so the rest keep their order.
    candidates.sort_by_key(|h| h.reference != access.master_ref);
    let mut failures = Vec::new();
    for host in candidates {
        let endpoint = Endpoint::new(&host.address, access.port);
        let reached = match login_following_master(catalog, endpoint, credentials, timeouts).await {
            Ok(r) => r,
            // Every host checks the same password: no point asking the others.
            Err(e @ InventoryError::Xapi(XapiError::AuthenticationFailed { .. })) => return Err(e),
            Err(e) => {
                tracing::warn!(pool = %access.uuid, error = %e, "pool host not usable");
                failures.push(e.to_string());
                continue;
            }
        };
        for (ep, fp) in &reached.seen {
            if let Some(h) = access
                .hosts
                .iter()
                .find(|h| h.pin.is_none() && h.address == ep.address)
            {
                tracing::info!(host = %ep, fingerprint = %fp, "pinned certificate on first contact");
                catalog.set_pin(&h.uuid, *fp)?;
            }
        }
        let session = reached.session;
        let pools = session.get_all_records::<PoolRecord>().await?;
        match pools.into_iter().next() {
            Some((pool_ref, pool)) if pool.uuid == access.uuid => return Ok((session, pool_ref)),
            other => {
                let found = other.map(|(_, p)| p.uuid).unwrap_or_default();
                failures.push(format!(
                    "host {} now belongs to pool {found:?}, not {}",
                    session.endpoint(),
                    access.uuid
                ));
                session.logout().await;
            }
        }
    }
    Err(InventoryError::NoUsableHost {
        pool: access.uuid.clone(),
        failures: failures.join("; "),
    })
}
