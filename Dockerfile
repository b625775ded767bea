# syntax=docker/dockerfile:1
# Build: docker build -t tollgate .
# Run:   docker run -p 8080:8080 -v $PWD/tollgate.yaml:/etc/tollgate/tollgate.yaml:ro tollgate

FROM rust:1.95-slim-bookworm AS build
# Cargo features to build in, e.g. `--build-arg FEATURES=otel` for span export;
# empty (the default) builds the default features only.
ARG FEATURES=""
WORKDIR /src
# gcc is in the image; aws-lc-rs builds with it alone.
# Dependencies first, in a layer of their own: with only the manifest and stub
# sources, this layer is rebuilt when Cargo.toml or Cargo.lock change, not on
# every source edit. The bench stubs exist because Cargo.toml declares them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in $(sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"$/\1/p}' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$b.rs"; \
    done \
 && cargo build --release --locked --bin tollgate ${FEATURES:+--features "$FEATURES"} \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY config ./config
# The stubs' build left newer timestamps behind: touch so tollgate itself is rebuilt.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin tollgate ${FEATURES:+--features "$FEATURES"} \
 && strip target/release/tollgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tollgate \
 && mkdir -p /etc/tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY config/docker.yaml /etc/tollgate/tollgate.yaml
ENV TOLLGATE_CONFIG=/etc/tollgate/tollgate.yaml
USER 10001:10001
EXPOSE 8080 9901
# bash's /dev/tcp keeps the runtime image free of curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9901 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run", "--log-format", "json"]
