//! A logged-in XAPI session: calls carry the session ref, an expired session is renewed
//! once, and `Async.*` calls are awaited through their task.

use std::fmt;
use std::time::Duration;

use a3_shared::xapi_wire::Value;
use a3_shared::xapi_wire::xmlrpc::decode_value_document;
use tokio::sync::Mutex;

use super::error::XapiError;
use super::records::{Record, parse_all_records};
use super::transport::{Endpoint, Transport};

/// The API version the A3 announces at login.
const API_VERSION: &str = "1.0";
/// Who the A3 says it is (shown in the host's session list).
const ORIGINATOR: &str = "a3-server";
/// How long an `Async.*` call may run before the A3 gives up waiting (the task keeps
/// running on the host).
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// A user name and password for XAPI. The password never shows in `Debug`.
#[derive(Clone)]
pub struct Credentials {
    /// The XAPI user (usually `root`).
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A session on one host (normally the pool master).
pub struct Session {
    transport: Transport,
    credentials: Credentials,
    session_ref: Mutex<String>,
}

impl Session {
    /// Logs in. A supporter answers [`XapiError::HostIsSlave`] with the master's address.
    pub async fn login(
        transport: Transport,
        credentials: Credentials,
    ) -> Result<Session, XapiError> {
        let session_ref = login_call(&transport, &credentials).await?;
        Ok(Session {
            transport,
            credentials,
            session_ref: Mutex::new(session_ref),
        })
    }

    /// The host this session is on.
    pub fn endpoint(&self) -> &Endpoint {
        self.transport.endpoint()
    }

    /// The transport (for its pin, its presented certificate, and XAPI's HTTP handlers).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The current session ref, for the `session_id` of XAPI's HTTP handlers.
    pub async fn session_ref(&self) -> String {
        self.session_ref.lock().await.clone()
    }

    /// Calls `method(session, args…)`. On `SESSION_INVALID` it logs in again and retries
    /// once.
    pub async fn call(&self, method: &str, args: &[Value]) -> Result<Value, XapiError> {
        self.call_bounded(method, args, self.transport.timeouts().request)
            .await
    }

    /// [`Session::call`] with its own bound (for `event.from`, which blocks on the host).
    pub async fn call_bounded(
        &self,
        method: &str,
        args: &[Value],
        timeout: Duration,
    ) -> Result<Value, XapiError> {
        let used = self.session_ref.lock().await.clone();
        match self.call_as(&used, method, args, timeout).await {
            Err(XapiError::SessionInvalid { .. }) => {
                let fresh = self.renew(&used).await?;
                self.call_as(&fresh, method, args, timeout).await
            }
            other => other,
        }
    }

    /// Calls `Async.<method>` and waits for its task: the task's result, or its error as a
    /// typed error. The task is destroyed afterwards.
    pub async fn call_async(&self, method: &str, args: &[Value]) -> Result<Value, XapiError> {
        self.call_async_bounded(method, args, DEFAULT_TASK_TIMEOUT)
            .await
    }

    /// [`Session::call_async`], giving up on waiting after `timeout`.
    pub async fn call_async_bounded(
        &self,
        method: &str,
        args: &[Value],
        timeout: Duration,
    ) -> Result<Value, XapiError> {
        let task = self.call(&format!("Async.{method}"), args).await?;
        let task = task
            .as_str()
            .ok_or_else(|| self.unexpected(method, "Async call did not return a task ref"))?
            .to_owned();
        let outcome = self.await_task(method, &task, timeout).await;
        if let Err(e) = self.call("task.destroy", &[Value::from(&task)]).await {
            tracing::debug!(%task, error = %e, "task.destroy failed");
        }
        outcome
    }

    /// Every object of class `T`, as `(ref, record)` pairs.
    pub async fn get_all_records<T: Record>(&self) -> Result<Vec<(String, T)>, XapiError> {
        let method = format!("{}.get_all_records", T::CLASS);
        let all = self.call(&method, &[]).await?;
        parse_all_records(&all).map_err(|e| self.unexpected(&method, &e.to_string()))
    }

    /// One object's record.
    pub async fn get_record<T: Record>(&self, reference: &str) -> Result<T, XapiError> {
        let method = format!("{}.get_record", T::CLASS);
        let rec = self.call(&method, &[Value::from(reference)]).await?;
        T::from_value(&rec).map_err(|e| self.unexpected(&method, &e.to_string()))
    }

    /// Ends the session (best effort: a dead host just lets it expire).
    pub async fn logout(&self) {
        let used = self.session_ref.lock().await.clone();
        let bound = self.transport.timeouts().connect;
        if let Err(e) = self
            .transport
            .call_with_timeout("session.logout", &[Value::from(used)], bound)
            .await
        {
            tracing::debug!(host = %self.endpoint(), error = %e, "session.logout failed");
        }
    }

    async fn call_as(
        &self,
        session_ref: &str,
        method: &str,
        args: &[Value],
        timeout: Duration,
    ) -> Result<Value, XapiError> {
        let mut params = Vec::with_capacity(args.len() + 1);
        params.push(Value::from(session_ref));
        params.extend_from_slice(args);
        self.transport
            .call_with_timeout(method, &params, timeout)
            .await
    }

    /// Replaces the session `stale` with a fresh one, unless a concurrent call already did.
    async fn renew(&self, stale: &str) -> Result<String, XapiError> {
        let mut current = self.session_ref.lock().await;
        if *current == stale {
            tracing::info!(host = %self.endpoint(), "XAPI session expired; logging in again");
            *current = login_call(&self.transport, &self.credentials).await?;
        }
        Ok(current.clone())
    }

    /// Waits up to `timeout` for `task` (which `method` started) to end: its result, or
    /// its error as a typed error.
    pub async fn await_task(
        &self,
        method: &str,
        task: &str,
        timeout: Duration,
    ) -> Result<Value, XapiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let rec = self.call("task.get_record", &[Value::from(task)]).await?;
            match rec.get_str("status").unwrap_or("") {
                "pending" | "cancelling" => {}
                "success" => {
                    let result = rec.get_str("result").unwrap_or("");
                    return decode_task_result(result)
                        .map_err(|detail| self.unexpected(method, &detail));
                }
                "failure" => {
                    let desc: Vec<String> = rec
                        .get("error_info")
                        .and_then(Value::as_array)
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    if desc.is_empty() {
                        return Err(self.unexpected(method, "the task failed without error_info"));
                    }
                    return Err(XapiError::from_failure(
                        &self.endpoint().to_string(),
                        method,
                        desc,
                    ));
                }
                "cancelled" => return Err(self.unexpected(method, "the task was cancelled")),
                other => {
                    return Err(self.unexpected(method, &format!("task status {other:?}")));
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(XapiError::Timeout {
                    host: self.endpoint().to_string(),
                    method: format!("Async.{method} (task {task})"),
                    after: timeout,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn unexpected(&self, method: &str, detail: &str) -> XapiError {
        XapiError::Unexpected {
            host: self.endpoint().to_string(),
            method: method.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

async fn login_call(transport: &Transport, credentials: &Credentials) -> Result<String, XapiError> {
    let method = "session.login_with_password";
    let params = [
        Value::from(&credentials.username),
        Value::from(&credentials.password),
        Value::from(API_VERSION),
        Value::from(ORIGINATOR),
    ];
    let v = transport.call(method, &params).await?;
    v.as_str()
        .filter(|s| s.starts_with("OpaqueRef:"))
        .map(str::to_owned)
        .ok_or_else(|| XapiError::Unexpected {
            host: transport.endpoint().to_string(),
            method: method.into(),
            detail: format!("login returned a {}, not a session ref", v.kind()),
        })
}

/// `task.result` holds the return value as an XML-RPC `<value>` document; void results are
/// empty.
fn decode_task_result(result: &str) -> Result<Value, String> {
    let trimmed = result.trim();
    if trimmed.is_empty() {
        return Ok(Value::from(""));
    }
    if !trimmed.starts_with('<') {
        return Ok(Value::from(trimmed));
    }
    decode_value_document(trimmed.as_bytes()).map_err(|e| format!("task result: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_results_decode() {
        assert_eq!(
            decode_task_result("<value>OpaqueRef:abc</value>").unwrap(),
            Value::from("OpaqueRef:abc")
        );
        let refs = decode_task_result(
            "<value><array><data><value>OpaqueRef:a</value></data></array></value>",
        )
        .unwrap();
        assert_eq!(refs, Value::Array(vec![Value::from("OpaqueRef:a")]));
        assert_eq!(decode_task_result("").unwrap(), Value::from(""));
        assert!(decode_task_result("<value><struct>").is_err());
    }

    #[test]
    fn passwords_stay_out_of_debug() {
        let c = Credentials {
            username: "root".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
