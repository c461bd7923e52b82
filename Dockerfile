# The Pulse image: every worker of docker-compose.yml runs one `pulse` verb from it
# (generate, produce, consume --sink ..., upload, receiver, db init).
#
#   docker build -t pulse-cdc:local .
#   docker run --rm pulse-cdc:local --help
#
# Pinned by constraints.txt, like `make venv`. Runs as the unprivileged user `pulse` (uid 10001).
#
# Without an image registry (docs/deploy.md, "Images without a registry"): dev/docker-images.sh builds
# with BASE_IMAGE=pulse-local/python:bookworm (Debian's python3.11, from debootstrap) and
# PIP_OPTIONS="--no-index --find-links /wheels" (wheels built on the host into docker/wheels/).

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_OPTIONS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# gcc builds the replication hot path (src/pulse/source/_wire.c); only the
# build stage has it. The import check fails the build if it was skipped.
# (python3-dev: the headers, only on a base whose Python lacks them, i.e. Debian's.)
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
    $(python -c 'import os, sysconfig; print("" if os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") else "python3-dev")') \
 && rm -rf /var/lib/apt/lists/*
COPY docker/wheels /wheels
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY src ./src
RUN python -m venv /opt/pulse \
 && /opt/pulse/bin/pip install $PIP_OPTIONS -c constraints.txt '.[all]' \
 && /opt/pulse/bin/python -c "import pulse.source._wire" \
 && /opt/pulse/bin/pulse --help >/dev/null

FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/pulse/bin:$PATH \
    PULSE_BIGQUERY__SPOOL_DIR=/var/lib/pulse/bigquery_batches
RUN groupadd --system --gid 10001 pulse \
 && useradd --system --uid 10001 --gid pulse --home-dir /var/lib/pulse --shell /usr/sbin/nologin pulse \
 && mkdir -p /var/lib/pulse/bigquery_batches \
 && chown -R pulse:pulse /var/lib/pulse
COPY --from=build /opt/pulse /opt/pulse
COPY docker/healthcheck.py /usr/local/bin/pulse-healthcheck
RUN chmod 0755 /usr/local/bin/pulse-healthcheck
USER pulse
WORKDIR /var/lib/pulse
ENTRYPOINT ["pulse"]
CMD ["--help"]
