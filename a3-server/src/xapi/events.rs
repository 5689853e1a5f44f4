//! The `event.from` watcher: changes to the pool's objects, in order, from a token on.

use std::sync::Arc;
use std::time::Duration;

use a3_shared::xapi_wire::Value;

use super::error::XapiError;
use super::session::Session;

/// How long one `event.from` call blocks on the host when nothing changes.
pub const EVENT_POLL: Duration = Duration::from_secs(30);
/// Extra time the HTTP request gets beyond the host-side wait.
const EVENT_MARGIN: Duration = Duration::from_secs(15);

/// What happened to the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Created.
    Add,
    /// Changed.
    Mod,
    /// Destroyed.
    Del,
}

/// One event of `event.from`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The object's class, lower case (`vm`, `vbd`, `host`, …).
    pub class: String,
    /// What happened.
    pub operation: Operation,
    /// The object's ref.
    pub reference: String,
    /// The object's record after the change (absent or stale for `Del`).
    pub snapshot: Option<Value>,
}

/// Watches classes of objects, starting after a token.
pub struct EventWatcher {
    session: Arc<Session>,
    classes: Vec<Value>,
    token: String,
    wait: Duration,
}

impl EventWatcher {
    /// Watches `classes` for changes after `token` (from [`EventWatcher::current_token`]).
    pub fn new(session: Arc<Session>, classes: &[&str], token: String) -> EventWatcher {
        EventWatcher {
            session,
            classes: classes.iter().map(|c| Value::from(*c)).collect(),
            token,
            wait: EVENT_POLL,
        }
    }

    /// A token that marks "now": events after it are changes made from this moment on.
    /// It injects a no-op event on the pool, which xapi answers with that event's token.
    pub async fn current_token(session: &Session, pool_ref: &str) -> Result<String, XapiError> {
        let v = session
            .call(
                "event.inject",
                &[Value::from("pool"), Value::from(pool_ref)],
            )
            .await?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| XapiError::Unexpected {
                host: session.endpoint().to_string(),
                method: "event.inject".into(),
                detail: format!("returned a {}, not a token", v.kind()),
            })
    }

    /// The session the watcher uses.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Waits for the next non-empty batch of events. [`XapiError::EventsLost`] means the
    /// caller must resynchronise from scratch.
    pub async fn next_batch(&mut self) -> Result<Vec<Event>, XapiError> {
        loop {
            let args = [
                Value::Array(self.classes.clone()),
                Value::from(&self.token),
                Value::Double(self.wait.as_secs_f64()),
            ];
            let v = self
                .session
                .call_bounded("event.from", &args, self.wait + EVENT_MARGIN)
                .await?;
            let (events, token) =
                parse_event_batch(&v).map_err(|detail| XapiError::Unexpected {
                    host: self.session.endpoint().to_string(),
                    method: "event.from".into(),
                    detail,
                })?;
            self.token = token;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// Reads `{events, valid_ref_counts, token}`.
fn parse_event_batch(v: &Value) -> Result<(Vec<Event>, String), String> {
    let token = v
        .get_str("token")
        .ok_or("the batch has no token")?
        .to_owned();
    let events = v
        .get("events")
        .and_then(Value::as_array)
        .ok_or("the batch has no events array")?
        .iter()
        .map(parse_event)
        .collect::<Result<_, _>>()?;
    Ok((events, token))
}

fn parse_event(v: &Value) -> Result<Event, String> {
    let field = |name: &str| {
        v.get_str(name)
            .map(str::to_owned)
            .ok_or_else(|| format!("an event has no {name}"))
    };
    let operation = match field("operation")?.as_str() {
        "add" => Operation::Add,
        "mod" => Operation::Mod,
        "del" => Operation::Del,
        other => return Err(format!("unknown event operation {other:?}")),
    };
    Ok(Event {
        class: field("class")?.to_ascii_lowercase(),
        operation,
        reference: field("ref")?,
        snapshot: v
            .get("snapshot")
            .filter(|s| s.as_struct().is_some())
            .cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_parse() {
        let ev: Value = [
            ("id", Value::from("12")),
            ("timestamp", Value::from("1700000000.5")),
            ("class", Value::from("VM")),
            ("operation", Value::from("add")),
            ("ref", Value::from("OpaqueRef:v")),
            ("snapshot", [("uuid", "u")].into_iter().collect::<Value>()),
        ]
        .into_iter()
        .collect();
        let del: Value = [
            ("class", "vbd"),
            ("operation", "del"),
            ("ref", "OpaqueRef:b"),
            ("snapshot", ""),
        ]
        .into_iter()
        .collect();
        let batch: Value = [
            ("events", Value::Array(vec![ev, del])),
            ("valid_ref_counts", Value::empty_struct()),
            ("token", Value::from("13,0")),
        ]
        .into_iter()
        .collect();
        let (events, token) = parse_event_batch(&batch).unwrap();
        assert_eq!(token, "13,0");
        assert_eq!(events[0].class, "vm");
        assert_eq!(events[0].operation, Operation::Add);
        assert!(events[0].snapshot.is_some());
        assert_eq!(events[1].operation, Operation::Del);
        assert!(events[1].snapshot.is_none());
        let bad: Value = [("token", "1")].into_iter().collect();
        assert!(parse_event_batch(&bad).is_err());
    }
}
