# syntax=docker/dockerfile:1
# splitproxy container image (BuildKit, the default builder since Docker 23):
#
#   docker build -t splitproxy:0.1.0 .
#   docker run -p 8080:8080 -p 9901:9901 -v "$PWD/conf:/etc/splitproxy:ro" \
#     -v splitproxy-state:/var/lib/splitproxy splitproxy:0.1.0
#
# where conf/ holds config.yaml and admin-token (the default config, config/docker.yaml,
# reads the admin token from /etc/splitproxy/admin-token and will not start without it).
#
# Two stages. The builder turns splitproxy and its runtime dependencies into wheels: splitproxy's
# with its hot modules compiled by mypyc (the compiled data plane, 30-38% fewer instructions per
# request), every dependency from its manylinux wheel. The final image installs only those
# wheels into a venv: no compiler, no pip, no test or load-test extras.
# tests/packaging/test_dockerfile.py lints this file with hadolint and runs these install and
# start commands outside Docker.
#
# Reproducible inputs: the base image by exact tag and by the digest of its multi-platform
# index (both stages the same image), every dependency by constraints.txt. Podman and buildah
# build the OCI format by default, which has no HEALTHCHECK: build with `--format docker`.

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# mypyc's C needs a compiler: gcc, and libc6-dev for the C library's headers (gcc only
# recommends it). Python's own headers are in the base image (its `make install` put them in
# /usr/local/include; the slim image removes only the compiler). Not pinned (DL3008): Debian's
# archive keeps only the current version of a package, so a pinned one fails the build at the
# next point release; the compiler never reaches the final image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md constraints.txt ./
COPY splitproxy ./splitproxy
# mypyc type-checks what it compiles with the repository's mypy configuration, as `make
# typecheck` does: pydantic's plugin and the libraries' types must be there, at the versions the
# tests ran on. So the build environment gets mypy, the stubs, setuptools and, through `.`, the
# runtime dependencies, all by constraints.txt; splitproxy itself goes again, so that mypy sees
# only the source in /src.
RUN pip install --constraint constraints.txt mypy types-PyYAML setuptools . \
 && pip uninstall --yes splitproxy
# SPLITPROXY_MYPYC=1: setup.py compiles the hot modules (splitproxy/dataplane/hotmodules.py) into
# the wheel. --no-build-isolation builds it in the environment above, where an isolated one
# would have setuptools only. `.` without extras: the [test] and [load] extras are never built,
# let alone installed.
RUN SPLITPROXY_MYPYC=1 pip wheel --no-build-isolation --constraint constraints.txt \
      --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The wheels are bind-mounted from the builder, never copied: they stay out of every layer.
# The base image's pip installs into a venv that has no pip of its own (`python` is still
# the base image's here: the venv goes on PATH only below).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/splitproxy \
 && python -m pip --python /opt/splitproxy/bin/python install --no-index --find-links=/wheels splitproxy \
 && groupadd --system --gid 10001 splitproxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin splitproxy \
 && mkdir -p /etc/splitproxy /var/lib/splitproxy \
 && chown 10001:10001 /var/lib/splitproxy
ENV PATH=/opt/splitproxy/bin:$PATH
COPY config/docker.yaml /etc/splitproxy/config.yaml
# Rollout state (state.path in the config). Ownership is set above, before the VOLUME: a new
# named volume starts as a copy of this directory, so uid 10001 can write to it.
VOLUME ["/var/lib/splitproxy"]
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 9901
# `splitproxy health` asks /healthz at the config's own admin.listen (not a port written
# here), with the token the server uses when one is set; slim has no curl. Exit 0 or 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["splitproxy", "health", "-c", "/etc/splitproxy/config.yaml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["splitproxy"]
CMD ["run", "-c", "/etc/splitproxy/config.yaml"]
