# rocketmesh-prometheus:latest: Debian's prometheus package on the local base (the compose
# `observe` profile mounts examples/prometheus.yml over its configuration). Two things the
# package brings that neither the server nor its web UI reads are deleted to keep the image at
# about half its size: promtool (48 MB) and moment-timezone's per-zone data files (212 MB; the UI
# loads moment-timezone-with-data*.js, which carry their own data).
ARG BASE=rocketmesh-base:bookworm
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /usr/bin/promtool /usr/share/javascript/moment-timezone/data \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
USER prometheus
WORKDIR /var/lib/prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/metrics2", \
     "--storage.tsdb.retention.time=1d", "--web.listen-address=0.0.0.0:9090"]
