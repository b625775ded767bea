//! What a `tower::Service` seam around the upstream call would cost a request:
//! the call made directly (as `proxy::forward` makes it) against the same call
//! through a type-erased, per-request-cloned `BoxCloneService` (the form a
//! seam for users' layers needs: the layer stack is chosen at run time), with
//! no layer and with one pass-through layer. The upstream itself is an
//! immediate answer, so only the seam is measured; docs/ARCHITECTURE.md
//! ("tower") quotes the result.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

async fn upstream(req: Request<Bytes>) -> Result<Response<Bytes>, Infallible> {
    Ok(Response::new(req.into_body()))
}

fn request() -> Request<Bytes> {
    Request::builder()
        .uri("/api/users/7")
        .header("host", "api.example.com")
        .body(Bytes::from_static(b"hello"))
        .expect("request")
}

fn seam(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("upstream_call");
    g.bench_function("direct", |b| {
        b.iter(|| rt.block_on(async { black_box(upstream(request()).await) }))
    });
    let boxed: BoxCloneService<Request<Bytes>, Response<Bytes>, Infallible> =
        BoxCloneService::new(service_fn(upstream));
    g.bench_function("tower_boxed", |b| {
        b.iter(|| rt.block_on(async { black_box(boxed.clone().oneshot(request()).await) }))
    });
    let identity = tower::layer::layer_fn(|s| s);
    let layered: BoxCloneService<Request<Bytes>, Response<Bytes>, Infallible> =
        BoxCloneService::new(
            ServiceBuilder::new()
                .map_request(|r: Request<Bytes>| r)
                .service(identity.layer(service_fn(upstream))),
        );
    g.bench_function("tower_boxed_one_layer", |b| {
        b.iter(|| rt.block_on(async { black_box(layered.clone().oneshot(request()).await) }))
    });
    g.finish();
}

criterion_group!(benches, seam);
criterion_main!(benches);
