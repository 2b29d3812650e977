"""`splitproxy health -c CONFIG` (the image's HEALTHCHECK) against a real running proxy: the
admin address and token come from the config, proxy variables are ignored, and a config
broken after start-up does not make a serving proxy unhealthy."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

from splitproxy.cli.health import url_of
from splitproxy.config.models import AdminConfig
from tests.support.configs import proxy_config, route
from tests.support.service import run_service, write_config
from tests.support.upstream import run_upstream


async def _health(path: Path, *args: str, env: dict[str, str] | None = None
                  ) -> tuple[int, str, str]:
    """`splitproxy health`, as a process (the proxy under test serves from this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "splitproxy", "health", "-c", str(path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _config(upstream_url: str, admin_port: int, **admin: str) -> dict[str, object]:
    cfg = proxy_config([route({"stable": upstream_url})])
    cfg["admin"] = {"listen": f"127.0.0.1:{admin_port}", **admin}
    return cfg


async def test_health_asks_the_admin_port_of_the_config_past_any_proxy_variable(
    tmp_path: Path, refused_port: Callable[[], int]
) -> None:
    path = tmp_path / "config.yaml"
    async with run_upstream("stable") as up:
        write_config(path, _config(up.url, 0))
        async with run_service(path, watch=False) as svc:
            # The file must name the port the admin API really has (not 0, not 9901).
            write_config(path, _config(up.url, svc.admin_port))
            dead_proxy = f"http://127.0.0.1:{refused_port()}"
            env = {**os.environ, "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy,
                   "no_proxy": "", "NO_PROXY": ""}
            code, out, err = await _health(path, env=env)
            assert code == 0, err
            assert out == f"healthy: http://127.0.0.1:{svc.admin_port}/healthz answered 200\n"

            code, out, err = await _health(path, "--ready")
            assert code == 0, err
            assert f":{svc.admin_port}/readyz answered 200" in out


async def test_a_config_broken_after_start_up_does_not_make_the_proxy_unhealthy(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yaml"
    async with run_upstream("stable") as up:
        write_config(path, _config(up.url, 0))
        async with run_service(path, watch=False) as svc:
            cfg = _config(up.url, svc.admin_port)
            cfg["routes"] = [{"name": "shop", "versions": {}}]  # a bad edit
            write_config(path, cfg)
            code, out, err = await _health(path)
            assert code == 0, err
            assert "answered 200" in out


async def test_a_proxy_whose_admin_api_has_a_token_is_healthy(tmp_path: Path) -> None:
    """The check sends the token the server uses (admin.token_file, relative to the config,
    as the server reads it), for an admin API that wants it on /healthz."""
    path = tmp_path / "config.yaml"
    (tmp_path / "admin-token").write_text("s3cret-token\n")
    async with run_upstream("stable") as up:
        write_config(path, _config(up.url, 0, token_file="admin-token"))
        async with run_service(path, watch=False) as svc:
            write_config(path, _config(up.url, svc.admin_port, token_file="admin-token"))
            env = {k: v for k, v in os.environ.items() if k != "SPLITPROXY_ADMIN_TOKEN"}
            code, out, err = await _health(path, env=env)
            assert code == 0, err
            assert "answered 200" in out


async def test_nothing_listening_is_unhealthy_with_the_reason(
    tmp_path: Path, refused_port: Callable[[], int]
) -> None:
    path = tmp_path / "config.yaml"
    port = refused_port()
    write_config(path, _config("http://127.0.0.1:9", port))
    code, out, err = await _health(path, "--timeout", "2")
    assert (code, out) == (1, "")
    assert err.startswith(f"unhealthy: http://127.0.0.1:{port}/healthz: ")
    assert "refused" in err


async def test_a_broken_admin_section_is_unhealthy_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("routes: []\nadmin:\n  listen: nowhere\n")
    code, _, err = await _health(path)
    assert code == 1
    assert err == (f"unhealthy: cannot read the admin address: {path}:3: admin.listen: "
                   "expected host:port such as 127.0.0.1:8080 or [::1]:8080, got 'nowhere'\n")


def test_an_admin_api_on_every_address_is_asked_on_loopback() -> None:
    assert url_of(AdminConfig(listen="0.0.0.0:9902"), "/healthz") == \
        "http://127.0.0.1:9902/healthz"
    assert url_of(AdminConfig(listen="[::]:9902"), "/readyz") == "http://[::1]:9902/readyz"
    assert url_of(AdminConfig(listen="[::1]:9902"), "/healthz") == "http://[::1]:9902/healthz"
    assert url_of(AdminConfig(listen="10.0.0.7:9902"), "/healthz") == \
        "http://10.0.0.7:9902/healthz"
