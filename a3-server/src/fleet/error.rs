//! The fleet's error: what went wrong provisioning, reviving, reaching or destroying an ABD.

use std::net::SocketAddr;
use std::time::Duration;

use crate::catalog::CatalogError;
use crate::inventory::InventoryError;
use crate::pki::PkiError;
use crate::ssh::KeyError;
use crate::xapi::XapiError;

use super::template::TemplateError;

/// A fleet operation's failure. Messages name the ABD and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No ABD has this id.
    #[error("no ABD '{0}'; see `a3-server abd list`")]
    UnknownAbd(String),
    /// The ABD is held by a run.
    #[error("ABD '{id}' is busy with run {run}; wait for it to end (`a3-server job list`)")]
    Busy {
        /// The ABD.
        id: String,
        /// The run holding it.
        run: i64,
    },
    /// The ABD's VM does not exist yet (it is being provisioned).
    #[error("ABD '{id}' has no VM yet (state {state}); try again later")]
    NoVm {
        /// The ABD.
        id: String,
        /// Its state.
        state: String,
    },
    /// The ABD reported an address that does not parse.
    #[error("ABD '{id}': bad address {cidr:?}")]
    BadAddress {
        /// The ABD.
        id: String,
        /// What it reported.
        cidr: String,
    },
    /// Nothing tells the ABD's address.
    #[error(
        "ABD '{0}' has no known address: it uses DHCP, has not reported its lease \
         (vm-data/abd/assigned-ip) and is not connected; check its VM runs"
    )]
    NoAddress(String),
    /// The ABD's agent did not connect in time.
    #[error(
        "ABD '{id}' did not connect to port 2811 within {limit:?}; check that the pool's \
         network reaches the A3 (`a3-server abd diag`)"
    )]
    NotConnected {
        /// The ABD.
        id: String,
        /// The bound (`abd_boot_timeout_secs`).
        limit: Duration,
    },
    /// Port 2811 has no address an ABD could be told.
    #[error(
        "port 2811 listens on {0}: ABDs need the address to reach the A3 at; set \
         `data_listen` to the A3's address on the pool's network"
    )]
    UnspecifiedDataAddress(SocketAddr),
    /// No DNS server for ABDs.
    #[error("DNS servers for ABDs: {0}")]
    Dns(String),
    /// A new ABD could not be made; what was made of it is removed.
    #[error("provisioning ABD '{id}': {source}")]
    Provisioning {
        /// The ABD.
        id: String,
        /// Why.
        #[source]
        source: Box<FleetError>,
    },
    /// The ABD template.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A pool's XAPI.
    #[error(transparent)]
    Xapi(#[from] XapiError),
    /// Reaching a pool.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Enrollment tokens.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The A3's SSH key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The pool's `Alike_SR`, which ABDs boot from, cannot be plugged.
    #[error("ABDs boot from Alike_SR: {0}")]
    Sr(#[from] Box<crate::sr::SrError>),
}
