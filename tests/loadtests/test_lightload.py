"""The light-traffic benchmark's client (loadtests/lightload.py): it reads whole answers off a
keep-alive connection, keeps what follows one for the next, refuses what is not a 200, and
paces its requests; against a real server on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from loadtests import lightload

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: t\r\n\r\nhello"


def test_a_response_in_pieces_is_read_whole_and_what_follows_it_is_kept() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        buffer = bytearray(ANSWER[:10])
        theirs.sendall(ANSWER[10:30])
        theirs.sendall(ANSWER[30:] + ANSWER[:7])
        lightload.read_response(ours, buffer)
        assert buffer == bytearray(ANSWER[:7])


@pytest.mark.parametrize(("answer", "error"), [
    (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", "unexpected answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi", "closed the connection"),
])
def test_an_error_or_a_cut_answer_stops_the_run(answer: bytes, error: str) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(answer)
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(RuntimeError, match=error):
            lightload.read_response(ours, bytearray())


@pytest.fixture
def server() -> Iterator[int]:
    """Answers each request head on a keep-alive connection with ANSWER."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
                while b"\r\n\r\n" in data:
                    _, data = data.split(b"\r\n\r\n", 1)
                    conn.sendall(ANSWER)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with listener:
        yield listener.getsockname()[1]
    thread.join(timeout=10)


def test_paced_sends_rate_times_duration_requests_one_at_a_time(server: int) -> None:
    latencies = lightload.paced(server, rate=200, duration=0.1)
    assert len(latencies) == 20 and all(t > 0 for t in latencies)


def test_the_table_has_a_row_per_measurement() -> None:
    row = lightload.Row("nginx", 100, "splitproxy-compiled", 99.5, 0.25, 0.5, 2.0, 201.4)
    assert lightload.markdown([row]).splitlines()[-1] == (
        "| nginx | 100/s | splitproxy-compiled | 100 | 0.250 ms | 0.500 ms | 2.0% | 201 µs |")
