"""The control socket of a running daemon under abuse: garbage, silence, trickling, crowds, clients
that leave mid-answer or never read. Each gets a clear error or is dropped, is counted in
``stats``' ``control`` section, and the ports keep forwarding meanwhile.

The daemon serves its socket with the production limits. Tests that need a limit to bite quickly
start a second server on the same running daemon (same commands, same counters) with short ones.
"""
from __future__ import annotations

import json

import pytest
import trio

from vswitch.runtime.control import MAX_LINE, ControlCommands, ControlLimits, serve_control

from .support import Harness, RecordingSwitch, ask, make_topology, udp_frame

SHORT = ControlLimits(idle_timeout=0.5, send_timeout=0.5, max_connections=128)


class BigFdbSwitch(RecordingSwitch):
    """A switch whose ``fdb`` answer is far larger than a Unix socket's buffers."""

    def fdb_rows(self, now: float) -> list[dict]:
        return [{"segment": "default", "mac": f"0a:58:0a:f4:{i >> 8 & 255:02x}:{i & 255:02x}",
                 "port": "a", "age_s": 0.0, "padding": "x" * 100} for i in range(40000)]


class Client:
    """One raw connection: what it sends is sent as is, lines are read as they come."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, path: str) -> "Client":
        return cls(await trio.open_unix_socket(path))

    async def read_line(self, timeout: float = 5.0) -> dict | None:
        """The next answer, or None if the server closed the connection first."""
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    async def ask(self, raw: bytes) -> dict | None:
        await self.stream.send_all(raw + b"\n")
        return await self.read_line()

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed its side (after any answers still in flight)."""
        return await self.read_line(timeout) is None


async def control_counters(path: str) -> dict:
    answer = await ask(path, "stats")
    assert answer["ok"], answer
    return answer["result"]["control"]


async def assert_forwards(harness: Harness) -> None:
    """A frame from pod a still reaches pod b."""
    a, b = harness.topology.pods
    harness.ports.ports["a"].inject(udp_frame(a, b))
    with trio.fail_after(5):
        frame = await harness.ports.ports["b"].receive()
    assert frame == udp_frame(a, b)


async def start(nursery: trio.Nursery, tmp_path, *, switch=RecordingSwitch,
                limits: ControlLimits | None = None) -> tuple[Harness, str]:
    """A running daemon; the path of its own socket, or of a second server with ``limits``."""
    harness = Harness(make_topology(tmp_path), switch_factory=switch)
    context = await harness.start(nursery)
    if limits is None:
        return harness, harness.topology.control.socket
    path = str(tmp_path / "ctl" / "short.sock")
    await nursery.start(serve_control, path, ControlCommands(context), limits)
    return harness, path


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "bad JSON: Expecting property name"),
    (b'{"cmd": "status", "args": {"x": "\xff\xfe"}}', "bad JSON: the request is not UTF-8"),
    (b"[" * 100000, "bad JSON: nested too deeply"),
    (b'{"cmd": "status", "args": {"n": ' + b"9" * 100000 + b"}}", "bad JSON: "),
    (b"[1, 2]", "a request must be a JSON object"),
    (b'"status"', "a request must be a JSON object"),
    (b"null", "a request must be a JSON object"),
    (b'{"cmd": "reboot"}', "unknown command 'reboot'; known: "),
    (b'{"cmd": "' + b"x" * 500000 + b'"}', "unknown command 'xxxxxxxx"),
])
async def test_garbage_gets_an_error_and_the_connection_stays_usable(tmp_path, raw, message):
    async with trio.open_nursery() as nursery:
        harness, path = await start(nursery, tmp_path)
        client = await Client.connect(path)
        answer = await client.ask(raw)
        assert answer is not None and answer["ok"] is False, answer
        assert answer["error"].startswith(message), answer["error"][:200]
        # An error quotes a client's long name only in part.
        assert len(answer["error"]) < 1000
        assert (await client.ask(b'{"cmd": "status"}'))["ok"] is True
        await assert_forwards(harness)
        counters = await control_counters(path)
        assert counters["bad_requests"] == 1
        assert counters["connections"] == 2 and counters["active"] == 2
        await client.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_an_overlong_line_is_refused_counted_and_closed(tmp_path):
    async with trio.open_nursery() as nursery:
        harness, path = await start(nursery, tmp_path)
        client = await Client.connect(path)
        # With the newline in the same write, and without one.
        for raw in (b"x" * (MAX_LINE + 10) + b"\n", b"y" * (MAX_LINE + 70000)):
            client = await Client.connect(path)
            await client.stream.send_all(raw)
            answer = await client.read_line()
            assert answer == {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
            assert await client.closed()
        await assert_forwards(harness)
        assert (await control_counters(path))["bad_requests"] == 2
        nursery.cancel_scope.cancel()


async def test_a_silent_client_is_closed_at_the_timeout_and_others_are_served_meanwhile(tmp_path):
    async with trio.open_nursery() as nursery:
        harness, path = await start(nursery, tmp_path, limits=SHORT)
        silent = await Client.connect(path)
        started = trio.current_time()
        for _ in range(3):
            assert (await ask(path, "status"))["ok"] is True
            await assert_forwards(harness)
        answer = await silent.read_line()
        assert answer == {"ok": False,
                          "error": "no complete request within 0.5 s; closing the connection"}
        assert trio.current_time() - started >= 0.5
        assert await silent.closed()
        assert (await control_counters(path))["timeouts"] == 1
        await silent.stream.aclose()
        with trio.fail_after(5):  # the server lets go of it: only the stats connection is left
            while (await control_counters(path))["active"] > 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_the_timeout_is_per_request_so_trickling_does_not_extend_it(tmp_path):
    async with trio.open_nursery() as nursery:
        harness, path = await start(nursery, tmp_path, limits=SHORT)
        client = await Client.connect(path)
        # An answered request starts the clock again.
        for _ in range(3):
            await trio.sleep(0.3)
            assert (await client.ask(b'{"cmd": "status"}'))["ok"] is True
        # Slowloris: a byte every 0.1 s (blank lines do not count as requests either).
        answer = None
        with trio.fail_after(5):
            for byte in b'\n\n{"cmd": "status"}\n':
                try:
                    await client.stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    break
                await trio.sleep(0.1)
            answer = await client.read_line()
        assert answer is not None and answer["ok"] is False
        assert answer["error"].startswith("no complete request within 0.5 s")
        assert await client.closed()
        await assert_forwards(harness)
        assert (await control_counters(path))["timeouts"] == 1
        nursery.cancel_scope.cancel()


async def test_a_hundred_clients_at_once_are_all_answered(tmp_path):
    async with trio.open_nursery() as nursery:
        harness, path = await start(nursery, tmp_path)
        answers: list[dict] = []

        async def one_client() -> None:
            answers.append(await ask(path, "status"))

        async with trio.open_nursery() as clients:
            for _ in range(100):
                clients.start_soon(one_client)
            await assert_forwards(harness)
        assert len(answers) == 100 and all(answer["ok"] for answer in answers)
        counters = await control_counters(path)
        assert counters["connections"] == 101 and counters["refused"] == 0
        nursery.cancel_scope.cancel()


async def test_connections_beyond_the_limit_get_a_clear_error(tmp_path):
    limits = ControlLimits(idle_timeout=30.0, send_timeout=0.5, max_connections=5)
    async with trio.open_nursery() as nursery:
        harness, path = await start(nursery, tmp_path, limits=limits)
        held = [await Client.connect(path) for _ in range(5)]
        for client in held:  # each is being served (the server has counted it active)
            assert (await client.ask(b'{"cmd": "status"}'))["ok"] is True
        extra = await Client.connect(path)
        assert await extra.read_line() == {
            "ok": False, "error": "too many control connections (at most 5 at once); try again"}
        assert await extra.closed()
        await assert_forwards(harness)
        await held.pop().stream.aclose()
        with trio.fail_after(5):
            while True:  # until the server has noticed the close
                answer = await Client(await trio.open_unix_socket(path)).ask(b'{"cmd": "stats"}')
                if answer["ok"]:
                    break
                await trio.sleep(0.01)
        assert answer["result"]["control"]["refused"] >= 1
        for client in held:
            await client.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_client_that_leaves_mid_answer_costs_nothing(tmp_path):
    async with trio.open_nursery() as nursery:
        harness, path = await start(nursery, tmp_path, switch=BigFdbSwitch)
        for _ in range(3):
            client = await Client.connect(path)
            await client.stream.send_all(b'{"cmd": "fdb"}\n')
            assert await client.stream.receive_some(1000)  # the answer has begun
            await client.stream.aclose()
            await assert_forwards(harness)
        whole = await ask(path, "fdb")
        assert whole["ok"] is True and len(whole["result"]) == 40000
        with trio.fail_after(5):
            while (await control_counters(path))["aborted"] < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_client_that_never_reads_is_dropped_at_the_send_timeout(tmp_path):
    async with trio.open_nursery() as nursery:
        harness, path = await start(nursery, tmp_path, switch=BigFdbSwitch, limits=SHORT)
        deaf = await Client.connect(path)
        await deaf.stream.send_all(b'{"cmd": "fdb"}\n' * 3)
        # While the server waits on the deaf client's socket, everything else goes on.
        assert (await ask(path, "status"))["ok"] is True
        await assert_forwards(harness)
        with trio.fail_after(5):
            while (await control_counters(path))["timeouts"] < 1:
                await trio.sleep(0.05)
        counters = await control_counters(path)
        assert counters["active"] == 1  # only the stats connection: the deaf one is gone
        # What the client finds when it finally reads: part of an answer, then the end.
        with trio.fail_after(5):
            while await deaf.stream.receive_some(1 << 20):
                pass
        await deaf.stream.aclose()
        nursery.cancel_scope.cancel()
