# regcache container image: a multi-stage build. The runtime image holds only the
# binary, CA certificates (for https upstreams) and an unprivileged user; the
# cache lives on a volume. It runs `regcache serve` on the embedded default
# configuration (listen 0.0.0.0:5000, mirror https://registry.k8s.io, data in
# ./regcache-data, i.e. /var/lib/regcache/regcache-data).
#
#   docker build -t regcache .
#   docker run -p 5000:5000 -v regcache:/var/lib/regcache regcache
#   docker run -v $PWD/config.toml:/etc/regcache.toml ... regcache serve --config /etc/regcache.toml

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY config.toml ./
COPY migrations migrations
COPY src src
# Cargo.toml names the integration-test and bench targets; their files must
# exist for cargo to read the manifest.
COPY tests tests
COPY benches benches
RUN cargo build --release --locked --bin regcache

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/regcache --create-home regcache
COPY --from=build /src/target/release/regcache /usr/local/bin/regcache
USER 10001:10001
WORKDIR /var/lib/regcache
VOLUME ["/var/lib/regcache"]
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/regcache"]
CMD ["serve"]
