//! The access log: one line per request with the fields listed in
//! docs/guide/observability.md ("Access log"), as JSON or as `key=value` text.
//!
//! Lines go through a bounded, lossy queue to a writer thread, so a slow stdout
//! never stalls the request path: when the queue is full the line is dropped and
//! counted instead. The queue takes memory only for the lines in it (a
//! preallocated 128k-slot channel was 4 MiB of resident memory, a third of an
//! idle gateway's). The writer wakes once per [`FLUSH_EVERY`] under load, not
//! once per line, and writes what gathered meanwhile in one go: a wake-up and a
//! `write` per request cost more than formatting the line did.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How long lines may wait in the queue while requests keep coming.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Lines the queue holds before it drops new ones.
const QUEUE_LINES: usize = 128 * 1024;
/// Bytes gathered before the writer writes them even within a period.
const BATCH_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Where access-log lines go.
pub struct AccessLog {
    /// `None` when access logging is off: nothing is formatted at all.
    sink: Option<Sink>,
    format: LogFormat,
}

struct Sink {
    /// `None` once dropped: closing the queue tells the writer to finish.
    queue: Option<Sender<Vec<u8>>>,
    /// Lines in the queue, and how many it may hold.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped: Arc<AtomicUsize>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Sink {
    /// Writes out every queued line before the app goes away.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// One request, as logged. Borrowed so that building it allocates nothing.
#[derive(Serialize)]
pub struct AccessLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub ts: SystemTime,
    pub request_id: &'a str,
    pub listener: &'a str,
    pub client_ip: IpAddr,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retries: u32,
    pub error: Option<&'a str>,
    /// The verified client certificate's subject (mTLS listeners only; the
    /// field is absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<&'a str>,
    /// Who the request authenticated as (an API key id or a JWT subject),
    /// never a credential. Null when public.
    pub consumer: Option<&'a str>,
    /// How a `cache:` route's cache served the request (hit, miss, stale,
    /// revalidated, bypass, coalesced). Null on routes without one.
    pub cache: Option<&'a str>,
}

fn rfc3339<S: serde::Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*ts))
}

impl AccessLog {
    /// Lines go to `out`; `None` turns the access log off.
    pub fn new(out: Option<Box<dyn Write + Send>>, format: LogFormat) -> Self {
        Self::with_queue(out, format, QUEUE_LINES)
    }

    fn with_queue(out: Option<Box<dyn Write + Send>>, format: LogFormat, lines: usize) -> Self {
        let sink = out.map(|out| {
            let (queue, receiver) = std::sync::mpsc::channel();
            let queued = Arc::new(AtomicUsize::new(0));
            let taken = queued.clone();
            let writer = std::thread::Builder::new()
                .name("tollgate-access-log".into())
                .spawn(move || write_lines(&receiver, &taken, out));
            if let Err(e) = &writer {
                tracing::error!(error = %e, "could not start the access-log writer");
            }
            Sink {
                queue: Some(queue),
                queued,
                capacity: lines,
                dropped: Arc::default(),
                writer: writer.ok(),
            }
        });
        AccessLog { sink, format }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> usize {
        self.sink
            .as_ref()
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    pub fn write(&self, line: &AccessLine<'_>) {
        let Some(sink) = &self.sink else {
            return;
        };
        let mut buf = Vec::with_capacity(512);
        match self.format {
            LogFormat::Json => write_json(&mut buf, line),
            LogFormat::Text => write_text(&mut buf, line),
        }
        buf.push(b'\n');
        // Only queues the line; a full queue (or a dead writer) drops and counts it.
        let room = sink.queued.fetch_add(1, Ordering::Relaxed) < sink.capacity;
        let queued = room && sink.queue.as_ref().is_some_and(|q| q.send(buf).is_ok());
        if !queued {
            sink.queued.fetch_sub(1, Ordering::Relaxed);
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread: sleeps on the queue while it is empty; once a line
/// arrives, gathers lines for [`FLUSH_EVERY`] at a time and writes each batch
/// at once, until a period passes without a line. Returns when the queue is
/// closed and drained.
fn write_lines(lines: &Receiver<Vec<u8>>, queued: &AtomicUsize, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    while let Ok(line) = lines.recv() {
        queued.fetch_sub(1, Ordering::Relaxed);
        batch.extend_from_slice(&line);
        loop {
            std::thread::sleep(FLUSH_EVERY);
            let mut busy = false;
            let open = loop {
                match lines.try_recv() {
                    Ok(line) => {
                        queued.fetch_sub(1, Ordering::Relaxed);
                        busy = true;
                        batch.extend_from_slice(&line);
                        if batch.len() >= BATCH_BYTES {
                            write_batch(&mut out, &mut batch);
                        }
                    }
                    Err(TryRecvError::Empty) => break true,
                    Err(TryRecvError::Disconnected) => break false,
                }
            };
            write_batch(&mut out, &mut batch);
            if !open {
                return;
            }
            if !busy {
                break;
            }
        }
    }
}

fn write_batch(out: &mut Box<dyn Write + Send>, batch: &mut Vec<u8>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = out.write_all(batch).and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "could not write the access log");
    }
    batch.clear();
}

/// The line as JSON, the same as serde's rendering of [`AccessLine`] but
/// without running every string through the escaper: request ids, names and
/// most paths need no escaping, and escaping byte by byte was a third of the
/// log's cost per request.
fn write_json(buf: &mut Vec<u8>, l: &AccessLine<'_>) {
    let _ = write!(
        buf,
        "{{\"ts\":\"{}\"",
        humantime::format_rfc3339_millis(l.ts)
    );
    json_field(buf, "request_id", Some(l.request_id));
    json_field(buf, "listener", Some(l.listener));
    let _ = write!(buf, ",\"client_ip\":\"{}\"", l.client_ip);
    json_field(buf, "method", Some(l.method));
    json_field(buf, "host", l.host);
    json_field(buf, "path", Some(l.path));
    json_field(buf, "route", l.route);
    json_field(buf, "upstream", l.upstream);
    json_field(buf, "target", l.target);
    json_key(buf, "status");
    json_int(buf, l.status);
    json_key(buf, "duration_ms");
    json_number(buf, Some(l.duration_ms));
    json_key(buf, "upstream_ms");
    json_number(buf, l.upstream_ms);
    json_key(buf, "bytes_in");
    json_int(buf, l.bytes_in);
    json_key(buf, "bytes_out");
    json_int(buf, l.bytes_out);
    json_key(buf, "retries");
    json_int(buf, l.retries);
    json_field(buf, "error", l.error);
    if l.client_cert.is_some() {
        json_field(buf, "client_cert", l.client_cert);
    }
    json_field(buf, "consumer", l.consumer);
    json_field(buf, "cache", l.cache);
    buf.push(b'}');
}

fn json_key(buf: &mut Vec<u8>, key: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
}

fn json_field(buf: &mut Vec<u8>, key: &str, value: Option<&str>) {
    json_key(buf, key);
    match value {
        None => buf.extend_from_slice(b"null"),
        Some(v) if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') => {
            buf.push(b'"');
            buf.extend_from_slice(v.as_bytes());
            buf.push(b'"');
        }
        Some(v) => {
            let _ = serde_json::to_writer(&mut *buf, v);
        }
    }
}

fn json_int(buf: &mut Vec<u8>, value: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn json_number(buf: &mut Vec<u8>, value: Option<f64>) {
    let _ = serde_json::to_writer(&mut *buf, &value);
}

fn write_text(buf: &mut Vec<u8>, l: &AccessLine<'_>) {
    let opt = |v: Option<&str>| v.map_or_else(|| "-".to_string(), text_value);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    let _ = write!(
        buf,
        "{} request_id={} listener={} client_ip={} method={} host={} path={} route={} \
         upstream={} target={} status={} duration_ms={:.3} upstream_ms={} bytes_in={} \
         bytes_out={} retries={} error={} consumer={} cache={}",
        humantime::format_rfc3339_millis(l.ts),
        text_value(l.request_id),
        text_value(l.listener),
        l.client_ip,
        text_value(l.method),
        opt(l.host),
        text_value(l.path),
        opt(l.route),
        opt(l.upstream),
        opt(l.target),
        l.status,
        l.duration_ms,
        ms(l.upstream_ms),
        l.bytes_in,
        l.bytes_out,
        l.retries,
        opt(l.error),
        opt(l.consumer),
        opt(l.cache),
    );
    if let Some(subject) = l.client_cert {
        let _ = write!(buf, " client_cert={}", text_value(subject));
    }
}

/// Quotes a value that would otherwise break the `key=value` layout.
fn text_value(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=')
    {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;

    fn line(request_id: &str) -> AccessLine<'_> {
        AccessLine {
            ts: SystemTime::UNIX_EPOCH,
            request_id,
            listener: "http",
            client_ip: IpAddr::from([127, 0, 0, 1]),
            method: "GET",
            host: Some("example.com"),
            path: "/",
            route: Some("r"),
            upstream: Some("u"),
            target: Some("127.0.0.1:1"),
            status: 200,
            duration_ms: 1.5,
            upstream_ms: Some(1.0),
            bytes_in: 0,
            bytes_out: 6,
            retries: 0,
            error: None,
            client_cert: None,
            consumer: None,
            cache: None,
        }
    }

    /// Collects what the writer thread writes; optionally holds every write
    /// until the test lets it go.
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Option<Arc<Mutex<mpsc::Receiver<()>>>>,
    }

    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(gate) = &self.gate {
                let _ = gate.lock().unwrap().recv();
            }
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn ids(out: &Out) -> Vec<String> {
        let text = String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["request_id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn json_lines_are_what_serde_makes_of_them() {
        let mut cases = vec![line("plain")];
        let mut odd = line("quote\"back\\slash\ttab\u{1}ctl é ✓");
        odd.host = None;
        odd.route = None;
        odd.upstream_ms = None;
        odd.error = Some("upstream_timeout");
        odd.client_cert = Some("CN=client,O=\"x\"");
        odd.consumer = Some("acme");
        odd.duration_ms = 12.0;
        odd.ts = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        cases.push(odd);
        for l in &cases {
            let mut ours = Vec::new();
            write_json(&mut ours, l);
            let serde = serde_json::to_vec(l).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_log_is_dropped() {
        let out = Out::default();
        let log = AccessLog::new(Some(Box::new(out.clone())), LogFormat::Json);
        let want: Vec<String> = (0..5000).map(|i| format!("r{i}")).collect();
        for id in &want {
            log.write(&line(id));
        }
        drop(log);
        assert_eq!(ids(&out), want);
    }

    #[test]
    fn a_stuck_writer_drops_and_counts_lines_instead_of_blocking() {
        let (release, gate) = mpsc::channel();
        let out = Out {
            gate: Some(Arc::new(Mutex::new(gate))),
            ..Out::default()
        };
        let log = AccessLog::with_queue(Some(Box::new(out.clone())), LogFormat::Json, 8);
        // The writer holds at most one batch and the queue 8 lines: writing goes
        // on without blocking and the excess is counted.
        let mut written = 0;
        while log.dropped() == 0 {
            log.write(&line(&format!("r{written}")));
            written += 1;
            if written == 100_000 {
                // Open the gate first: dropping the log on the way out waits
                // for the writer.
                drop(release);
                panic!("nothing was ever dropped");
            }
        }
        let dropped = log.dropped();
        drop(release);
        drop(log);
        let kept = ids(&out);
        assert_eq!(kept.len() + dropped, written);
        assert_eq!(kept.first().map(String::as_str), Some("r0"));
    }
}
