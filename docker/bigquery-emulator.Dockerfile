# The BigQuery API emulator (bqemulator, from PyPI) as an offline image.
# Build context: the repository root (it reads constraints.txt, the project's pins).
# BASE_IMAGE and PIP_OPTIONS: as in ../Dockerfile (dev/docker-images.sh builds it without a registry).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_OPTIONS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/bqemulator/bin:$PATH \
    HOME=/home/bq

RUN groupadd --system --gid 10002 bq \
 && useradd --system --uid 10002 --gid bq --create-home --home-dir /home/bq --shell /usr/sbin/nologin bq \
 && mkdir -p /data && chown bq:bq /data

COPY constraints.txt /tmp/constraints.txt
COPY docker/wheels /wheels
RUN python -m venv /opt/bqemulator \
 && /opt/bqemulator/bin/pip install $PIP_OPTIONS -c /tmp/constraints.txt \
        bqemulator duckdb==1.5.5 duckdb-extension-spatial==1.5.5 numpy \
 && rm -rf /tmp/constraints.txt /wheels

COPY docker/bigquery/install_spatial.py /tmp/install_spatial.py
USER bq
RUN python /tmp/install_spatial.py

VOLUME ["/data"]
EXPOSE 9050 9060
ENTRYPOINT ["bqemulator"]
CMD ["start", "--rest-host", "0.0.0.0", "--rest-port", "9050", "--grpc-host", "0.0.0.0", "--grpc-port", "9060", \
     "--persistent", "--data-dir", "/data", "--project", "pulse-local"]
