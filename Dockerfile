# Multi-stage build of the rocketmesh release binary.
# Build:  docker build -t rocketmesh .
# Run:    docker run --rm rocketmesh demo --once
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY filters ./filters
COPY xds ./xds
COPY testdata ./testdata
RUN cargo build --release --locked --bin rocketmesh

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/rocketmesh rocketmesh
COPY --from=build /src/target/release/rocketmesh /usr/local/bin/rocketmesh
USER 10001
ENTRYPOINT ["/usr/local/bin/rocketmesh"]
CMD ["--help"]
