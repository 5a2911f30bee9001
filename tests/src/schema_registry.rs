//! A stand-in for a Confluent Schema Registry, for what the real one in the local stack
//! (Apicurio Registry, `scripts/stack.sh up schema-registry`) cannot show: basic auth (Apicurio
//! authenticates through an OpenID Connect server), an outage on demand, and the requests as
//! banter sent them. Its REST API follows Confluent's API reference; the answers have the
//! documented shapes:
//!
//! * `POST /subjects/{subject}/versions` `{"schema": "…"}` → `{"id": N}` (the same schema text
//!   gets the same id under any subject, as the registry does);
//! * `GET /schemas/ids/{id}` → `{"schema": "…"}`, or 404 `{"error_code": 40403, …}`;
//! * `GET /subjects` → `["…", …]`;
//! * with credentials set, anything without them → 401 `{"error_code": 401, …}`;
//! * while [`RegistryStandIn::set_unavailable`] is on, `GET /schemas/ids/{id}` → 503.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// `POST`, `GET`.
    pub method: String,
    /// The path, percent-encoding kept.
    pub path: String,
    /// Header names lower-cased, values as sent.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: String,
    /// The status the stand-in answered with.
    pub status: u16,
}

#[derive(Default)]
struct State {
    schemas: Vec<String>,
    subjects: BTreeMap<String, Vec<u32>>,
    seen: Vec<SeenRequest>,
    unavailable: bool,
}

/// A running stand-in; stops with the test's runtime.
#[derive(Clone)]
pub struct RegistryStandIn {
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl RegistryStandIn {
    /// Starts one on a free port; `basic` = `Some((user, password))` requires basic auth.
    pub async fn start(basic: Option<(&str, &str)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let auth = basic.map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (st, auth) = (st.clone(), auth.clone());
                tokio::spawn(async move { serve(sock, &st, auth.as_deref()).await });
            }
        });
        RegistryStandIn { url, state }
    }

    /// Answers every schema lookup by id with 503 (what readers meet while a registry is down
    /// behind its load balancer) until called with false. Registration keeps working, so
    /// writers can start.
    pub fn set_unavailable(&self, on: bool) {
        self.state.lock().unwrap().unavailable = on;
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The subjects registered so far.
    pub fn subjects(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .subjects
            .keys()
            .cloned()
            .collect()
    }

    /// The schema text of `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        let st = self.state.lock().unwrap();
        st.schemas.get(id.checked_sub(1)? as usize).cloned()
    }
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve(mut sock: tokio::net::TcpStream, st: &Mutex<State>, auth: Option<&str>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // One request: headers, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_owned();
        let path = first.next().unwrap_or("").to_owned();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        buf.drain(..head_end + len);
        let mut req = SeenRequest {
            method,
            path,
            headers,
            body,
            status: 0,
        };
        let (status, answer) = respond(st, auth, &req);
        req.status = status[..3].parse().unwrap_or(0);
        st.lock().unwrap().seen.push(req);
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn respond(st: &Mutex<State>, auth: Option<&str>, req: &SeenRequest) -> (&'static str, String) {
    if st.lock().unwrap().unavailable && req.path.starts_with("/schemas/ids/") {
        return (
            "503 Service Unavailable",
            r#"{"error_code":50301,"message":"unavailable"}"#.into(),
        );
    }
    if let Some(want) = auth {
        if req.headers.get("authorization").map(String::as_str) != Some(want) {
            return (
                "401 Unauthorized",
                r#"{"error_code":401,"message":"Unauthorized"}"#.into(),
            );
        }
    }
    let mut st = st.lock().unwrap();
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("POST", ["subjects", subject, "versions"]) => {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&req.body) else {
                return (
                    "422 Unprocessable Entity",
                    r#"{"error_code":42201,"message":"Invalid schema"}"#.into(),
                );
            };
            let Some(schema) = v["schema"].as_str() else {
                return (
                    "422 Unprocessable Entity",
                    r#"{"error_code":42201,"message":"Invalid schema"}"#.into(),
                );
            };
            let id = match st.schemas.iter().position(|s| s == schema) {
                Some(i) => i as u32 + 1,
                None => {
                    st.schemas.push(schema.to_owned());
                    st.schemas.len() as u32
                }
            };
            let versions = st.subjects.entry(percent_decode(subject)).or_default();
            if !versions.contains(&id) {
                versions.push(id);
            }
            ("200 OK", format!(r#"{{"id":{id}}}"#))
        }
        ("GET", ["schemas", "ids", id]) => {
            match id
                .parse::<usize>()
                .ok()
                .and_then(|i| st.schemas.get(i.checked_sub(1)?))
            {
                Some(s) => ("200 OK", serde_json::json!({ "schema": s }).to_string()),
                None => (
                    "404 Not Found",
                    format!(r#"{{"error_code":40403,"message":"Schema {id} not found"}}"#),
                ),
            }
        }
        ("GET", ["subjects"]) => (
            "200 OK",
            serde_json::to_string(&st.subjects.keys().collect::<Vec<_>>()).unwrap(),
        ),
        _ => (
            "404 Not Found",
            r#"{"error_code":404,"message":"HTTP 404 Not Found"}"#.into(),
        ),
    }
}
