//! The access log: one line per request with the fields of SPEC §8, as JSON or
//! as `key=value` text.
//!
//! Lines go through `tracing_appender`'s bounded, lossy channel to a writer
//! thread, so a slow stdout never stalls the request path: when the channel is
//! full the line is dropped and counted instead.

use std::io::Write;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::Serialize;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

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
    writer: NonBlocking,
    dropped: ErrorCounter,
    // Flushes the queued lines when the app shuts down.
    _guard: WorkerGuard,
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
    /// never a credential. Beyond SPEC §8's list; null when public.
    pub consumer: Option<&'a str>,
}

fn rfc3339<S: serde::Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*ts))
}

impl AccessLog {
    /// Lines go to `out`; `None` turns the access log off.
    pub fn new(out: Option<Box<dyn Write + Send>>, format: LogFormat) -> Self {
        let sink = out.map(|out| {
            let (writer, guard) = NonBlockingBuilder::default()
                .lossy(true)
                .thread_name("tollgate-access-log")
                .finish(out);
            Sink {
                dropped: writer.error_counter(),
                writer,
                _guard: guard,
            }
        });
        AccessLog { sink, format }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> usize {
        self.sink.as_ref().map_or(0, |s| s.dropped.dropped_lines())
    }

    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    pub fn write(&self, line: &AccessLine<'_>) {
        let Some(sink) = &self.sink else {
            return;
        };
        let mut buf = Vec::with_capacity(320);
        match self.format {
            LogFormat::Json => {
                if serde_json::to_writer(&mut buf, line).is_err() {
                    return;
                }
            }
            LogFormat::Text => write_text(&mut buf, line),
        }
        buf.push(b'\n');
        // The writer only queues the line; a full queue drops and counts it.
        let _ = sink.writer.clone().write_all(&buf);
    }
}

fn write_text(buf: &mut Vec<u8>, l: &AccessLine<'_>) {
    let opt = |v: Option<&str>| v.map_or_else(|| "-".to_string(), text_value);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    let _ = write!(
        buf,
        "{} request_id={} listener={} client_ip={} method={} host={} path={} route={} \
         upstream={} target={} status={} duration_ms={:.3} upstream_ms={} bytes_in={} \
         bytes_out={} retries={} error={} consumer={}",
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
