//! A small QMP client (qemu's machine protocol: JSON objects, one per line, on a unix
//! socket): the greeting, `qmp_capabilities`, commands matched to their replies by `id`,
//! and the asynchronous events that arrive in between, kept until asked for.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long a command may take to be answered.
const REPLY_DEADLINE: Duration = Duration::from_secs(30);
/// Events kept for a later [`Qmp::wait_event`]; older ones are dropped.
const KEPT_EVENTS: usize = 64;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    /// qemu closed the connection (it exited).
    #[error("QMP: qemu closed the connection")]
    Closed,
    /// qemu sent something that is not QMP.
    #[error("QMP: unexpected message {0}")]
    Protocol(String),
    /// A command failed.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// qemu's error class.
        class: String,
        /// qemu's description.
        desc: String,
    },
    /// Nothing came in time.
    #[error("QMP: no {0} within {1:?}")]
    Timeout(String, Duration),
}

/// A negotiated QMP connection.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to `path`, reads the greeting and leaves capabilities negotiation.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let (read, writer) = UnixStream::connect(path).await?.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
            next_id: 1,
            events: Vec::new(),
        };
        let greeting = tokio::time::timeout(REPLY_DEADLINE, qmp.read())
            .await
            .map_err(|_| QmpError::Timeout("greeting".into(), REPLY_DEADLINE))??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments`; its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({ "execute": command, "arguments": arguments, "id": id }).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        let reply = tokio::time::timeout(REPLY_DEADLINE, async {
            loop {
                let msg = self.read().await?;
                if msg.get("event").is_some() {
                    self.keep(msg);
                } else if msg.get("id").and_then(Value::as_u64) == Some(id) {
                    return Ok::<_, QmpError>(msg);
                }
            }
        })
        .await
        .map_err(|_| QmpError::Timeout(format!("reply to {command}"), REPLY_DEADLINE))??;
        if let Some(err) = reply.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            return Err(QmpError::Command {
                command: command.to_owned(),
                class: field("class"),
                desc: field("desc"),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Waits for an event named `name` whose `data` satisfies `matches` (one that came
    /// earlier counts); its `data`.
    pub async fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let is_it = |e: &Value| e["event"] == name && matches(&e["data"]);
        if let Some(i) = self.events.iter().position(is_it) {
            return Ok(self.events.remove(i)["data"].clone());
        }
        tokio::time::timeout(timeout, async {
            loop {
                let msg = self.read().await?;
                if is_it(&msg) {
                    return Ok::<_, QmpError>(msg["data"].clone());
                }
                if msg.get("event").is_some() {
                    self.keep(msg);
                }
            }
        })
        .await
        .map_err(|_| QmpError::Timeout(format!("{name} event"), timeout))?
    }

    fn keep(&mut self, event: Value) {
        if self.events.len() == KEPT_EVENTS {
            self.events.remove(0);
        }
        self.events.push(event);
    }

    async fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol(line.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted qemu: answers each command from `replies` (by command name), sending
    /// `events` first.
    async fn fake_qemu(listener: UnixListener, events: Vec<Value>) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        while let Some(line) = lines.next_line().await.unwrap() {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let id = cmd["id"].clone();
            let reply = match cmd["execute"].as_str().unwrap() {
                "device_del" => {
                    for e in &events {
                        write.write_all(format!("{e}\n").as_bytes()).await.unwrap();
                    }
                    json!({ "return": {}, "id": id })
                }
                "blockdev-del" => json!({
                    "error": { "class": "GenericError", "desc": "Node disk1 is in use" },
                    "id": id
                }),
                _ => json!({ "return": {}, "id": id }),
            };
            write
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn commands_get_their_replies_and_events_wait_to_be_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let events = vec![
            json!({ "event": "DEVICE_DELETED", "data": { "path": "/machine/peripheral/disk1/virtio-backend" } }),
            json!({ "event": "DEVICE_DELETED", "data": { "device": "disk1", "path": "/machine/peripheral/disk1" } }),
        ];
        let server = tokio::spawn(fake_qemu(listener, events));
        let mut qmp = Qmp::connect(&sock).await.unwrap();
        qmp.execute("device_del", json!({ "id": "disk1" }))
            .await
            .unwrap();
        let data = qmp
            .wait_event(
                "DEVICE_DELETED",
                |d| d["device"] == "disk1",
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(data["path"], "/machine/peripheral/disk1");
        let err = qmp
            .execute("blockdev-del", json!({ "node-name": "disk1" }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Node disk1 is in use"), "{err}");
        let err = qmp
            .wait_event("DEVICE_DELETED", |d| d["device"] == "disk2", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout(..)), "{err}");
        drop(qmp);
        server.await.unwrap();
    }
}
