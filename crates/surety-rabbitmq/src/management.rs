//! The management plugin's HTTP API: what AMQP 0-9-1 cannot answer — the settings a
//! topic's exchange was declared with, which topics and groups exist, and how many
//! deliveries a queue has unacked. Its queue figures are sampled by the broker
//! (`collect_statistics_interval`, 5 s by default), so Surety reads exact ready counts
//! over AMQP and takes only what has no AMQP answer from here.

use std::time::Duration;

use serde::Deserialize;
use surety_core::{ErrorKind, Outcome, TransportError};

#[derive(Debug, Clone)]
pub(crate) struct Management {
    base: url::Url,
    user: String,
    password: String,
    vhost: String,
    http: reqwest::Client,
}

/// One queue's figures.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct QueueStat {
    pub name: String,
    #[serde(default)]
    pub messages_ready: u64,
    #[serde(default)]
    pub messages_unacknowledged: u64,
}

#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
    page_count: u32,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct Exchange {
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
}

/// `%2F` for `/`: a vhost is one path segment of the API.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Management {
    pub fn new(
        url: &url::Url,
        vhost: &str,
        timeout: Duration,
    ) -> Result<Management, TransportError> {
        let mut base = url.clone();
        let user = base.username().to_owned();
        let password = base.password().unwrap_or_default().to_owned();
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_query(None);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| {
                TransportError::refused(ErrorKind::InvalidInput, format!("management client: {e}"))
            })?;
        Ok(Management {
            base,
            user,
            password,
            vhost: vhost.to_owned(),
            http,
        })
    }

    /// A GET, tried again after a server error: the API answers 500 now and then while
    /// queues and exchanges are being declared beside it.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, TransportError> {
        let mut tries = 0;
        loop {
            match self.get_once(path).await {
                Err(e) if e.retryable() && tries < 4 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50 << tries)).await;
                }
                other => return other,
            }
        }
    }

    async fn get_once<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, TransportError> {
        let url = format!("{}api/{path}", self.base);
        let unavailable = |e: String| {
            TransportError::new(
                ErrorKind::Unavailable,
                Outcome::Retryable,
                format!(
                    "RabbitMQ management API at {}: {e} (enable the rabbitmq_management plugin, or set management=none)",
                    self.base
                ),
            )
        };
        let r = self
            .http
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match r.status().as_u16() {
            404 => Ok(None),
            401 | 403 => Err(TransportError::refused(
                ErrorKind::Unauthorized,
                format!(
                    "RabbitMQ management API refused user {:?} ({})",
                    self.user,
                    r.status()
                ),
            )),
            s if !(200..300).contains(&s) => Err(unavailable(format!("HTTP {s}"))),
            _ => r
                .json::<T>()
                .await
                .map(Some)
                .map_err(|e| unavailable(format!("unreadable answer: {e}"))),
        }
    }

    /// The arguments `exchange` was declared with; `None`: no such exchange.
    pub async fn exchange_arguments(
        &self,
        exchange: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, TransportError> {
        let path = format!("exchanges/{}/{}", segment(&self.vhost), segment(exchange));
        Ok(self.get::<Exchange>(&path).await?.map(|e| e.arguments))
    }

    /// The names of every exchange of the vhost.
    pub async fn exchanges(&self) -> Result<Vec<String>, TransportError> {
        let path = format!("exchanges/{}?columns=name", segment(&self.vhost));
        let all: Vec<Named> = self.get(&path).await?.unwrap_or_default();
        Ok(all.into_iter().map(|n| n.name).collect())
    }

    /// The queues whose names start with `prefix`, with their (sampled) figures.
    pub async fn queues(&self, prefix: &str) -> Result<Vec<QueueStat>, TransportError> {
        let mut regex = String::from("^");
        for c in prefix.chars() {
            if !c.is_ascii_alphanumeric() {
                regex.push('\\');
            }
            regex.push(c);
        }
        let mut out = Vec::new();
        for page in 1.. {
            let path = format!(
                "queues/{}?page={page}&page_size=500&use_regex=true&name={}&columns=name,messages_ready,messages_unacknowledged",
                segment(&self.vhost),
                segment(&regex)
            );
            let Some(p) = self.get::<Page<QueueStat>>(&path).await? else {
                break;
            };
            out.extend(p.items);
            if page >= p.page_count {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_vhost_is_one_path_segment() {
        assert_eq!(super::segment("/"), "%2F");
        assert_eq!(super::segment("a b"), "a%20b");
    }
}
