# Multi-stage build of the rocketmesh image, for machines that can pull from a registry:
#   docker build -t rocketmesh:latest .
#   docker run --rm rocketmesh:latest demo --once
# It makes the same image as examples/docker/build-images.sh (binary + iptables + ca-certificates,
# uid 10001), which is what CI builds and what examples/compose uses: CI's Docker engine has no
# registry, so this file's base images (rust, debian) cannot be pulled there and it is not built
# in CI. Keep the two runtime stages alike.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The workspace: the root package and every member crate (Cargo.toml's [workspace] members).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY filters ./filters
COPY xds ./xds
COPY remoting ./remoting
COPY broker ./broker
RUN cargo build --release --locked --bin rocketmesh \
    && strip --strip-debug target/release/rocketmesh

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/rocketmesh \
        --shell /usr/sbin/nologin rocketmesh \
    && install -d -o 10001 -g 10001 /var/lib/rocketmesh /var/lib/rocketmesh/data
COPY --from=build /src/target/release/rocketmesh /usr/local/bin/rocketmesh
USER 10001
WORKDIR /var/lib/rocketmesh
ENTRYPOINT ["/usr/local/bin/rocketmesh"]
CMD ["--help"]
