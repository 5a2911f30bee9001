//! Confluent Schema Registry wire format, per topic (`kafka.wire_format`,
//! `kafka.wire_formats`): a record is `00`, the schema's 4-byte registry id (big-endian), then
//! the Avro body — what ClickHouse's `AvroConfluent` format, Kafka Connect and ksqlDB read.
//!
//! banter's codecs speak Avro single-object encoding (`C3 01`, 8-byte fingerprint, body); the
//! body is the same in both, so the wire format is a change of header at the edges:
//!
//! * writing ([`Registry::frame`]): the fingerprint's schema is registered under the topic's
//!   subject (TopicNameStrategy `<topic>-value` by default), once per process and cached, and
//!   its id replaces the header. Every schema a role writes is registered when the role starts
//!   ([`Registry::prepare`]), so the hot path only reads a map;
//! * reading ([`Registry::unframe`]): a record starting with `00` has its schema fetched by id
//!   (once, cached), registered with the codecs (so a newer writer's record is read by Avro
//!   schema resolution, as the schema topic does for single-object records), and its header
//!   turned into the single-object one. Readers take both formats on every topic, so a topic
//!   can be switched without draining it.
//!
//! The registry is reached over HTTP(S) with basic auth from its own thread, so the calls
//! block for at most the request timeout and work from the stream's blocking threads as well
//! as from async roles.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banter_model::codec::{
    current_schemas, register_schema, schema_fingerprint, Fingerprint, HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
};
use serde::{Deserialize, Serialize};

use crate::config::{KafkaConfig, SchemaRegistryConfig, SubjectStrategy, WireFormat};

/// The magic byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0;

/// Length of the Confluent header: magic and schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// Why the registry could not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered about this record: no schema has its id, the schema is not valid
    /// Avro, or a schema was refused. The record cannot be read (or written) as it is.
    #[error("{0}")]
    Record(String),
    /// The registry could not be asked or did not answer usefully (unreachable, timed out, a
    /// server error, refused credentials): nothing is known about the record; ask again later.
    #[error("{0}")]
    Unavailable(String),
}

impl RegistryError {
    /// Whether asking again later may succeed (the record is not at fault).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }
}

impl From<RegistryError> for String {
    fn from(e: RegistryError) -> String {
        e.to_string()
    }
}

type Reply<T> = mpsc::Sender<Result<T, RegistryError>>;

/// A request to the registry thread.
enum Call {
    Register {
        subject: String,
        schema: String,
        reply: Reply<u32>,
    },
    Schema {
        id: u32,
        reply: Reply<String>,
    },
}

#[derive(Serialize)]
struct RegisterBody<'a> {
    schema: &'a str,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

#[derive(Default)]
struct Cache {
    /// (subject, fingerprint) → id.
    ids: HashMap<(String, Fingerprint), u32>,
    /// id → fingerprint of its schema.
    by_id: HashMap<u32, Fingerprint>,
    /// fingerprint → (record full name, schema JSON), for every schema this process knows.
    schemas: HashMap<Fingerprint, (String, String)>,
}

/// A Schema Registry client for the topics configured with the Confluent wire format.
pub struct Registry {
    calls: Mutex<mpsc::Sender<Call>>,
    cache: Mutex<Cache>,
    formats: std::collections::BTreeMap<String, WireFormat>,
    default_format: WireFormat,
    strategy: SubjectStrategy,
    url: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

use banter_model::codec::record_full_name as full_name;

impl Registry {
    /// A client when any topic uses the Confluent wire format, else None.
    ///
    /// # Errors
    /// `kafka.schema_registry.ca_file` cannot be read.
    pub fn for_config(k: &KafkaConfig) -> Result<Option<Arc<Registry>>, String> {
        let uses = k.wire_format == WireFormat::Confluent
            || k.wire_formats.values().any(|f| *f == WireFormat::Confluent);
        if !uses {
            return Ok(None);
        }
        let reg = &k.schema_registry;
        let http = crate::tls::http_client("kafka.schema_registry.ca_file", &reg.ca_file)
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel::<Call>();
        let cfg = reg.clone();
        std::thread::Builder::new()
            .name("schema-registry".into())
            .spawn(move || serve(&http, &cfg, &rx))
            .map_err(|e| format!("schema registry thread: {e}"))?;
        let mut cache = Cache::default();
        for (_, json) in current_schemas() {
            if let (Ok(fp), Some(name)) = (schema_fingerprint(json), full_name(json)) {
                cache.schemas.insert(fp, (name, json.to_owned()));
            }
        }
        Ok(Some(Arc::new(Registry {
            calls: Mutex::new(tx),
            cache: Mutex::new(cache),
            formats: k.wire_formats.clone(),
            default_format: k.wire_format,
            strategy: reg.subject_strategy,
            url: reg.url.clone(),
        })))
    }

    /// The wire format of `topic`.
    pub fn format_of(&self, topic: &str) -> WireFormat {
        self.formats
            .get(topic)
            .copied()
            .unwrap_or(self.default_format)
    }

    /// The subject a record of `record` (full name) on `topic` is registered under.
    pub fn subject(&self, topic: &str, record: &str) -> String {
        match self.strategy {
            SubjectStrategy::Topic => format!("{topic}-value"),
            SubjectStrategy::TopicRecord => format!("{topic}-{record}"),
            SubjectStrategy::Record => record.to_owned(),
        }
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Call) -> Result<T, RegistryError> {
        let gone =
            |what: &str| RegistryError::Unavailable(format!("schema registry client {what}"));
        let (reply, answer) = mpsc::channel();
        self.calls
            .lock()
            .map_err(|_| gone("poisoned"))?
            .send(make(reply))
            .map_err(|_| gone("thread stopped"))?;
        answer.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            RegistryError::Unavailable(format!("schema registry at {} did not answer", self.url))
        })?
    }

    fn cache(&self) -> Result<std::sync::MutexGuard<'_, Cache>, RegistryError> {
        self.cache
            .lock()
            .map_err(|_| RegistryError::Unavailable("schema registry cache poisoned".into()))
    }

    /// Asks the registry about every schema id among `records` this process does not know
    /// yet (each once), so that reading them later needs no request: what a reader does
    /// before it starts on a batch. Ids the registry does not have are left for the reader
    /// to meet (they are the record's fault).
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`]: the registry could not be asked.
    pub fn learn<'r>(
        &self,
        records: impl IntoIterator<Item = &'r [u8]>,
    ) -> Result<(), RegistryError> {
        let mut unknown = std::collections::BTreeSet::new();
        {
            let cache = self.cache()?;
            for r in records {
                if let Some(id) = confluent_id(r) {
                    if !cache.by_id.contains_key(&id) {
                        unknown.insert(id);
                    }
                }
            }
        }
        for id in unknown {
            let mut header = [0u8; CONFLUENT_HEADER_LEN];
            header[0] = CONFLUENT_MAGIC;
            header[1..].copy_from_slice(&id.to_be_bytes());
            match self.unframe(&header) {
                Err(e @ RegistryError::Unavailable(_)) => return Err(e),
                Ok(_) | Err(RegistryError::Record(_)) => {}
            }
        }
        Ok(())
    }

    /// The fingerprint of the schema with registry id `id`, when this process knows it.
    fn known(&self, id: u32) -> Result<Option<Fingerprint>, RegistryError> {
        Ok(self.cache()?.by_id.get(&id).copied())
    }

    /// The registry id of the schema with fingerprint `fp` under `topic`'s subject, registering
    /// it when this process has not yet (the registry answers with the existing id when the
    /// schema is already there).
    ///
    /// # Errors
    /// The fingerprint is not a schema this process knows, or the registry refused it (a
    /// compatibility failure names the subject).
    pub fn id_for(&self, topic: &str, fp: Fingerprint) -> Result<u32, RegistryError> {
        let (subject, schema) = {
            let cache = self.cache()?;
            let (name, json) = cache.schemas.get(&fp).ok_or_else(|| {
                RegistryError::Record(format!("no schema with fingerprint {fp} to register"))
            })?;
            let subject = self.subject(topic, name);
            if let Some(id) = cache.ids.get(&(subject.clone(), fp)) {
                return Ok(*id);
            }
            (subject, json.clone())
        };
        let id = self.call(|reply| Call::Register {
            subject: subject.clone(),
            schema,
            reply,
        })?;
        let mut cache = self.cache()?;
        cache.ids.insert((subject, fp), id);
        cache.by_id.insert(id, fp);
        Ok(id)
    }

    /// Registers every current schema among `records` (names as in [`current_schemas`]) for
    /// `topic` when it uses the Confluent format: what a role does before it writes.
    ///
    /// # Errors
    /// As [`Registry::id_for`].
    pub fn prepare(&self, topic: &str, records: &[&str]) -> Result<(), RegistryError> {
        if self.format_of(topic) != WireFormat::Confluent {
            return Ok(());
        }
        for (name, json) in current_schemas() {
            if records.contains(&name) {
                let fp =
                    schema_fingerprint(json).map_err(|e| RegistryError::Record(e.to_string()))?;
                let id = self.id_for(topic, fp)?;
                tracing::info!(topic, record = name, id, "schema registered");
            }
        }
        Ok(())
    }

    /// A single-object record as it goes on `topic`: unchanged, or with the Confluent header.
    ///
    /// # Errors
    /// The record has no single-object header, or its schema cannot be registered.
    pub fn frame<'a>(
        &self,
        topic: &str,
        single_object: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, RegistryError> {
        if self.format_of(topic) != WireFormat::Confluent {
            return Ok(Cow::Borrowed(single_object));
        }
        if single_object.len() < HEADER_LEN || single_object[..2] != SINGLE_OBJECT_MAGIC {
            return Err(RegistryError::Record("not a single-object record".into()));
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&single_object[2..HEADER_LEN]);
        let id = self.id_for(topic, Fingerprint(fp))?;
        let body = &single_object[HEADER_LEN..];
        let mut out = Vec::with_capacity(CONFLUENT_HEADER_LEN + body.len());
        out.push(CONFLUENT_MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(body);
        Ok(Cow::Owned(out))
    }

    /// A record read from any topic as the codecs read it: a single-object record unchanged;
    /// a Confluent one with its schema (fetched by id once, and registered with the codecs)
    /// named by fingerprint instead.
    ///
    /// # Errors
    /// [`RegistryError::Record`]: the registry does not know the id, or its schema is not valid
    /// Avro; [`RegistryError::Unavailable`]: the registry could not say.
    pub fn unframe<'a>(&self, bytes: &'a [u8]) -> Result<Cow<'a, [u8]>, RegistryError> {
        let Some(id) = confluent_id(bytes) else {
            return Ok(Cow::Borrowed(bytes));
        };
        let fp = match self.known(id)? {
            Some(fp) => fp,
            None => {
                let json = self.call(|reply| Call::Schema { id, reply })?;
                let bad = |e: String| RegistryError::Record(format!("schema {id}: {e}"));
                let fp = schema_fingerprint(&json).map_err(|e| bad(e.to_string()))?;
                // Readers of this record type resolve the writer's schema against theirs.
                register_schema(&json).map_err(|e| bad(e.to_string()))?;
                let mut cache = self.cache()?;
                cache.by_id.insert(id, fp);
                if let Some(name) = full_name(&json) {
                    cache.schemas.entry(fp).or_insert((name, json));
                }
                fp
            }
        };
        let body = &bytes[CONFLUENT_HEADER_LEN..];
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
        out.extend_from_slice(&fp.0);
        out.extend_from_slice(body);
        Ok(Cow::Owned(out))
    }
}

impl Registry {
    /// [`Registry::unframe`] for async callers: a schema not yet known is fetched on a
    /// blocking thread, so the runtime's workers never wait for the registry.
    ///
    /// # Errors
    /// As [`Registry::unframe`].
    pub async fn unframe_async<'a>(
        self: &Arc<Self>,
        bytes: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, RegistryError> {
        if let Some(id) = confluent_id(bytes) {
            if self.known(id)?.is_none() {
                let me = self.clone();
                let header = bytes[..CONFLUENT_HEADER_LEN].to_vec();
                tokio::task::spawn_blocking(move || me.unframe(&header).map(drop))
                    .await
                    .map_err(|e| RegistryError::Unavailable(e.to_string()))??;
            }
        }
        self.unframe(bytes)
    }

    /// [`Registry::unframe_async`], waiting out a registry that is unavailable: asked again
    /// (1 s, 2 s, … up to 30 s apart, each failure logged) until it answers about the record,
    /// or None once `stop` is cancelled. Only [`RegistryError::Record`] comes back as an error,
    /// so a registry outage holds a reader up instead of costing it good records.
    pub async fn unframe_waiting<'a>(
        self: &Arc<Self>,
        bytes: &'a [u8],
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<Result<Cow<'a, [u8]>, RegistryError>> {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.unframe_async(bytes).await {
                Err(RegistryError::Unavailable(e)) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "schema registry unavailable; waiting");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return None,
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                other => return Some(other),
            }
        }
    }
}

/// The schema id of a Confluent-framed record, None for any other record.
fn confluent_id(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= CONFLUENT_HEADER_LEN && bytes[0] == CONFLUENT_MAGIC)
        .then(|| u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
}

/// Asks the registry for its subjects with the configured credentials (what `banter config
/// check --connect` does): how many there are, or what went wrong.
///
/// # Errors
/// The request failed or was refused; the message names the settings to look at.
pub async fn probe(cfg: &SchemaRegistryConfig) -> Result<String, String> {
    let http = crate::tls::http_client("kafka.schema_registry.ca_file", &cfg.ca_file)
        .map_err(|e| e.to_string())?;
    let req = http.get(format!("{}/subjects", cfg.url.trim_end_matches('/')));
    let resp = authenticated(req, cfg)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let subjects: Vec<String> = answer(resp, "listing subjects")
        .await
        .map_err(String::from)?;
    Ok(format!("answers ({} subjects)", subjects.len()))
}

/// The registry thread: one request at a time on its own runtime.
fn serve(http: &reqwest::Client, cfg: &SchemaRegistryConfig, calls: &mpsc::Receiver<Call>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let base = cfg.url.trim_end_matches('/');
    while let Ok(call) = calls.recv() {
        match call {
            Call::Register {
                subject,
                schema,
                reply,
            } => {
                let url = format!(
                    "{base}/subjects/{}/versions",
                    crate::percent_encode(&subject)
                );
                let r = rt.block_on(async {
                    let resp = authenticated(http.post(&url), cfg)
                        .header("content-type", "application/vnd.schemaregistry.v1+json")
                        .json(&RegisterBody { schema: &schema })
                        .send()
                        .await
                        .map_err(|e| RegistryError::Unavailable(describe(&e)))?;
                    answer::<IdBody>(resp, &format!("registering under subject {subject}"))
                        .await
                        .map(|b| b.id)
                });
                let _ = reply.send(r);
            }
            Call::Schema { id, reply } => {
                let url = format!("{base}/schemas/ids/{id}");
                let r = rt.block_on(async {
                    let resp = authenticated(http.get(&url), cfg)
                        .send()
                        .await
                        .map_err(|e| RegistryError::Unavailable(describe(&e)))?;
                    answer::<SchemaBody>(resp, &format!("schema id {id}"))
                        .await
                        .map(|b| b.schema)
                });
                let _ = reply.send(r);
            }
        }
    }
}

/// A registry answer: the body on success, else the status and the registry's message with
/// the settings to look at. Only the registry's own answer about the request's content (its
/// error codes 40403 no such schema, 409 incompatible, 42201 invalid schema) is the record's
/// fault; anything else (a server error, refused credentials, a 404 from a wrong URL or a
/// proxy) says nothing about the record.
async fn answer<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
) -> Result<T, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return resp.json::<T>().await.map_err(|e| {
            RegistryError::Unavailable(format!("schema registry, {what}: unexpected answer: {e}"))
        });
    }
    let text = resp.text().await.unwrap_or_default();
    let hint = match status.as_u16() {
        401 | 403 => " (check kafka.schema_registry.username / password)",
        409 => " (the schema is not compatible with the subject's earlier versions)",
        _ => "",
    };
    let code = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error_code").and_then(serde_json::Value::as_i64));
    let hint = match (status.as_u16(), code) {
        (404, code) if code != Some(40403) => {
            " (is kafka.schema_registry.url the registry's API root, e.g. …/apis/ccompat/v7 for Apicurio?)"
        }
        _ => hint,
    };
    let message = format!("schema registry, {what}: {status}: {}{hint}", text.trim());
    Err(match (status.as_u16(), code) {
        (404, Some(40403)) | (409, _) | (422, Some(42201)) => RegistryError::Record(message),
        _ => RegistryError::Unavailable(message),
    })
}

/// A request that got no answer, naming the CA setting for an untrusted certificate.
fn describe(e: &reqwest::Error) -> String {
    crate::tls::send_error(e, "kafka.schema_registry.ca_file")
}

/// `req` with the registry's basic auth, when set.
fn authenticated(
    req: reqwest::RequestBuilder,
    cfg: &SchemaRegistryConfig,
) -> reqwest::RequestBuilder {
    if cfg.username.is_empty() {
        req
    } else {
        req.basic_auth(&cfg.username, Some(cfg.password.expose()))
    }
}
