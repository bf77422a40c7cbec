//! A client that reads the energy joulegate adds to responses, in its three places:
//! - a JSON (non-streaming) response: the `x-energy-*` response headers;
//! - a stream, asked with `TE: trailers`: the same fields as HTTP trailers after the last chunk;
//! - a stream that asks for usage (`stream_options.include_usage`): the `energy` object in the
//!   final usage chunk, beside `usage`.
//!
//! Plain hyper (the `hyper-util` legacy client), no OpenAI SDK: copy what you need.
//!
//! Run against a running proxy (`joulegate serve --upstream http://vllm:8000`):
//!   `cargo run --example energy_client -- http://127.0.0.1:9000 MODEL`
//! or with no arguments, which starts the simulated engine and the proxy in this process, as
//! `joulegate demo` does (no GPU or vLLM needed):
//!   `cargo run --example energy_client`

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use joulegate::demo::{World, WorldOptions};
use serde_json::{json, Value};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Prints the `x-energy-*` fields of a header map (response headers or trailers).
fn print_energy(place: &str, h: &HeaderMap) {
    for (name, value) in h {
        if name.as_str().starts_with("x-energy-") {
            println!("  {place} {name}: {}", value.to_str().unwrap_or("?"));
        }
    }
}

async fn post(client: &HttpClient, url: &str, body: Value) -> anyhow::Result<()> {
    let request = Request::post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        // Trailers are sent on HTTP/1.1 only to clients that say they accept them.
        .header("te", "trailers")
        // Requests sharing a tag are added up under it in /stats and /metrics.
        .header("x-energy-tag", "energy-client-example")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = client.request(request).await?;
    println!("status {}", response.status());
    print_energy("header", response.headers());
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(trailers) = frame.trailers_ref() {
            print_energy("trailer", trailers);
        }
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
        }
    }
    // The final usage chunk of a stream (the last `data:` line before `[DONE]`) carries `energy`.
    for line in String::from_utf8_lossy(&text).lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if let Ok(chunk) = serde_json::from_str::<Value>(data) {
            if let Some(energy) = chunk.get("energy") {
                println!("  usage  {}", chunk["usage"]);
                println!("  energy {energy}");
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.get(1).cloned().unwrap_or_else(|| "tiny".into());
    // No URL: the demo's world (simulated engine, its meter, the proxy) on loopback port 0.
    let world = match args.first() {
        Some(_) => None,
        None => Some(World::start(&WorldOptions::default()).await?),
    };
    let url = match (&world, args.first()) {
        (Some(w), _) => format!("http://{}", w.proxy_addr()),
        (None, Some(u)) => u.trim_end_matches('/').to_string(),
        (None, None) => unreachable!("a world is started when no URL is given"),
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let messages = json!([{"role": "user", "content": "How much energy does this answer take?"}]);

    println!("\n1. JSON response: energy in the response headers");
    post(
        &client,
        &url,
        json!({"model": model, "messages": messages, "max_tokens": 16}),
    )
    .await?;

    println!("\n2. stream with TE: trailers: energy in the trailers");
    post(
        &client,
        &url,
        json!({"model": model, "messages": messages, "max_tokens": 16, "stream": true}),
    )
    .await?;

    println!("\n3. stream asking for usage: energy in the final usage chunk (and the trailers)");
    post(
        &client,
        &url,
        json!({"model": model, "messages": messages, "max_tokens": 16, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await?;

    println!("\nThe settled figure of each request is at the admin listener: GET /requests/{{x-energy-request-id}}.");
    if let Some(w) = world {
        w.stop().await;
    }
    Ok(())
}
