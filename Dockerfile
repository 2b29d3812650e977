# Minimal image for now; a later issue finishes it (health check, config volume, tuning).
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY splitproxy ./splitproxy
RUN python -m venv /opt/splitproxy \
 && /opt/splitproxy/bin/pip install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin splitproxy \
 && mkdir -p /etc/splitproxy
COPY --from=build /opt/splitproxy /opt/splitproxy
COPY config/ /etc/splitproxy/examples/
ENV PATH=/opt/splitproxy/bin:$PATH PYTHONUNBUFFERED=1
USER splitproxy
EXPOSE 8080 9901
CMD ["splitproxy", "run", "-c", "/etc/splitproxy/config.yaml"]
