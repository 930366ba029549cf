# rocketmesh-app:latest: the demo's legacy application (examples/compose/app/) with the Apache
# RocketMQ C++ client from PyPI (rocketmq==0.4.4: a manylinux wheel that carries librocketmq.so).
# build-images.sh puts the wheel (downloaded by the host's pip) and the app's files in the
# context. The venv is made in a first stage; the runtime stage has Python 3 and the venv, but
# neither pip nor setuptools.
ARG BASE=rocketmesh-base:bookworm
FROM ${BASE} AS venv
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY wheels /wheels
RUN python3 -m venv /opt/app \
    && /opt/app/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        /wheels/rocketmq-0.4.4-*.whl \
    && /opt/app/bin/pip uninstall -y -q pip setuptools \
    && /opt/app/bin/python -c 'import rocketmq.client'

FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && useradd --uid 1000 --user-group --create-home app \
    && install -d -o 1000 -g 1000 /tally
COPY --from=venv /opt/app /opt/app
COPY app.py hold_until_ready.py create_topic.py /app/
RUN /opt/app/bin/python -c 'import rocketmq.client'
ENV PATH=/opt/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
USER 1000
WORKDIR /home/app
CMD ["python", "/app/app.py"]
