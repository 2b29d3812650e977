"""HTTP/2 from the client to an HTTP/2 upstream (`protocol: h2`), through the proxy: trailers
intact, bodies streamed both ways under both sides' flow control, a client's reset passed
upstream, a refused stream sent again, a trailers-only answer passed as it came."""

from __future__ import annotations

import h2.events as ev
from h2.errors import ErrorCodes

from splitproxy.dataplane.h2 import limits
from tests.dataplane.h2.h2server import H2TestServer, ServerKnobs
from tests.support.configs import proxy_config, route
from tests.support.h2client import h2_client
from tests.support.proxy import run_proxy
from tests.support.waiting import wait_until


def h2_config(port: int) -> dict[str, object]:
    r = route({"stable": f"http://127.0.0.1:{port}"})
    r["versions"]["stable"]["protocol"] = "h2"
    return proxy_config([r])


async def test_trailers_and_headers_pass_through_and_are_counted() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port) as client:
        resp = await client.get("/trailers", [("x-a", "1"), ("x-splitproxy-shadow", "1"),
                                              ("x-client-cert-subject", "CN=admin")])
        only = await client.get("/grpc-error")
    assert resp.status == 200 and resp.body == b"body"
    assert resp.trailers == {"grpc-status": "0", "x-trailer": "yes"}
    assert "x-request-id" in resp.headers and resp.headers["x-stream"] == "1"
    sent = dict(upstream.state.request_headers[0])
    assert sent[b"x-a"] == b"1" and sent[b"x-forwarded-for"] == b"127.0.0.1"
    assert sent[b":authority"] == b"localhost" and b"host" not in sent
    # Only the proxy marks a shadow copy or says who a client is: a client's claims are dropped.
    assert b"x-splitproxy-shadow" not in sent and b"x-client-cert-subject" not in sent
    # Trailers-only, as the upstream sent it (not a gRPC request: counted as its status).
    assert only.status == 200 and only.headers["grpc-status"] == "14" and only.body == b""
    assert srv.stats.get("shop", "stable").responses == {200: 2}


async def test_a_large_body_streams_both_ways_under_both_windows() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: many windows on both sides
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port) as client:
        sid = client.request("POST", "/echo", body=None, end=False)
        sent = 0
        while sent < len(payload):
            await client.wait_for(lambda: client.conn.local_flow_control_window(sid) > 0)
            n = min(client.conn.local_flow_control_window(sid),
                    client.conn.max_outbound_frame_size, len(payload) - sent)
            client.conn.send_data(sid, payload[sent:sent + n],
                                  end_stream=sent + n == len(payload))
            client.flush()
            sent += n
        resp = await client.response(sid)
    assert resp.status == 200 and resp.body == payload


async def test_a_client_reset_cancels_the_upstream_stream() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port) as client:
        sid = client.request("GET", "/hold")
        await wait_until(lambda: upstream.state.streams == 1, what="the upstream stream")
        client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()
        await wait_until(lambda: bool(upstream.state.resets), what="the upstream reset")
        after = await client.get("/size/10")
    assert upstream.state.resets == [ErrorCodes.CANCEL]
    assert after.status == 200 and after.body == b"x" * 10
    assert srv.stats.get("shop", "stable").client_aborts == 1


async def test_a_refused_stream_is_sent_again() -> None:
    upstream = H2TestServer(ServerKnobs(refuse=1))
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port) as client:
        resp = await client.response(client.request("POST", "/echo", body=b"again"))
    assert resp.status == 200 and resp.body == b"again"
    assert upstream.state.refused == 1


async def test_a_retried_body_is_credited_to_the_client_once() -> None:
    """A refused stream's body is sent again from what the proxy kept: the client's
    connection window grows back by each body once, never twice (the client would then be
    allowed to send more than the proxy meant to hold). Enough bodies that the proxy's
    connection-level WINDOW_UPDATEs (sent once half its window is consumed) show."""
    body = b"b" * 60000
    count = (limits.CONNECTION_WINDOW // 2) // len(body) + 2
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port) as client:
        for _ in range(count):
            upstream.knobs.refuse += 1  # this request's first stream is refused
            sid = client.request("POST", "/echo", body=None, end=False)
            for at in range(0, len(body), 16384):
                client.conn.send_data(sid, body[at:at + 16384],
                                      end_stream=at + 16384 >= len(body))
            client.flush()
            resp = await client.response(sid)
            assert resp.status == 200 and len(resp.body) == len(body)
    assert upstream.state.refused == count
    updates = [e.delta or 0 for e in client.events
               if isinstance(e, ev.WindowUpdated) and not e.stream_id]
    granted = sum(updates[1:])  # the first opens the window wider at the start
    assert 0 < granted <= count * len(body)


async def test_request_trailers_reach_an_h2_upstream() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port) as client:
        sid = client.request("POST", "/echo", body=b"payload", end=False)
        client.conn.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
        client.flush()
        resp = await client.response(sid)
    assert resp.status == 200 and resp.body == b"payload"
    assert upstream.state.request_trailers == [[(b"x-checksum", b"abc")]]


async def test_request_trailers_are_replayed_with_a_retried_body() -> None:
    upstream = H2TestServer(ServerKnobs(refuse=1))
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port) as client:
        sid = client.request("POST", "/echo", body=b"again", end=False)
        client.conn.send_headers(sid, [(b"x-sum", b"1")], end_stream=True)
        client.flush()
        resp = await client.response(sid)
    assert resp.status == 200 and resp.body == b"again"
    assert upstream.state.request_trailers[-1] == [(b"x-sum", b"1")]  # the served stream


async def test_malformed_request_trailers_reset_only_their_stream() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port, validate=False) as client:
        sid = client.request("POST", "/echo", body=b"x", end=False)
        await wait_until(lambda: bool(upstream.state.received), what="the body upstream")
        client.conn.send_headers(sid, [(b"content-length", b"5")], end_stream=True)
        client.flush()
        resp = await client.response(sid)
        after = await client.get("/size/3")
    assert resp.reset == ErrorCodes.PROTOCOL_ERROR
    assert upstream.state.request_trailers == [] and ErrorCodes.CANCEL in upstream.state.resets
    assert after.status == 200 and after.body == b"xxx"


async def test_grpc_timeout_goes_upstream_less_the_time_spent_in_the_proxy() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            h2_client(srv.port) as client:
        resp = await client.get("/size/1", [("content-type", "application/grpc"),
                                            ("grpc-timeout", "5S")])
    assert resp.status == 200
    sent = dict(upstream.state.request_headers[0])[b"grpc-timeout"]
    assert sent.endswith(b"u") and 4_000_000 < int(sent[:-1]) < 5_000_000
