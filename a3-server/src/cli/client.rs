//! The CLI's HTTP client for the running server's API.

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Config;

/// A client of the running server's API, authenticated with the state dir's token.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// Finds the running server from `--api` or `<state-dir>/api.url`, and its token.
    pub fn connect(config: &Config, api: Option<&str>) -> anyhow::Result<ApiClient> {
        let base = match api {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => std::fs::read_to_string(config.api_url_file())
                .with_context(|| {
                    format!(
                        "no running A3 found: {} is missing; start `a3-server serve` with \
                         the same --state-dir, or pass --api URL",
                        config.api_url_file().display()
                    )
                })?
                .trim()
                .trim_end_matches('/')
                .to_owned(),
        };
        let token = std::fs::read_to_string(config.api_token_file())
            .with_context(|| {
                format!(
                    "{}: cannot read the API token (run as the user that runs the A3)",
                    config.api_token_file().display()
                )
            })?
            .trim()
            .to_owned();
        Ok(ApiClient {
            base,
            token,
            http: reqwest::Client::new(),
        })
    }

    /// `GET /api/...`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let req = self.http.get(self.url(path));
        self.send(req, path).await
    }

    /// `POST /api/...` with a JSON body, decoding the JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let req = self.http.post(self.url(path)).json(body);
        self.send(req, path).await
    }

    /// `DELETE /api/...`, decoding the JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let req = self.http.delete(self.url(path));
        self.send(req, path).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<T> {
        let resp = req.bearer_auth(&self.token).send().await.with_context(|| {
            format!(
                "A3 API at {}: not reachable; is `a3-server serve` running?",
                self.base
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            bail!("{message} (HTTP {status} from {path})");
        }
        resp.json()
            .await
            .with_context(|| format!("A3 API {path}: unexpected answer"))
    }
}

/// Percent-encodes a query value: RFC 3986 unreserved characters pass, every other byte
/// becomes `%XX`.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
