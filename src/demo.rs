//! `termsgate demo`: a stand-in for the Jettson agents API on loopback, with the gateway in
//! front of it on fresh demo keys, one per plan.

use std::fmt::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use dashmap::DashMap;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use serde_json::{json, Value};

use crate::keys;

/// The demo plans, the shipped Jettson terms.
const PLANS: &str = r#"
[[routes]]
name = "spawn"
method = "POST"
path = "/api/v1/agents"

[[plans]]
name = "free"
limits = [
  { name = "spawns_per_minute", route = "spawn", max = 5, window = "1m" },
  { name = "spawns_per_hour", route = "spawn", max = 30, window = "1h" },
]

[[plans]]
name = "pro"
limits = [
  { name = "spawns_per_minute", route = "spawn", max = 30, window = "1m" },
  { name = "spawns_per_hour", route = "spawn", max = 500, window = "1h" },
]

[[plans]]
name = "scale"
limits = [
  { name = "spawns_per_minute", route = "spawn", max = 100, window = "1m" },
  { name = "spawns_per_hour", route = "spawn", max = 5000, window = "1h" },
]
"#;

/// A demo key: its id, plan and the token (shown once, never stored).
pub struct DemoKey {
    /// Key id.
    pub id: String,
    /// Plan name.
    pub plan: &'static str,
    /// The bearer token.
    pub token: String,
}

/// The demo config text and its keys.
pub fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
) -> (String, Vec<DemoKey>) {
    let keys: Vec<DemoKey> = ["free", "pro", "scale"]
        .into_iter()
        .map(|plan| DemoKey {
            id: format!("key_{plan}_demo"),
            plan,
            token: keys::mint_token(),
        })
        .collect();
    let mut text = format!(
        "[server]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\nwatch = false\ndrain_timeout_s = 2\n\n[admin]\nlisten = \"{admin}\"\n{PLANS}"
    );
    for k in &keys {
        let _ = write!(text, "\n{}", keys::toml_block(&k.id, k.plan, &k.token));
    }
    (text, keys)
}

/// A free loopback port for the stand-in upstream.
pub fn free_loopback_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// What `demo` prints: the keys and curl lines that work as pasted.
pub fn banner(listen: SocketAddr, admin: SocketAddr, keys: &[DemoKey]) -> String {
    let mut out = format!("termsgate demo: gateway on http://{listen}, admin on http://{admin}\n\nDemo keys (shown once):\n");
    for k in keys {
        let _ = writeln!(out, "  {:<6} {}  ({})", k.plan, k.token, k.id);
    }
    let free = &keys[0].token;
    let _ = write!(
        out,
        "\nTry:\n  curl -i http://{listen}/api/v1/agents -H 'Authorization: Bearer {free}'\n  \
         curl -i -X POST http://{listen}/api/v1/agents -H 'Authorization: Bearer {free}' -H 'Content-Type: application/json' -d '{{\"task\":\"Say hello\"}}'\n  \
         for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}}\\n' -X POST http://{listen}/api/v1/agents -H 'Authorization: Bearer {free}' -d '{{\"task\":\"t\"}}'; done\n  \
         curl -i http://{listen}/api/v1/agents\n  \
         curl -s http://{admin}/metrics | grep termsgate_requests_total\n\nCtrl-C stops the demo.\n"
    );
    out
}

/// The stand-in agents API as a Pingora service on `addr`.
pub fn upstream_service(addr: SocketAddr) -> Service<AgentsApi> {
    let mut service = Service::new("demo agents api".into(), AgentsApi::default());
    service.add_tcp(&addr.to_string());
    service
}

/// An in-memory agents API shaped like Jettson's (`seeds/002`).
#[derive(Default)]
pub struct AgentsApi {
    next_id: AtomicU64,
    agents: DashMap<String, Value>,
}

fn json_response(status: u16, body: &Value) -> Response<Vec<u8>> {
    let bytes = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Content-Length", bytes.len())
        .body(bytes)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn not_found() -> Response<Vec<u8>> {
    json_response(
        404,
        &json!({"error": {"code": "agent_not_found", "message": "No such agent."}}),
    )
}

impl AgentsApi {
    fn spawn(&self, body: &[u8]) -> Response<Vec<u8>> {
        let task = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("task").and_then(Value::as_str).map(str::to_string));
        let Some(task) = task.filter(|t| !t.is_empty() && t.chars().count() <= 4000) else {
            return json_response(
                400,
                &json!({"error": {"code": "invalid_task", "message": "Missing or too-long task."}}),
            );
        };
        let id = format!(
            "ag_demo{:06}",
            self.next_id.fetch_add(1, Ordering::Relaxed) + 1
        );
        let agent = json!({
            "agent_id": id, "name": "Untitled Agent", "status": "spawning", "task": task,
            "created_at": crate::access_log::timestamp_now(), "model": "jettson-6.0",
            "container": {"region": "iad", "status": "starting"}
        });
        self.agents.insert(id, agent.clone());
        json_response(201, &agent)
    }

    fn list(&self) -> Response<Vec<u8>> {
        let mut data: Vec<Value> = self.agents.iter().map(|a| a.value().clone()).collect();
        data.sort_by(|a, b| b["agent_id"].as_str().cmp(&a["agent_id"].as_str()));
        json_response(200, &json!({"data": data, "next_cursor": null}))
    }
}

#[async_trait]
impl ServeHttp for AgentsApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
        }
        let id = path
            .strip_prefix("/api/v1/agents/")
            .filter(|id| !id.is_empty() && !id.contains('/'));
        match (method, path.as_str(), id) {
            (Method::POST, "/api/v1/agents", _) => self.spawn(&body),
            (Method::GET, "/api/v1/agents", _) => self.list(),
            (Method::GET, _, Some(id)) => self
                .agents
                .get(id)
                .map_or_else(not_found, |a| json_response(200, a.value())),
            (Method::DELETE, _, Some(id)) => match self.agents.get_mut(id) {
                Some(mut a) => {
                    a["status"] = json!("stopped");
                    json_response(200, a.value())
                }
                None => not_found(),
            },
            _ => json_response(
                404,
                &json!({"error": {"code": "not_found", "message": "No such route."}}),
            ),
        }
    }
}
