"""nginx configurations for the benchmarks, in one place: the main file every nginx of a bench
runs with, the tiny upstream, and nginx as the reverse proxy splitproxy is compared with.

A bench that needs another nginx (TLS, HTTP/2, a mirror) composes these: its own `listen`
lines and server directives around the same proxy `location`, so that what nginx does per
request (Host passed through, X-Forwarded-* added, keep-alive to the upstream) is the same in
every comparison. `{port}` in a block is the port `bench.start_nginx` picks.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"

# The tiny upstream every proxy is put in front of.
UPSTREAM = """
    server {
        listen 127.0.0.1:{port};
        location / { return 200 "ok\\n"; }
    }
"""


def main_conf(tmp: Path, name: str, http_block: str, connections: int = 4096) -> Path:
    """Write `tmp/name.conf`: one worker, no access log, temp paths and pid under `tmp`, the
    `http_block` inside `http {}`; returns its path."""
    temp = tmp / f"{name}-temp"
    temp.mkdir()
    conf = tmp / f"{name}.conf"
    paths = "\n".join(
        f"    {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"worker_processes 1;\n"
        f"worker_rlimit_nofile {2 * connections};\n"
        f"pid {tmp / name}.pid;\n"
        f"error_log {tmp / name}-error.log warn;\n"
        f"events {{ worker_connections {connections}; }}\n"
        f"http {{\n"
        f"    access_log off;\n"
        # wrk keeps its connections for the whole run: nginx's default of 1000 requests per
        # connection would make it reconnect, which splitproxy never asks for.
        f"    keepalive_requests 100000000;\n"
        f"{paths}\n"
        f"{textwrap.indent(textwrap.dedent(http_block).strip(), '    ')}\n"
        f"}}\n"
    )
    return conf


def proxy(upstream: int, listens: Sequence[str] = (f"{HOST}:{{port}}",),
          server: str = "") -> str:
    """An `http` block: nginx proxying to 127.0.0.1:`upstream` over kept-alive connections,
    doing the header work splitproxy does. `listens`: the `listen` arguments (default: the
    picked port, cleartext); `server`: more directives of the server (TLS files, ...)."""
    listen = "\n".join(f"    listen {address};" for address in listens)
    extra = textwrap.indent(textwrap.dedent(server).strip(), "    ")
    return f"""
upstream backend {{
    server {HOST}:{upstream};
    keepalive 64;
    keepalive_requests 100000000;
}}
server {{
{listen}
{extra}
    location / {{
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
    }}
}}
"""


def tls(cert: Path, key: Path) -> str:
    """Server directives for TLS as splitproxy's defaults: TLS 1.2+, no session tickets.
    Ciphers are nginx's default (`HIGH:!aNULL:!MD5`): with the bench's ECDSA certificate both
    proxies negotiate TLS 1.3 and the same AEAD suite."""
    return f"""
ssl_certificate {cert};
ssl_certificate_key {key};
ssl_protocols TLSv1.2 TLSv1.3;
ssl_session_tickets off;
"""
