# Multi-stage build: a full Rust toolchain to build, a slim Debian image to run.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY vendor ./vendor
RUN cargo build --release --locked --bin termsgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin termsgate
COPY --from=build /src/target/release/termsgate /usr/local/bin/termsgate
COPY conf/ /etc/termsgate/
# In a container the listeners must face the network, not loopback. The repository's example
# key (its token is in a comment) must not be valid in an image: ship no keys at all.
RUN sed -i 's/listen = "127.0.0.1:/listen = "0.0.0.0:/' /etc/termsgate/termsgate.toml \
    && rm -f /etc/termsgate/calliope.toml \
    && printf '# Mount your keys here: termsgate key new --plan free\n' > /etc/termsgate/keys.toml
USER termsgate
EXPOSE 8080 9090
# Mount your own /etc/termsgate (a ConfigMap works: reload follows its symlink swaps).
ENTRYPOINT ["/usr/local/bin/termsgate"]
CMD ["run", "-c", "/etc/termsgate/termsgate.toml"]
