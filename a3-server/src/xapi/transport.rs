//! One host's XAPI endpoint over HTTPS: XML-RPC calls with bounded timeouts and a pinned
//! certificate.

use std::fmt;
use std::time::Duration;

use a3_shared::xapi_wire::{Response, Value, decode_response, encode_call};

use super::error::XapiError;
use super::tls::{Fingerprint, PresentedCert, pinned_client_config};

/// XAPI's HTTPS port.
pub const DEFAULT_PORT: u16 = 443;

/// The largest answer accepted: far above a `get_all_records` of thousands of VMs, far
/// below what would exhaust the A3's memory.
const MAX_RESPONSE: usize = 1 << 30;
/// Responses larger than this are decoded off the async runtime's threads.
const DECODE_INLINE_LIMIT: usize = 64 * 1024;

/// Where a host's XAPI listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// A host name or IP address (no brackets, no port), as XAPI reports `host.address`.
    pub address: String,
    /// The HTTPS port; every host of a pool uses the same one.
    pub port: u16,
}

/// An address the user typed that is not `HOST[:PORT]` or `https://HOST[:PORT]/`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a host address; give HOST, HOST:PORT or https://HOST[:PORT]/")]
pub struct BadAddress(pub String);

impl Endpoint {
    /// Parses `HOST`, `HOST:PORT`, `[V6]:PORT` or `https://HOST[:PORT][/]`.
    pub fn parse(input: &str) -> Result<Endpoint, BadAddress> {
        let bad = || BadAddress(input.to_owned());
        let s = input.trim();
        let s = s.strip_prefix("https://").unwrap_or(s);
        let s = s.trim_end_matches('/');
        if s.is_empty() || s.contains('/') || s.contains("://") {
            return Err(bad());
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, tail) = rest.split_once(']').ok_or_else(bad)?;
            let port = match tail {
                "" => DEFAULT_PORT,
                t => t
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)?,
            };
            return Ok(Endpoint::new(addr, port));
        }
        match s.matches(':').count() {
            0 => Ok(Endpoint::new(s, DEFAULT_PORT)),
            1 => {
                let (addr, port) = s.split_once(':').ok_or_else(bad)?;
                let port = port.parse().map_err(|_| bad())?;
                if addr.is_empty() {
                    return Err(bad());
                }
                Ok(Endpoint::new(addr, port))
            }
            // A bare IPv6 address.
            _ => Ok(Endpoint::new(s, DEFAULT_PORT)),
        }
    }

    /// An endpoint from an address XAPI reports and a known port.
    pub fn new(address: &str, port: u16) -> Endpoint {
        Endpoint {
            address: address.to_owned(),
            port,
        }
    }

    /// The XML-RPC URL.
    pub fn url(&self) -> String {
        if self.address.contains(':') {
            format!("https://[{}]:{}/", self.address, self.port)
        } else {
            format!("https://{}:{}/", self.address, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    /// `address` for the default port, else `address:port`: what a user would type.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.address.contains(':')) {
            (DEFAULT_PORT, _) => f.write_str(&self.address),
            (port, true) => write!(f, "[{}]:{port}", self.address),
            (port, false) => write!(f, "{}:{port}", self.address),
        }
    }
}

/// The bounds on every call.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// A whole call, for calls without their own bound.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(60),
        }
    }
}

/// An HTTPS connection pool to one host, trusting only its pinned certificate.
#[derive(Clone)]
pub struct Transport {
    endpoint: Endpoint,
    url: String,
    http: reqwest::Client,
    pin: Option<Fingerprint>,
    presented: PresentedCert,
    timeouts: Timeouts,
}

impl Transport {
    /// A transport to `endpoint` trusting exactly `pin`; with `None` (first contact) it
    /// trusts what the host presents and [`Transport::presented`] tells what that was.
    pub fn new(
        endpoint: Endpoint,
        pin: Option<Fingerprint>,
        timeouts: Timeouts,
    ) -> Result<Transport, XapiError> {
        let (tls, presented) = pinned_client_config(pin);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .http1_only()
            .tcp_nodelay(true)
            // XAPI calls never redirect; an HTTP handler's 302 names another host, with
            // its own certificate: the caller decides (see `jobs::attach::import_raw`).
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| XapiError::Tls {
                host: endpoint.to_string(),
                detail: format!("cannot build the HTTPS client: {e}"),
            })?;
        Ok(Transport {
            url: endpoint.url(),
            endpoint,
            http,
            pin,
            presented,
            timeouts,
        })
    }

    /// The host this transport talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The certificate pin this transport enforces.
    pub fn pin(&self) -> Option<Fingerprint> {
        self.pin
    }

    /// The fingerprint of the certificate the host presented in the last handshake.
    pub fn presented(&self) -> Option<Fingerprint> {
        self.presented.get()
    }

    /// The bounds this transport was built with.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The pinned HTTPS client, for XAPI's HTTP handlers (`/import`, `/export_raw_vdi`,
    /// …), which carry their session in the query string. Bulk transfers should set their
    /// own per-request timeout: the client's default bounds a whole call.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The URL of `path_and_query` (starting with `/`) on this host.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.url.trim_end_matches('/'))
    }

    /// Calls `method` with `params` (the session ref first, if the method takes one),
    /// bounded by the default request timeout.
    pub async fn call(&self, method: &str, params: &[Value]) -> Result<Value, XapiError> {
        self.call_with_timeout(method, params, self.timeouts.request)
            .await
    }

    /// Calls `method`, bounded by `timeout`.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        params: &[Value],
        timeout: Duration,
    ) -> Result<Value, XapiError> {
        let host = self.endpoint.to_string();
        let body = encode_call(method, params);
        let resp = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e, method, timeout))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(XapiError::Http {
                host,
                method: method.to_owned(),
                status: status.as_u16(),
            });
        }
        let mut resp = resp;
        let mut bytes =
            Vec::with_capacity(resp.content_length().unwrap_or(0).min(1 << 24) as usize);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport_error(e, method, timeout))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE {
                return Err(XapiError::Unexpected {
                    host,
                    method: method.to_owned(),
                    detail: format!("the answer is larger than {} MiB", MAX_RESPONSE >> 20),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let decoded = if bytes.len() > DECODE_INLINE_LIMIT {
            tokio::task::spawn_blocking(move || decode_response(&bytes))
                .await
                .map_err(|e| XapiError::Unexpected {
                    host: host.clone(),
                    method: method.to_owned(),
                    detail: format!("decoder task failed: {e}"),
                })?
        } else {
            decode_response(&bytes)
        };
        match decoded {
            Ok(Response::Success(v)) => Ok(v),
            Ok(Response::Failure(desc)) => Err(XapiError::from_failure(&host, method, desc)),
            Err(source) => Err(XapiError::Wire {
                host,
                method: method.to_owned(),
                source,
            }),
        }
    }

    fn transport_error(&self, e: reqwest::Error, method: &str, timeout: Duration) -> XapiError {
        let host = self.endpoint.to_string();
        if let (Some(pinned), Some(presented)) = (self.pin, self.presented.get())
            && pinned != presented
        {
            return XapiError::CertificateChanged {
                host,
                pinned,
                presented,
            };
        }
        if let Some(tls) = find_source::<rustls::Error>(&e) {
            return XapiError::Tls {
                host,
                detail: tls.to_string(),
            };
        }
        if e.is_timeout() {
            // A connect timeout is "unreachable", not a slow call.
            if e.is_connect() {
                return XapiError::Unreachable {
                    host,
                    detail: format!("no connection within {}s", self.timeouts.connect.as_secs()),
                };
            }
            return XapiError::Timeout {
                host,
                method: method.to_owned(),
                after: timeout,
            };
        }
        XapiError::Unreachable {
            host,
            detail: root_cause(&e),
        }
    }
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// The innermost cause ("Connection refused (os error 111)"), which says more than
/// reqwest's "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let e = Endpoint::parse("127.0.0.12").unwrap();
        assert_eq!((e.address.as_str(), e.port), ("127.0.0.12", 443));
        let e = Endpoint::parse("127.0.0.12:8443").unwrap();
        assert_eq!((e.address.as_str(), e.port), ("127.0.0.12", 8443));
        assert_eq!(e.to_string(), "127.0.0.12:8443");
        assert_eq!(e.url(), "https://127.0.0.12:8443/");
        let e = Endpoint::parse("https://xcp1.example.com/").unwrap();
        assert_eq!((e.address.as_str(), e.port), ("xcp1.example.com", 443));
        assert_eq!(e.to_string(), "xcp1.example.com");
        let e = Endpoint::parse("[::1]:4443").unwrap();
        assert_eq!((e.address.as_str(), e.port), ("::1", 4443));
        assert_eq!(e.url(), "https://[::1]:4443/");
        for bad in ["", "host:port", "http://x/y", "a/b", ":443"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_silent_host_is_cut_off_by_the_timeouts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts connections and never says a word, not even a TLS hello.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let bound = Duration::from_millis(300);
        let timeouts = Timeouts {
            connect: bound,
            request: bound,
        };
        let t = Transport::new(Endpoint::new("127.0.0.1", port), None, timeouts).unwrap();
        let err = t.call("pool.get_all", &[]).await.unwrap_err();
        assert!(
            matches!(
                err,
                XapiError::Unreachable { .. } | XapiError::Timeout { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("300ms"), "{err}");
        silent.abort();
    }
}
