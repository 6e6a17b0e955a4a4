//! Scraping GET /metrics: every sample of one scrape, by name and labels.

use std::collections::HashMap;

use super::Client;

/// One scrape: every sample, keyed by its name and labels as written
/// (`lobby_leaves_total{reason="leave"}`).
#[derive(Debug)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    pub fn of(text: &str) -> Scrape {
        Scrape(
            text.lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
                .filter_map(|line| {
                    let (key, value) = line.rsplit_once(' ')?;
                    Some((key.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> f64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("{key} is in the scrape: {:?}", self.0.keys()))
    }
}

pub async fn scrape(client: &Client) -> Scrape {
    let response = client
        .client
        .get(client.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"));
    Scrape::of(&response.text().await.expect("a body"))
}
