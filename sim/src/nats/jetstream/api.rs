//! The JetStream API: requests to `$JS.API.>` subjects and their JSON replies.
//!
//! Implemented: `INFO` (account), `STREAM.CREATE/UPDATE/INFO/DELETE/NAMES`,
//! `CONSUMER.CREATE` (ephemeral, and named with an optional filter), `CONSUMER.DURABLE.CREATE`,
//! `CONSUMER.INFO/DELETE/NAMES` and `CONSUMER.MSG.NEXT`. Each answers as nats-server 2.9.10
//! does: the same checks in the same order, the same error codes and descriptions, the same
//! fields in the same order (with the `type` every reply starts with). A subject no handler
//! matches (`$JS.API.FOO`, `$JS.API.STREAM.INFO` without a name) gets no reply at all, and so
//! does a pull for a consumer that does not exist: a real server is subscribed to `$JS.API.>`
//! (so the requester sees no "no responders") and drops what it has no handler for. A request
//! without a reply subject is carried out, unanswered.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::consumer::{Consumer, ConsumerConfig, EPHEMERAL_INACTIVE_THRESHOLD};
use super::engine::{Engine, Runtime, unix, with_consumer};
use super::json::{ApiError, Request, go_time, is_empty_request, to_go_json};
use super::store::Disk;
use super::stream::{Storage, Stream, StreamConfig, StreamState};
use super::subject;
use super::{Inbound, Outbound, Router};

/// The most names a `NAMES` reply lists.
const NAMES_LIMIT: usize = 1024;

/// The `type` of every reply.
fn kind(name: &str) -> String {
    format!("io.nats.jetstream.api.v1.{name}")
}

/// A reply: its `type`, maybe an error, and the rest.
#[derive(Serialize)]
struct Reply<'a, B: Serialize> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ApiError>,
    #[serde(flatten)]
    body: B,
}

/// Paging fields of list-like replies.
#[derive(Serialize, Default)]
struct Paged {
    total: usize,
    offset: usize,
    limit: usize,
}

#[derive(Serialize)]
struct StreamInfo<'a> {
    config: &'a StreamConfig,
    created: String,
    state: StreamState,
}

#[derive(Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    info: StreamInfo<'a>,
    did_create: bool,
}

#[derive(Serialize)]
struct Success {
    success: bool,
}

#[derive(Serialize)]
struct Nothing {}

#[derive(Serialize)]
struct SequenceInfo {
    consumer_seq: u64,
    stream_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_active: Option<String>,
}

#[derive(Serialize)]
struct ConsumerInfo<'a> {
    stream_name: &'a str,
    name: &'a str,
    created: String,
    config: &'a ConsumerConfig,
    delivered: SequenceInfo,
    ack_floor: SequenceInfo,
    num_ack_pending: usize,
    num_redelivered: usize,
    num_waiting: usize,
    num_pending: u64,
}

#[derive(Serialize)]
struct Limits {
    max_memory: i64,
    max_storage: i64,
    max_streams: i64,
    max_consumers: i64,
    max_ack_pending: i64,
    memory_max_stream_bytes: i64,
    storage_max_stream_bytes: i64,
    max_bytes_required: bool,
}

#[derive(Serialize)]
struct ApiStats {
    total: u64,
    errors: u64,
}

#[derive(Serialize)]
struct AccountInfo {
    memory: u64,
    storage: u64,
    streams: usize,
    consumers: usize,
    limits: Limits,
    api: ApiStats,
}

/// Where an API request's answer goes, and the account's API counters.
struct Answer<'a> {
    reply: Option<String>,
    out: &'a mut Vec<Outbound>,
}

impl Answer<'_> {
    fn send<B: Serialize>(
        &mut self,
        engine: &mut Engine,
        name: &str,
        error: Option<&ApiError>,
        body: B,
    ) {
        engine.api_total += 1;
        if error.is_some() {
            engine.api_errors += 1;
        }
        let Some(reply) = &self.reply else {
            return;
        };
        let payload = to_go_json(&Reply {
            kind: kind(name),
            error,
            body,
        });
        self.out.push(Outbound {
            subject: reply.clone(),
            payload,
            ..Outbound::default()
        });
    }

    fn fail(&mut self, engine: &mut Engine, name: &str, error: ApiError) {
        self.send(engine, name, Some(&error), Nothing {});
    }
}

/// Answers a request to a `$JS.API.` subject.
pub(crate) fn handle(
    engine: &mut Engine,
    disk: &mut Disk,
    now: Duration,
    message: Inbound,
    router: &dyn Router,
    out: &mut Vec<Outbound>,
) {
    let subject = message.subject.clone();
    let tokens: Vec<&str> = subject.split('.').collect();
    let body = &message.payload[..];
    let mut answer = Answer {
        reply: message.reply.clone(),
        out,
    };
    match &tokens[2..] {
        ["INFO"] => account_info(engine, disk, &mut answer),
        ["STREAM", "CREATE", name] => stream_create(engine, disk, now, name, body, &mut answer),
        ["STREAM", "UPDATE", name] => stream_update(engine, disk, now, name, body, &mut answer),
        ["STREAM", "INFO", name] => stream_info(engine, disk, name, body, &mut answer),
        ["STREAM", "DELETE", name] => stream_delete(engine, disk, name, body, &mut answer),
        ["STREAM", "NAMES"] => stream_names(engine, disk, body, &mut answer),
        ["CONSUMER", "CREATE", _, ..] | ["CONSUMER", "DURABLE", "CREATE", _, _] => {
            consumer_create(engine, disk, now, &tokens, body, &mut answer)
        }
        ["CONSUMER", "NAMES", stream] => consumer_names(engine, disk, stream, body, &mut answer),
        ["CONSUMER", "INFO", stream, consumer] => consumer_info(
            engine,
            disk,
            now,
            stream,
            consumer,
            body,
            router,
            &mut answer,
        ),
        ["CONSUMER", "DELETE", stream, consumer] => {
            consumer_delete(engine, disk, stream, consumer, body, &mut answer)
        }
        ["CONSUMER", "MSG", "NEXT", stream, consumer] => {
            if let Some(reply) = &message.reply {
                let (stream, consumer) = (stream.to_string(), consumer.to_string());
                engine.pull(
                    disk, &stream, &consumer, now, reply, body, router, answer.out,
                );
            }
        }
        _ => {}
    }
}

fn account_info(engine: &mut Engine, disk: &Disk, answer: &mut Answer<'_>) {
    let (mut memory, mut storage) = (0, 0);
    for stream in disk.streams.values() {
        match stream.config.storage {
            Storage::Memory => memory += stream.bytes,
            Storage::File => storage += stream.bytes,
        }
    }
    let info = AccountInfo {
        memory,
        storage,
        streams: disk.streams.len(),
        consumers: disk.streams.values().map(|s| s.consumers.len()).sum(),
        limits: Limits {
            max_memory: -1,
            max_storage: -1,
            max_streams: -1,
            max_consumers: -1,
            max_ack_pending: -1,
            memory_max_stream_bytes: -1,
            storage_max_stream_bytes: -1,
            max_bytes_required: false,
        },
        api: ApiStats {
            total: engine.api_total,
            errors: engine.api_errors,
        },
    };
    answer.send(engine, "account_info_response", None, info);
}

fn stream_info_of(stream: &Stream) -> StreamInfo<'_> {
    StreamInfo {
        config: &stream.config,
        created: go_time(Some(stream.created)),
        state: stream.state(unix),
    }
}

fn stream_create(
    engine: &mut Engine,
    disk: &mut Disk,
    now: Duration,
    name: &str,
    body: &[u8],
    answer: &mut Answer<'_>,
) {
    const TYPE: &str = "stream_create_response";
    let config = match Request::parse(body)
        .map_err(|_| ApiError::invalid_json())
        .and_then(|request| StreamConfig::read(&request))
    {
        Ok(config) => config,
        Err(error) => return answer.fail(engine, TYPE, error),
    };
    if config.name != name {
        return answer.fail(engine, TYPE, ApiError::stream_mismatch());
    }
    if name.contains(['/', '\\']) {
        let error = ApiError::new(400, 10128, "Stream name can not contain path separators");
        return answer.fail(engine, TYPE, error);
    }
    if config.sealed {
        let error =
            ApiError::stream_invalid_config("stream configuration for create can not be sealed");
        return answer.fail(engine, TYPE, error);
    }
    if config.mirror_direct && config.mirror.is_none() {
        let error =
            ApiError::stream_invalid_config("stream has no mirror but does have mirror direct");
        return answer.fail(engine, TYPE, error);
    }
    let config = match config.checked() {
        Ok(config) => config,
        Err(error) => return answer.fail(engine, TYPE, error),
    };
    if config.num_replicas > 1 {
        return answer.fail(engine, TYPE, ApiError::replicas_not_supported());
    }
    if let Some(existing) = disk.streams.get(name) {
        if existing.config != config {
            return answer.fail(engine, TYPE, ApiError::stream_name_exists());
        }
        let created = Created {
            info: stream_info_of(existing),
            did_create: true,
        };
        return answer.send(engine, TYPE, None, created);
    }
    if overlaps(disk, &config.subjects, None) {
        return answer.fail(engine, TYPE, ApiError::subjects_overlap());
    }
    let incarnation = disk.next_id();
    let created = disk.creation_time(unix(now));
    let stream = Stream::new(config, incarnation, created);
    let stream = disk.streams.entry(name.to_owned()).or_insert(stream);
    let created = Created {
        info: stream_info_of(stream),
        did_create: true,
    };
    answer.send(engine, TYPE, None, created);
}

/// Whether `subjects` overlap those of a stream other than `except`.
fn overlaps(disk: &Disk, subjects: &[String], except: Option<&str>) -> bool {
    disk.streams
        .values()
        .filter(|stream| Some(stream.config.name.as_str()) != except)
        .any(|stream| {
            stream
                .config
                .subjects
                .iter()
                .any(|theirs| subjects.iter().any(|ours| subject::collide(ours, theirs)))
        })
}

fn stream_update(
    engine: &mut Engine,
    disk: &mut Disk,
    now: Duration,
    name: &str,
    body: &[u8],
    answer: &mut Answer<'_>,
) {
    const TYPE: &str = "stream_update_response";
    let config = match Request::parse(body)
        .map_err(|_| ApiError::invalid_json())
        .and_then(|request| StreamConfig::read(&request))
        .and_then(StreamConfig::checked)
    {
        Ok(config) => config,
        Err(error) => return answer.fail(engine, TYPE, error),
    };
    if config.name != name {
        return answer.fail(engine, TYPE, ApiError::stream_mismatch());
    }
    let Some(existing) = disk.streams.get(name) else {
        return answer.fail(engine, TYPE, ApiError::stream_not_found());
    };
    if let Some(error) = config.update_refusal(&existing.config) {
        return answer.fail(engine, TYPE, error);
    }
    if overlaps(disk, &config.subjects, Some(name)) {
        return answer.fail(engine, TYPE, ApiError::subjects_overlap());
    }
    let Some(stream) = disk.streams.get_mut(name) else {
        return answer.fail(engine, TYPE, ApiError::stream_update("stream not found"));
    };
    let old_per_subject = stream.config.max_msgs_per_subject;
    stream.config = config;
    stream.enforce_after_update(now, old_per_subject);
    let info = stream_info_of(stream);
    answer.send(engine, TYPE, None, info);
}

fn stream_info(engine: &mut Engine, disk: &Disk, name: &str, body: &[u8], answer: &mut Answer<'_>) {
    const TYPE: &str = "stream_info_response";
    if !is_empty_request(body) {
        let request = Request::parse(body).ok();
        let valid = request.is_some_and(|r| {
            r.boolean("deleted_details").is_ok()
                && r.string("subjects_filter").is_ok()
                && r.int("offset").is_ok()
        });
        if !valid {
            let error = ApiError::invalid_json();
            return answer.send(engine, TYPE, Some(&error), Paged::default());
        }
    }
    let Some(stream) = disk.streams.get(name) else {
        let error = ApiError::stream_not_found();
        return answer.send(engine, TYPE, Some(&error), Paged::default());
    };
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(flatten)]
        paged: Paged,
        #[serde(flatten)]
        info: StreamInfo<'a>,
    }
    let body = Body {
        paged: Paged::default(),
        info: stream_info_of(stream),
    };
    answer.send(engine, TYPE, None, body);
}

fn stream_delete(
    engine: &mut Engine,
    disk: &mut Disk,
    name: &str,
    body: &[u8],
    answer: &mut Answer<'_>,
) {
    const TYPE: &str = "stream_delete_response";
    if !is_empty_request(body) {
        return answer.fail(engine, TYPE, ApiError::not_empty_request());
    }
    let Some(stream) = disk.streams.get(name) else {
        return answer.fail(engine, TYPE, ApiError::stream_not_found());
    };
    let consumers: Vec<String> = stream.consumers.keys().cloned().collect();
    for consumer in consumers {
        engine.delete_consumer(disk, name, &consumer, answer.out);
    }
    disk.streams.remove(name);
    answer.send(engine, TYPE, None, Success { success: true });
}

fn stream_names(engine: &mut Engine, disk: &Disk, body: &[u8], answer: &mut Answer<'_>) {
    const TYPE: &str = "stream_names_response";
    #[derive(Serialize)]
    struct Names {
        #[serde(flatten)]
        paged: Paged,
        streams: Option<Vec<String>>,
    }
    let (mut offset, mut filter) = (0, String::new());
    if !is_empty_request(body) {
        let read = Request::parse(body).and_then(|r| Ok((r.int("offset")?, r.string("subject")?)));
        match read {
            Ok((o, f)) => (offset, filter) = (usize::try_from(o).unwrap_or(0), f),
            Err(_) => {
                let error = ApiError::invalid_json();
                let names = Names {
                    paged: Paged::default(),
                    streams: None,
                };
                return answer.send(engine, TYPE, Some(&error), names);
            }
        }
    }
    let names: Vec<String> = disk
        .streams
        .values()
        .filter(|s| {
            filter.is_empty()
                || s.config
                    .subjects
                    .iter()
                    .any(|x| subject::collide(&filter, x))
        })
        .map(|s| s.config.name.clone())
        .collect();
    let total = names.len();
    let offset = offset.min(total);
    let page: Vec<String> = names.into_iter().skip(offset).take(NAMES_LIMIT).collect();
    let names = Names {
        paged: Paged {
            total,
            offset,
            limit: NAMES_LIMIT,
        },
        streams: (!page.is_empty()).then_some(page),
    };
    answer.send(engine, TYPE, None, names);
}

fn consumer_names(
    engine: &mut Engine,
    disk: &Disk,
    stream: &str,
    body: &[u8],
    answer: &mut Answer<'_>,
) {
    const TYPE: &str = "consumer_names_response";
    #[derive(Serialize)]
    struct Names {
        #[serde(flatten)]
        paged: Paged,
        consumers: Vec<String>,
    }
    let empty = || Names {
        paged: Paged::default(),
        consumers: Vec::new(),
    };
    let mut offset = 0;
    if !is_empty_request(body) {
        match Request::parse(body).and_then(|r| r.int("offset")) {
            Ok(o) => offset = usize::try_from(o).unwrap_or(0),
            Err(_) => return answer.send(engine, TYPE, Some(&ApiError::invalid_json()), empty()),
        }
    }
    let Some(stream) = disk.streams.get(stream) else {
        return answer.send(engine, TYPE, Some(&ApiError::stream_not_found()), empty());
    };
    let total = stream.consumers.len();
    let offset = offset.min(total);
    let names = Names {
        paged: Paged {
            total,
            offset,
            limit: NAMES_LIMIT,
        },
        consumers: stream
            .consumers
            .keys()
            .skip(offset)
            .take(NAMES_LIMIT)
            .cloned()
            .collect(),
    };
    answer.send(engine, TYPE, None, names);
}

/// The info of a consumer, as `CONSUMER.INFO` and the create reply report it.
fn consumer_info_of<'a>(
    stream: &'a Stream,
    consumer: &'a Consumer,
    runtime: Option<&Runtime>,
) -> ConsumerInfo<'a> {
    let ((delivered_consumer, delivered_stream), (floor_consumer, floor_stream)) =
        consumer.positions();
    let active = |at: Option<Duration>| at.map(|at| go_time(Some(unix(at))));
    ConsumerInfo {
        stream_name: &stream.config.name,
        name: &consumer.name,
        created: go_time(Some(consumer.created)),
        config: &consumer.config,
        delivered: SequenceInfo {
            consumer_seq: delivered_consumer,
            stream_seq: delivered_stream,
            last_active: active(runtime.and_then(|r| r.last_delivered_at)),
        },
        ack_floor: SequenceInfo {
            consumer_seq: floor_consumer,
            stream_seq: floor_stream,
            last_active: active(runtime.and_then(|r| r.last_acked_at)),
        },
        num_ack_pending: consumer.pending.len(),
        num_redelivered: consumer.redelivered.len(),
        num_waiting: runtime.map_or(0, |r| r.waiting.len()),
        num_pending: consumer.num_pending(stream),
    }
}

#[allow(clippy::too_many_arguments)]
fn consumer_info(
    engine: &mut Engine,
    disk: &mut Disk,
    now: Duration,
    stream: &str,
    consumer: &str,
    body: &[u8],
    router: &dyn Router,
    answer: &mut Answer<'_>,
) {
    const TYPE: &str = "consumer_info_response";
    if !is_empty_request(body) {
        return answer.fail(engine, TYPE, ApiError::not_empty_request());
    }
    let Some(s) = disk.streams.get(stream) else {
        return answer.fail(engine, TYPE, ApiError::stream_not_found());
    };
    if !s.consumers.contains_key(consumer) {
        return answer.fail(engine, TYPE, ApiError::consumer_not_found());
    }
    let key = (stream.to_owned(), consumer.to_owned());
    let mut runtime = engine.runtimes.remove(&key);
    let payload = with_consumer(disk, stream, consumer, |stream, consumer| {
        if let Some(runtime) = runtime.as_mut() {
            // As the server does before counting `num_waiting`.
            let last = consumer.positions().0;
            runtime.waiting.sweep(
                false,
                now,
                last,
                &|reply| router.has_interest(reply),
                answer.out,
            );
        }
        to_go_json(&Reply {
            kind: kind(TYPE),
            error: None,
            body: consumer_info_of(stream, consumer, runtime.as_ref()),
        })
    });
    if let Some(runtime) = runtime {
        engine.runtimes.insert(key, runtime);
    }
    if let Some(payload) = payload {
        send_raw(engine, answer, payload);
    }
}

/// Sends a reply already serialised.
fn send_raw(engine: &mut Engine, answer: &mut Answer<'_>, payload: Bytes) {
    engine.api_total += 1;
    if let Some(reply) = &answer.reply {
        answer.out.push(Outbound {
            subject: reply.clone(),
            payload,
            ..Outbound::default()
        });
    }
}

fn consumer_delete(
    engine: &mut Engine,
    disk: &mut Disk,
    stream: &str,
    consumer: &str,
    body: &[u8],
    answer: &mut Answer<'_>,
) {
    const TYPE: &str = "consumer_delete_response";
    if !is_empty_request(body) {
        return answer.fail(engine, TYPE, ApiError::not_empty_request());
    }
    let Some(s) = disk.streams.get(stream) else {
        return answer.fail(engine, TYPE, ApiError::stream_not_found());
    };
    if !s.consumers.contains_key(consumer) {
        return answer.fail(engine, TYPE, ApiError::consumer_not_found());
    }
    engine.delete_consumer(disk, stream, consumer, answer.out);
    answer.send(engine, TYPE, None, Success { success: true });
}

/// How a create request names its consumer.
enum Naming {
    /// `CONSUMER.CREATE.<stream>`: an ephemeral with a generated name.
    LegacyEphemeral,
    /// `CONSUMER.DURABLE.CREATE.<stream>.<name>`.
    LegacyDurable(String),
    /// `CONSUMER.CREATE.<stream>.<name>[.<filter>]`.
    Named(String, Option<String>),
}

fn consumer_create(
    engine: &mut Engine,
    disk: &mut Disk,
    now: Duration,
    tokens: &[&str],
    body: &[u8],
    answer: &mut Answer<'_>,
) {
    const TYPE: &str = "consumer_create_response";
    let request = match Request::parse(body) {
        Ok(request) => request,
        Err(_) => return answer.fail(engine, TYPE, ApiError::invalid_json()),
    };
    let read = request
        .string("stream_name")
        .map_err(|_| ApiError::invalid_json())
        .and_then(|stream| {
            let config = request
                .object("config")
                .map_err(|_| ApiError::invalid_json())?;
            Ok((stream, ConsumerConfig::read(&config)?))
        });
    let (stream_name, mut config) = match read {
        Ok(read) => read,
        Err(error) => return answer.fail(engine, TYPE, error),
    };
    let (subject_stream, naming) = if tokens[3] == "DURABLE" {
        (tokens[5], Naming::LegacyDurable(tokens[6].to_owned()))
    } else if tokens.len() == 5 {
        (tokens[4], Naming::LegacyEphemeral)
    } else {
        let filter = (tokens.len() > 7).then(|| tokens[6..].join("."));
        (tokens[4], Naming::Named(tokens[5].to_owned(), filter))
    };
    if stream_name != subject_stream {
        return answer.fail(engine, TYPE, ApiError::stream_mismatch());
    }
    let subject_name = match &naming {
        Naming::LegacyDurable(name) | Naming::Named(name, _) => Some(name.clone()),
        Naming::LegacyEphemeral => None,
    };
    if subject_name
        .as_deref()
        .is_some_and(|n| n.contains(['/', '\\']))
    {
        let error = ApiError::new(400, 10127, "Consumer name can not contain path separators");
        return answer.fail(engine, TYPE, error);
    }
    match &naming {
        Naming::LegacyDurable(name) => {
            if config.durable.is_empty() {
                let error = ApiError::new(
                    400,
                    10018,
                    "consumer expected to be durable but a durable name was not set",
                );
                return answer.fail(engine, TYPE, error);
            }
            if &config.durable != name {
                return answer.fail(engine, TYPE, durable_mismatch());
            }
        }
        Naming::Named(name, filter) => {
            if !config.durable.is_empty() && &config.durable != name {
                return answer.fail(engine, TYPE, durable_mismatch());
            }
            config.name = name.clone();
            if let Some(filter) = filter
                && &config.filter_subject != filter
            {
                let error = ApiError::new(
                    400,
                    10131,
                    "Consumer create request did not match filtered subject from create subject",
                );
                return answer.fail(engine, TYPE, error);
            }
        }
        Naming::LegacyEphemeral => {
            if !config.durable.is_empty() {
                let error = ApiError::new(
                    400,
                    10020,
                    "consumer expected to be ephemeral but a durable name was set in request",
                );
                return answer.fail(engine, TYPE, error);
            }
        }
    }
    if config.num_replicas > 1 {
        return answer.fail(engine, TYPE, ApiError::replicas_not_supported());
    }
    match add_consumer(engine, disk, now, &stream_name, config) {
        Ok(name) => {
            let runtime = engine.runtimes.get(&(stream_name.clone(), name.clone()));
            let Some(payload) = disk.streams.get(&stream_name).and_then(|stream| {
                let consumer = stream.consumers.get(&name)?;
                Some(to_go_json(&Reply {
                    kind: kind(TYPE),
                    error: None,
                    body: consumer_info_of(stream, consumer, runtime),
                }))
            }) else {
                return;
            };
            send_raw(engine, answer, payload);
        }
        Err(error) => answer.fail(engine, TYPE, error),
    }
}

fn durable_mismatch() -> ApiError {
    ApiError::new(
        400,
        10017,
        "consumer name in subject does not match durable name in request",
    )
}

/// `addConsumer`: creates the consumer, or updates the one of the same name; returns its name.
fn add_consumer(
    engine: &mut Engine,
    disk: &mut Disk,
    now: Duration,
    stream_name: &str,
    config: ConsumerConfig,
) -> Result<String, ApiError> {
    let Some(stream) = disk.streams.get(stream_name) else {
        return Err(ApiError::stream_not_found());
    };
    let mut config = config.with_defaults();
    config.check(stream)?;
    let existing_name = if !config.durable.is_empty() {
        Some(config.durable.clone())
    } else if !config.name.is_empty() {
        Some(config.name.clone())
    } else {
        None
    };
    if let Some(name) = &existing_name
        && let Some(existing) = stream.consumers.get(name)
    {
        if let Some(error) = config.update_refusal(&existing.config) {
            return Err(error);
        }
        let threshold_changed = existing.config.inactive_threshold != config.inactive_threshold;
        let name = name.clone();
        let stream = disk
            .streams
            .get_mut(stream_name)
            .ok_or_else(ApiError::stream_not_found)?;
        if let Some(existing) = stream.consumers.get_mut(&name) {
            existing.config = config;
            if threshold_changed
                && let Some(runtime) = engine
                    .runtimes
                    .get_mut(&(stream_name.to_owned(), name.clone()))
            {
                runtime.inactive_check = super::engine::inactive_threshold(existing)
                    .map(|t| now + t + Duration::from_millis(100));
            }
        }
        return Ok(name);
    }
    if stream.config.max_consumers > 0
        && stream.consumers.len() as i64 >= stream.config.max_consumers
    {
        return Err(ApiError::max_consumers());
    }
    if stream.config.retention == "workqueue" {
        if config.ack_policy != "explicit" {
            return Err(ApiError::new(
                400,
                10098,
                "workqueue stream requires explicit ack",
            ));
        }
        if config.deliver_policy != "all" {
            return Err(ApiError::new(
                400,
                10101,
                "consumer must be deliver all on workqueue stream",
            ));
        }
    }
    let ephemeral = config.durable.is_empty();
    let name = if !ephemeral {
        if config.durable.len() > 255 {
            return Err(ApiError::new(
                400,
                10102,
                "consumer name is too long, maximum allowed is 255",
            ));
        }
        config.durable.clone()
    } else if !config.name.is_empty() {
        config.name.clone()
    } else {
        let taken: Vec<String> = stream.consumers.keys().cloned().collect();
        let name = loop {
            let candidate = format!("EPH{:05}", disk.next_id());
            if !taken.contains(&candidate) {
                break candidate;
            }
        };
        // nats-server 2.9 names the consumer but leaves `config.name` empty.
        name
    };
    if !subject::is_valid_name(&name) {
        return Err(ApiError::new(
            400,
            10103,
            "durable name can not contain '.', '*', '>'",
        ));
    }
    if ephemeral && config.inactive_threshold <= 0 {
        config.inactive_threshold = EPHEMERAL_INACTIVE_THRESHOLD;
    }
    let incarnation = disk.next_id();
    let created = disk.creation_time(unix(now));
    let stream = disk
        .streams
        .get_mut(stream_name)
        .ok_or_else(ApiError::stream_not_found)?;
    let consumer = Consumer::new(name.clone(), config, incarnation, created, stream);
    engine.runtimes.insert(
        (stream_name.to_owned(), name.clone()),
        Runtime::start(stream, &consumer, now),
    );
    stream.consumers.insert(name.clone(), consumer);
    Ok(name)
}
