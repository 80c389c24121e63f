# syntax=docker/dockerfile:1
# ollamux in a container: small (python:3.11-slim, no compiler in the final image), runs as a non-root user.
#
#   docker build -t ollamux .                      # default: extras postgres, redis, otel (no llama.cpp)
#   docker build -t ollamux:llama --target llama . # also the built-in llama.cpp engine (xllamacpp, gguf)
#   docker build --build-arg EXTRAS=postgres -t ollamux:pg .   # pick the extras of the default image
#
#   docker run -p 11434:11434 -v ollamux-data:/var/lib/ollamux ollamux
#   docker run -p 11434:11434 -v $PWD/ollamux.yaml:/etc/ollamux/config.yaml:ro ollamux
#
# The config is /etc/ollamux/config.yaml (deploy/docker/config.yaml by default); the request log, the models
# and downloads live under /var/lib/ollamux (a volume). See deploy/ for compose and Kubernetes examples.

ARG PYTHON_VERSION=3.11
# the optional extras of the default image (pyproject.toml); empty for none; the llama target adds `llama`
ARG EXTRAS=postgres,redis,otel

# --------------------------------------------------------------------------------------------- build
# The wheel of this tree and a virtualenv with it and its dependencies, built once; the final stages copy
# only the virtualenv, so pip's caches and the sources stay behind.
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/ollamux
ARG EXTRAS
RUN /opt/ollamux/bin/pip install "$(ls /dist/ollamux-*.whl)${EXTRAS:+[${EXTRAS}]}"

# the same virtualenv plus the llama extra (xllamacpp ships llama.cpp's server prebuilt, ~manylinux wheel)
FROM build AS build-llama
ARG EXTRAS
RUN /opt/ollamux/bin/pip install "$(ls /dist/ollamux-*.whl)[${EXTRAS:+${EXTRAS},}llama]"

# ------------------------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim AS runtime
# tini as PID 1: ollamux starts child processes (the log writer, llama.cpp servers), and PID 1 must reap
# orphans and pass SIGTERM/SIGHUP on. A fixed numeric uid (10001): Kubernetes' runAsNonRoot can check a
# numeric USER, and volumes can be chowned to it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ollamux \
 && useradd --system --uid 10001 --gid ollamux --home-dir /var/lib/ollamux --no-create-home \
      --shell /usr/sbin/nologin ollamux \
 && mkdir -p /etc/ollamux /var/lib/ollamux/models \
 && chown -R ollamux:ollamux /var/lib/ollamux
COPY deploy/docker/config.yaml /etc/ollamux/config.yaml
ENV PATH=/opt/ollamux/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/ollamux \
    OLLAMUX_CONFIG=/etc/ollamux/config.yaml \
    OLLAMUX_MODELS=/var/lib/ollamux/models
WORKDIR /var/lib/ollamux
VOLUME ["/var/lib/ollamux"]
EXPOSE 11434
# liveness only (/health answers while the event loop does); python's urllib, so the image needs no curl.
# A config on another port or with TLS sets OLLAMUX_HEALTH_URL.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('OLLAMUX_HEALTH_URL', 'http://127.0.0.1:11434/health'), timeout=4)"]
ENTRYPOINT ["tini", "--", "ollamux", "serve"]

# ----------------------------------------------------------------------------- target: llama (built-in engine)
FROM runtime AS llama
# llama.cpp's server is linked against OpenMP and libstdc++, which the slim image does not carry
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-llama /opt/ollamux /opt/ollamux
USER 10001:10001

# ----------------------------------------------------------------------------- default target: no llama.cpp
FROM runtime AS default
COPY --from=build /opt/ollamux /opt/ollamux
USER 10001:10001
