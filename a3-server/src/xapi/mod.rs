//! The A3's XAPI client, on the shared wire codec ([`a3_shared::xapi_wire`]).
//!
//! Who does what:
//! - [`tls`]: trust on first use; a verifier that accepts exactly a host's pinned
//!   certificate fingerprint.
//! - [`transport`]: one host's HTTPS endpoint; XML-RPC calls with bounded timeouts.
//! - [`session`]: a logged-in session; re-login on `SESSION_INVALID`, `Async.*` calls
//!   awaited through their task.
//! - [`records`]: typed records of the classes the A3 reads.
//! - [`ops`]: one typed function per call of the pool workflow, and helpers on raw
//!   records; nothing outside this module names an XAPI method.
//! - [`owner`]: the `a3_run` tag naming the A3 instance and run that made an object.
//! - [`create`]: the specs of the VMs, VDIs, VBDs and VIFs the A3 creates.
//! - [`events`]: the `event.from` watcher.
//! - [`error`]: [`XapiError`], typed per XAPI error code.
//!
//! ```no_run
//! # async fn demo() -> Result<(), a3_server::xapi::XapiError> {
//! use a3_server::xapi::{Credentials, Endpoint, Session, Timeouts, Transport, records::VmRecord};
//! let endpoint = Endpoint::parse("192.0.2.10").unwrap();
//! let transport = Transport::new(endpoint, None, Timeouts::default())?;
//! let pin = transport.presented(); // after the first call: record it as the host's pin
//! let creds = Credentials { username: "root".into(), password: "pw".into() };
//! let session = Session::login(transport, creds).await?;
//! let vms = session.get_all_records::<VmRecord>().await?;
//! # let _ = (pin, vms); Ok(()) }
//! ```

pub mod create;
pub mod error;
pub mod events;
pub mod ops;
pub mod owner;
pub mod records;
pub mod session;
pub mod tls;
pub mod transport;

pub use error::XapiError;
pub use events::{Event, EventWatcher, Operation};
pub use session::{Credentials, Session};
pub use tls::Fingerprint;
pub use transport::{Endpoint, Timeouts, Transport};
