//! What compressing costs per 64 KiB of a JSON API answer, per encoding and
//! level: the gateway's levels (gzip 1, brotli 4, zstd 3) next to the usual
//! alternatives, encoder set-up included (one encoder per response). The
//! compressed size of each is printed once, for the ratio side of the choice.
//! (Brotli 11 is left out: about 140 ms per 64 KiB, 7.9 %.)

use std::hint::black_box;

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::AsyncReadExt;

/// 64 KiB of JSON lines with varying ids and names.
fn payload() -> Vec<u8> {
    let mut out = Vec::with_capacity(70 * 1024);
    let mut i = 0u64;
    while out.len() < 64 * 1024 {
        out.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"user-{}\",\"email\":\"u{}@example.com\",\"active\":{},\"score\":{}}}\n",
                i * 7919 % 1000,
                i * 104729 % 100_000,
                i.is_multiple_of(3),
                (i * 31337) % 10_000
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(64 * 1024);
    out
}

#[derive(Clone, Copy, Debug)]
enum Codec {
    Gzip(i32),
    Brotli(i32),
    Zstd(i32),
}

async fn compress(codec: Codec, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let read = match codec {
        Codec::Gzip(l) => {
            GzipEncoder::with_quality(input, Level::Precise(l))
                .read_to_end(&mut out)
                .await
        }
        Codec::Brotli(q) => {
            let params = async_compression::brotli::EncoderParams::default()
                .quality(Level::Precise(q))
                .window_size(18);
            BrotliEncoder::with_params(input, params)
                .read_to_end(&mut out)
                .await
        }
        Codec::Zstd(l) => {
            ZstdEncoder::with_quality_and_params(
                input,
                Level::Precise(l),
                &[async_compression::zstd::CParameter::window_log(18)],
            )
            .read_to_end(&mut out)
            .await
        }
    };
    if let Err(e) = read {
        panic!("{codec:?}: {e}");
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let input = payload();
    let codecs = [
        Codec::Gzip(1),
        Codec::Gzip(6),
        Codec::Brotli(4),
        Codec::Brotli(5),
        Codec::Zstd(1),
        Codec::Zstd(3),
    ];
    for codec in codecs {
        let size = rt.block_on(compress(codec, &input)).len();
        eprintln!(
            "{codec:?}: 65536 -> {size} bytes ({:.1} %)",
            size as f64 * 100.0 / 65536.0
        );
    }
    let mut group = c.benchmark_group("compress_64k");
    group.throughput(Throughput::Bytes(input.len() as u64));
    for codec in codecs {
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{codec:?}")),
            &codec,
            |b, &codec| b.iter(|| rt.block_on(compress(codec, black_box(&input))).len()),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
