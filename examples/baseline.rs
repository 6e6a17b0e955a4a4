//! The baseline `make bench` measures lobby's plain HTTP against: an axum
//! server written the way axum's own examples write one (`hello-world`,
//! `Json` replies, `axum::serve` with hyper's defaults, keep-alive included),
//! answering lobby's two cheapest routes as an empty lobby does. wrk runs
//! against both in turn; lobby's requests per second over this one's is the
//! figure.
//!
//! ```not_rust
//! cargo run --release --example baseline -- 127.0.0.1:3998
//! ```

use axum::{Json, Router, routing::get};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3998".to_owned());
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/users", get(users));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn users() -> Json<Value> {
    Json(json!({ "users": [] }))
}
