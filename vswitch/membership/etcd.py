"""A small client for etcd's v3 JSON gateway (etcd 3.4), for the trio shell.

Why the gateway and not a gRPC client: etcd serves the same v3 API as JSON over HTTP
(``/v3/kv/range``, ``/v3/lease/grant``, ``/v3/watch`` ...), and httpx's ``AsyncClient`` runs on
trio (through anyio), so the membership code needs no gRPC stack, no asyncio bridge and no thread.
Only the handful of calls membership uses are wrapped here, each one HTTP POST of a JSON body.

Conventions of the gateway that this module hides from its callers:

- keys and values are base64 in JSON; here keys are ``str`` (UTF-8) and values ``bytes``;
- 64-bit integers (revisions, lease IDs, TTLs) travel as JSON strings, and fields whose value is
  zero are left out (a watch event of type PUT has no ``type``, a lease that no longer exists
  answers a keepalive without ``TTL``);
- a streaming call (``/v3/watch``) answers one JSON object per line, each wrapped in
  ``{"result": ...}`` (or ``{"error": ...}``).

Errors are split by what the caller should do about them: :class:`StoreUnavailable` (no endpoint
answered, a connection broke, etcd has no leader: retry later, keep the last known state),
:class:`WatchCompacted` (the revision asked for is gone: list again), and :class:`StoreError`
(etcd refused the request: a bug or a misconfiguration, which retrying fixes only once someone
has fixed the cause).

Several endpoints may be given; a request goes to the endpoint that answered last and moves on to
the next one when it cannot be reached.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Sequence

# gRPC status codes that mean "try again later" rather than "your request is wrong": CANCELLED
# (etcd is shutting down), DEADLINE_EXCEEDED, ABORTED, UNAVAILABLE (e.g. no leader).
_RETRYABLE_CODES = {1, 4, 10, 14}


class StoreUnavailable(Exception):
    """No etcd endpoint could be reached or the cluster cannot serve requests right now."""


class StoreError(Exception):
    """etcd answered with an error that retrying will not fix."""


class WatchCompacted(Exception):
    """The watch's start revision has been compacted away; the caller must list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Listing:
    """The keys under a prefix, and the store revision they were read at."""

    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``deleted`` False for a put (create or update), True for a delete or expiry."""

    deleted: bool
    kv: KeyValue


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _range_end_b64(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's convention)."""
    raw = prefix.encode().rstrip(b"\xff")
    return _b64(raw[:-1] + bytes([raw[-1] + 1])) if raw else _b64(b"\0")


def _key_value(data: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(data.get("key", "")).decode(),
        value=base64.b64decode(data.get("value", "")),
        create_revision=int(data.get("create_revision", 0)),
        mod_revision=int(data.get("mod_revision", 0)),
        lease=int(data.get("lease", 0)),
    )


def _raise_for_error(body: dict[str, Any], what: str, status: int = 200) -> None:
    """Raise what an error answer means. Unary calls answer ``{"error", "code", "message"}``
    with an HTTP error status; a stream answers ``{"error": {"grpc_code", "http_code", ...}}``."""
    error = body.get("error")
    if error is None and status == 200:
        return
    if isinstance(error, dict):
        code = int(error.get("grpc_code", 0))
        status = int(error.get("http_code", status))
        message = error.get("message", "")
    else:
        code = int(body.get("code", 0))
        message = body.get("message") or error or f"HTTP {status}"
    if code in _RETRYABLE_CODES or status >= 500:
        raise StoreUnavailable(f"{what}: {message}")
    raise StoreError(f"{what}: {message}")


class EtcdClient:
    """The v3 calls membership needs, over HTTP. Use as ``async with EtcdClient([...]) as c``."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = tuple(url.rstrip("/") for url in endpoints)
        self._current = 0
        # Imported here: httpx takes a fifth of the daemon's start-up, and only a node with an
        # etcd store needs it (a restart's outage is the start-up).
        import httpx

        self._httpx = httpx
        self._http = httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the endpoint that worked last, then to the others in turn."""
        failures = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            url = self.endpoints[index] + path
            try:
                response = await self._http.post(url, json=body)
                answer = response.json()
                _raise_for_error(answer, path, response.status_code)
            except (self._httpx.TransportError, json.JSONDecodeError, StoreUnavailable) as exc:
                failures.append(f"{url}: {exc!r}")
                continue
            self._current = index
            return answer
        raise StoreUnavailable("; ".join(failures))

    # -- keys ----------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the store revision of the write."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = await self._post("/v3/kv/put", body)
        return int(answer["header"]["revision"])

    async def list_prefix(self, prefix: str) -> Listing:
        """Every key under ``prefix``, read at one revision (returned with them)."""
        answer = await self._post(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": _range_end_b64(prefix)}
        )
        kvs = tuple(_key_value(kv) for kv in answer.get("kvs", ()))
        return Listing(revision=int(answer["header"]["revision"]), kvs=kvs)

    async def delete(self, key: str) -> None:
        await self._post("/v3/kv/deleterange", {"key": _b64(key)})

    async def compact(self, revision: int) -> None:
        await self._post("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    async def put_if_absent(self, key: str, value: bytes, *, lease: int = 0) -> bool:
        """Create ``key`` in a transaction that fails if it exists. True if we created it."""
        return await self._put_if(key, value, lease, {"target": "CREATE", "create_revision": "0"})

    async def put_if_value(
        self, key: str, expected: bytes, value: bytes, *, lease: int = 0
    ) -> bool:
        """Overwrite ``key`` only if it currently holds ``expected``. True if written."""
        return await self._put_if(key, value, lease, {"target": "VALUE", "value": _b64(expected)})

    async def _put_if(self, key: str, value: bytes, lease: int, compare: dict[str, str]) -> bool:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = await self._post("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "result": "EQUAL", **compare}],
            "success": [{"request_put": put}],
        })
        return bool(answer.get("succeeded", False))

    # -- leases --------------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> tuple[int, int]:
        """A new lease; returns (lease ID, TTL granted: etcd may raise a TTL below its minimum)."""
        answer = await self._post("/v3/lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"]), int(answer.get("TTL", ttl))

    async def keep_alive(self, lease: int) -> int:
        """Refresh ``lease``; returns its remaining TTL in seconds, 0 if it no longer exists."""
        answer = await self._post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    async def time_to_live(self, lease: int) -> int:
        """Seconds left on ``lease``; 0 (or less) if it no longer exists."""
        answer = await self._post("/v3/lease/timetolive", {"ID": str(lease)})
        return int(answer.get("TTL", 0))

    async def revoke_lease(self, lease: int) -> None:
        """Revoke ``lease``, deleting every key attached to it; a lease already gone is fine."""
        try:
            await self._post("/v3/lease/revoke", {"ID": str(lease)})
        except StoreError as exc:
            if "lease not found" not in str(exc):
                raise

    # -- watch ---------------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """Watch every key under ``prefix`` from ``start_revision`` on: batches of events.

        An async generator: use it in ``contextlib.aclosing`` so the stream closes with it. It
        raises :class:`WatchCompacted` if ``start_revision`` is gone and
        :class:`StoreUnavailable` when the stream breaks or ends; it never ends quietly, since a
        watch that stops is a view that silently goes stale.
        """
        url = self.endpoints[self._current] + "/v3/watch"
        body = {"create_request": {
            "key": _b64(prefix),
            "range_end": _range_end_b64(prefix),
            "start_revision": str(start_revision),
        }}
        # No read timeout: a quiet prefix sends nothing for as long as nothing changes. A dead
        # server is noticed by the lease keepalive that runs beside every watch.
        timeout = self._httpx.Timeout(self._http.timeout.connect or 2.0, read=None)
        try:
            async with self._http.stream("POST", url, json=body, timeout=timeout) as response:
                if response.status_code != 200:
                    raise StoreUnavailable(f"{url}: HTTP {response.status_code}")
                async for line in response.aiter_lines():
                    if line.strip():
                        events = _watch_events(json.loads(line))
                        if events:
                            yield events
        except self._httpx.TransportError as exc:
            raise StoreUnavailable(f"{url}: watch stream broke: {exc!r}") from exc
        except json.JSONDecodeError as exc:
            raise StoreUnavailable(f"{url}: watch stream garbled: {exc}") from exc
        raise StoreUnavailable(f"{url}: watch stream ended")


def _watch_events(message: dict[str, Any]) -> list[WatchEvent]:
    """The events of one message of a watch stream; raises if the watch was cancelled."""
    _raise_for_error(message, "/v3/watch")
    result = message.get("result", {})
    compacted = int(result.get("compact_revision", 0))
    if compacted:
        raise WatchCompacted(compacted)
    if result.get("canceled"):
        raise StoreUnavailable(f"watch canceled: {result.get('cancel_reason', '')}")
    return [
        WatchEvent(deleted=event.get("type") == "DELETE", kv=_key_value(event["kv"]))
        for event in result.get("events", ())
    ]

