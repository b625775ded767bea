//! A route's compiled `compress:` setting and the choice of an encoding from
//! the client's Accept-Encoding (RFC 9110 §12.5.3). The encoder that applies
//! the choice to a response body lives with the request path
//! (`proxy/compress.rs`); this part is plain data, built with the snapshot.

use http::header::{self, HeaderMap};
use prometheus::IntCounter;

use crate::config::values::Encoding;

/// Responses whose declared length is below this are sent as they are: the
/// encoding's framing would eat most of the gain (a gzip header and trailer
/// alone are 18 bytes) and the CPU is better spent elsewhere.
pub const MIN_BYTES: u64 = 1024;

/// A route's compiled `compress:` setting.
pub struct Compression {
    /// The route's encodings in its order of preference, each with its
    /// `tollgate_compressed_responses_total` counter.
    encodings: Vec<(Encoding, IntCounter)>,
    min_bytes: u64,
}

impl Compression {
    /// `encodings` in preference order; `counter` gives the metric handle of one.
    pub fn new(encodings: &[Encoding], counter: impl Fn(Encoding) -> IntCounter) -> Compression {
        Compression {
            encodings: encodings.iter().map(|&e| (e, counter(e))).collect(),
            min_bytes: MIN_BYTES,
        }
    }

    /// Responses declaring fewer bytes than this are sent as they are.
    pub fn min_bytes(&self) -> u64 {
        self.min_bytes
    }

    /// The encoding to use for a client that sent these request headers, if
    /// any: the highest q-value among the route's encodings, ties going to the
    /// route's order. No Accept-Encoding means identity (clients that can
    /// decode say so).
    pub fn choose(&self, headers: &HeaderMap) -> Option<Encoding> {
        let weights = accepted(headers)?;
        let mut best: Option<(Encoding, u16)> = None;
        for &(e, _) in &self.encodings {
            let w = weights.of(e);
            if w > 0 && best.is_none_or(|(_, b)| w > b) {
                best = Some((e, w));
            }
        }
        best.map(|(e, _)| e)
    }

    pub fn counter(&self, e: Encoding) -> Option<&IntCounter> {
        self.encodings.iter().find(|(x, _)| *x == e).map(|(_, c)| c)
    }
}

/// q-values in thousandths, per encoding and for `*`.
struct Weights {
    explicit: [Option<u16>; 3],
    star: Option<u16>,
}

impl Weights {
    fn of(&self, e: Encoding) -> u16 {
        self.explicit[e.index()].or(self.star).unwrap_or(0)
    }
}

/// The client's Accept-Encoding, or `None` when it sent none. Items with a
/// malformed q-value are ignored; `x-gzip` is gzip (RFC 9110 §8.4.1.3).
fn accepted(headers: &HeaderMap) -> Option<Weights> {
    let mut values = headers.get_all(header::ACCEPT_ENCODING).iter().peekable();
    values.peek()?;
    let mut w = Weights {
        explicit: [None; 3],
        star: None,
    };
    for value in values {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for item in value.split(',') {
            let mut params = item.split(';');
            let coding = params.next().unwrap_or("").trim();
            let mut q = Some(1000);
            for p in params {
                let p = p.trim();
                if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                    q = parse_q(v.trim());
                }
            }
            let Some(q) = q else {
                continue;
            };
            let slot = if coding == "*" {
                &mut w.star
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut w.explicit[Encoding::Gzip.index()]
            } else if coding.eq_ignore_ascii_case("br") {
                &mut w.explicit[Encoding::Brotli.index()]
            } else if coding.eq_ignore_ascii_case("zstd") {
                &mut w.explicit[Encoding::Zstd.index()]
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }
    Some(w)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` in thousandths.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(accept: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in accept {
            h.append(header::ACCEPT_ENCODING, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    fn policy(list: &[Encoding]) -> Compression {
        Compression::new(list, |_| IntCounter::new("x", "x").unwrap())
    }

    #[test]
    fn negotiation_follows_q_values_then_route_order() {
        use Encoding::*;
        let all = policy(&[Brotli, Zstd, Gzip]);
        let gzip_only = policy(&[Gzip]);
        let cases: &[(&Compression, &[&str], Option<Encoding>)] = &[
            (&all, &[], None),
            (&all, &[""], None),
            (&all, &["gzip, deflate, br, zstd"], Some(Brotli)),
            (&all, &["gzip, zstd"], Some(Zstd)),
            (&all, &["gzip"], Some(Gzip)),
            (&all, &["x-gzip"], Some(Gzip)),
            (&all, &["GZIP"], Some(Gzip)),
            (&all, &["br;q=0.5, gzip"], Some(Gzip)),
            (&all, &["br;q=0, gzip;q=0.1"], Some(Gzip)),
            (&all, &["br;q=0, zstd;q=0, gzip;q=0"], None),
            (&all, &["*"], Some(Brotli)),
            (&all, &["*;q=0"], None),
            (&all, &["br;q=0, *"], Some(Zstd)),
            (&all, &["identity"], None),
            (&all, &["deflate"], None),
            (&all, &["gzip;q=2"], None),
            (&all, &["gzip;q=0.1234"], None),
            (&all, &["gzip;q=abc, zstd"], Some(Zstd)),
            (&all, &["gzip", "br"], Some(Brotli)),
            (&all, &["gzip;q=1.0, br;q=0.999"], Some(Gzip)),
            (&all, &["gzip ; q=0.8 , zstd;Q=0.9"], Some(Zstd)),
            (&gzip_only, &["br, zstd"], None),
            (&gzip_only, &["br, *;q=0.1"], Some(Gzip)),
        ];
        for (p, accept, want) in cases {
            assert_eq!(p.choose(&headers(accept)), *want, "{accept:?}");
        }
    }

    #[test]
    fn q_values() {
        for (v, want) in [
            ("1", Some(1000)),
            ("1.", Some(1000)),
            ("1.000", Some(1000)),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.001", Some(1)),
            ("1.5", None),
            ("2", None),
            ("", None),
            ("-1", None),
            ("0.0001", None),
        ] {
            assert_eq!(parse_q(v), want, "{v}");
        }
    }
}
