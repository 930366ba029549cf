# rocketmesh:latest without a registry: the release binary built on the host (build-images.sh
# copies it into the context) on the local Debian base. One image for every role of the demo:
# `control-plane`, `broker`, `sidecar` (uid 10001) and the pod's init container
# (`iptables install`, run as root with NET_ADMIN): iptables brings both the nft and the legacy
# backend, which `rocketmesh iptables --backend auto` chooses between.
ARG BASE=rocketmesh-base:bookworm
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/rocketmesh \
        --shell /usr/sbin/nologin rocketmesh \
    && install -d -o 10001 -g 10001 /var/lib/rocketmesh /var/lib/rocketmesh/data
COPY rocketmesh /usr/local/bin/rocketmesh
USER 10001
WORKDIR /var/lib/rocketmesh
ENTRYPOINT ["/usr/local/bin/rocketmesh"]
CMD ["--help"]
