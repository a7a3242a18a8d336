"""Node membership through etcd: publish our node's record, follow everyone else's.

Theory of operation
-------------------
Each node writes one record, ``/vswitch/<cluster>/nodes/<name>`` (JSON: name, pod CIDR, underlay
address, VTEP MAC, ready endpoints), attached to a lease of ``lease_ttl`` seconds that it refreshes
every third of the TTL. A node that dies stops refreshing, etcd deletes its record when the lease
expires, and every watcher sees a delete. A node that stops cleanly revokes its lease, so peers see
it leave at once.

The view of the other nodes is a ``name -> NodeRecord`` map, kept in step with the store by
*list, then watch from the listing's revision + 1*: the listing and the watch together cover every
revision, so no change falls between them. Each difference to the view goes to the caller as a
:class:`MembershipChange` (joined, changed, left), through a trio memory channel. This module knows
nothing about routes: the caller turns changes into them.

A *session* is one connection's worth of this: make sure our record is in the store (under a live
lease), list, emit the difference from the last view, then refresh the lease, follow the watch and
publish our record again whenever it changes (:meth:`Membership.update`: our pods' readiness,
labels or set) side by side until one fails. Sessions repeat for as long as :meth:`Membership.run` runs:

- **Fail static.** When etcd cannot be reached, the view stays as it was and nothing is withdrawn:
  a node that loses the store keeps forwarding to the peers it knew. Retries back off
  exponentially (capped, jittered from the caller's random source).
- **Catching up.** The next session lists again and emits only the difference from the last view:
  nodes that left meanwhile are withdrawn, new ones join, changed ones change. If our lease expired
  meanwhile, a new one is granted and our record (and our claims, e.g. our pod subnet) written
  again under it.
- **Compaction.** A watch whose start revision was compacted away is resynchronised the same way,
  at once.
- **Clean shutdown.** On cancellation the lease is revoked, shielded and bounded by a short
  timeout, so a store that is gone cannot hold up the daemon's exit.

Our own record is never part of the view or of the changes.
"""
from __future__ import annotations

import enum
import logging
import random
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

import trio

from .etcd import (
    EtcdClient,
    StoreError,
    StoreUnavailable,
    WatchCompacted,
    WatchEvent,
)
from .records import NodeRecord

log = logging.getLogger(__name__)

REVOKE_TIMEOUT = 1.0  # seconds a clean shutdown waits for etcd to revoke our lease


def lease_refresh_interval(ttl: int) -> float:
    """How often to refresh a lease of ``ttl`` seconds: a third of it, so two refreshes may fail."""
    return max(0.2, ttl / 3)


def nodes_prefix(cluster: str) -> str:
    return f"/vswitch/{cluster}/nodes/"


class ChangeKind(enum.Enum):
    JOINED = "joined"
    CHANGED = "changed"
    LEFT = "left"


@dataclass(frozen=True)
class MembershipChange:
    """One difference in the view. For ``LEFT``, ``record`` is the last one known."""

    kind: ChangeKind
    record: NodeRecord


def diff_views(
    old: Mapping[str, NodeRecord], new: Mapping[str, NodeRecord]
) -> list[MembershipChange]:
    """The changes that turn view ``old`` into ``new``, in a stable order (by node name)."""
    changes = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before is None:
            changes.append(MembershipChange(ChangeKind.JOINED, after))
        elif after is None:
            changes.append(MembershipChange(ChangeKind.LEFT, before))
        elif before != after:
            changes.append(MembershipChange(ChangeKind.CHANGED, after))
    return changes


class Backoff:
    """Exponential backoff with "equal jitter": each delay is drawn from [d/2, d], d doubling
    from ``initial`` up to ``cap``. The random source is passed in, so tests can seed it."""

    def __init__(self, rng: random.Random, *, initial: float = 0.2, cap: float = 10.0) -> None:
        self._rng = rng
        self._initial = initial
        self._cap = cap
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._initial * 2 ** min(self._failures, 30))
        self._failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._failures = 0


# A claim re-attaches a key we own (e.g. our pod subnet) to a new lease; True if it is still ours.
Claim = Callable[[EtcdClient, int], Awaitable[bool]]


@dataclass(frozen=True)
class MembershipStatistics:
    connected: bool
    synced_revision: int
    lease: int
    sessions: int
    failures: int
    last_error: str
    nodes: int


@dataclass
class _State:
    connected: bool = False
    revision: int = 0
    lease: int = 0
    sessions: int = 0
    failures: int = 0
    last_error: str = ""
    view: dict[str, NodeRecord] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)  # node name -> lease of its record


class Membership:
    """Publishes ``record`` and streams changes to the other nodes' records into ``changes``."""

    def __init__(
        self,
        client: EtcdClient,
        cluster: str,
        record: NodeRecord,
        changes: trio.MemorySendChannel[MembershipChange],
        *,
        lease_ttl: int,
        rng: random.Random,
        claims: Sequence[Claim] = (),
        backoff_initial: float = 0.2,
        backoff_cap: float = 10.0,
    ) -> None:
        self._client = client
        self._prefix = nodes_prefix(cluster)
        self._record = record
        self._changes = changes
        self._lease_ttl = lease_ttl
        self._claims = tuple(claims)
        self._backoff = Backoff(rng, initial=backoff_initial, cap=backoff_cap)
        self._state = _State()
        self._record_changed = trio.Event()
        self._task_status: trio.TaskStatus[None] | None = None

    @property
    def view(self) -> Mapping[str, NodeRecord]:
        """The other nodes as last known (kept while the store is unreachable)."""
        return dict(self._state.view)

    @property
    def record(self) -> NodeRecord:
        """Our record as last handed to :meth:`update` (or to the constructor)."""
        return self._record

    def update(self, record: NodeRecord) -> None:
        """Publish ``record`` in place of ours: at once while connected, else when the next
        session registers. Several updates in a row may be written as one (the last)."""
        if record.name != self._record.name:
            raise ValueError(f"a node cannot rename itself ({self._record.name!r} to "
                             f"{record.name!r})")
        if record != self._record:
            self._record = record
            self._record_changed.set()

    @property
    def lease(self) -> int:
        """Our lease (0 before the first registration and after a clean shutdown)."""
        return self._state.lease

    async def lease_remaining(self, name: str) -> int | None:
        """Seconds left on the lease of node ``name``'s record (ours too), asked of the store:
        None if the node is unknown or the store cannot say right now. For operators
        (``vswitchctl nodes``), not for routing decisions."""
        lease = self._state.lease if name == self._record.name else self._state.leases.get(name)
        if not lease:
            return None
        try:
            return await self._client.time_to_live(lease)
        except (StoreUnavailable, StoreError):
            return None

    def statistics(self) -> MembershipStatistics:
        s = self._state
        return MembershipStatistics(
            connected=s.connected, synced_revision=s.revision, lease=s.lease,
            sessions=s.sessions, failures=s.failures, last_error=s.last_error,
            nodes=len(s.view),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run sessions until cancelled; then revoke our lease.

        Reports started after the first attempt, whether it reached the store or not: a node
        must come up (with static peers, or alone) even when etcd is down, and catches up later.
        After a successful first attempt, :attr:`view` already holds the first listing when
        ``nursery.start`` returns, and its changes follow through the channel (sent after
        starting, so that a caller who reads the channel only once started never deadlocks).
        """
        self._task_status = task_status
        try:
            while True:
                try:
                    await self._session()
                except WatchCompacted as exc:
                    log.info("membership: %s; listing again", exc)
                except (StoreUnavailable, StoreError) as exc:
                    self._note_failure(exc)
                    self._report_started()
                    await trio.sleep(self._backoff.next_delay())
                finally:
                    self._state.connected = False
        finally:
            await self._revoke()

    def _report_started(self) -> None:
        if self._task_status is not None:
            self._task_status.started()
            self._task_status = None

    def _note_failure(self, exc: StoreUnavailable | StoreError) -> None:
        state = self._state
        if isinstance(exc, StoreError):
            # etcd refused a request: a misconfiguration (auth, quota) worth an error each time;
            # the view is kept and the session retried all the same.
            log.error("membership: etcd refused a request: %s", exc)
        elif state.connected or state.failures == 0:
            log.warning("membership: etcd unreachable, keeping the last view of %d nodes: %s",
                        len(state.view), exc)
        state.failures += 1
        state.last_error = str(exc)

    async def _session(self) -> None:
        await self._register()
        listing = await self._client.list_prefix(self._prefix)
        view: dict[str, NodeRecord] = {}
        self._state.leases = {}
        for kv in listing.kvs:
            record = self._parse(kv.key, kv.value)
            if record is not None:
                view[record.name] = record
                self._state.leases[record.name] = kv.lease
        changes = diff_views(self._state.view, view)
        self._state.view = view
        self._state.revision = listing.revision
        self._state.connected = True
        self._state.sessions += 1
        self._backoff.reset()
        self._report_started()
        await self._emit(changes)
        if self._state.sessions > 1:
            log.info("membership: back in sync at revision %d with %d nodes",
                     listing.revision, len(view))

        failure: BaseException | None = None

        async def guarded(job: Callable[[], Awaitable[None]]) -> None:
            nonlocal failure
            try:
                await job()
            except (StoreUnavailable, StoreError, WatchCompacted) as exc:
                failure = failure or exc
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, self._keep_alive)
            nursery.start_soon(guarded, self._follow)
            nursery.start_soon(guarded, self._publish)
        if failure is not None:
            raise failure

    async def _register(self) -> None:
        """Make sure our record is in the store under a live lease (a new one if it expired).

        The record is written again even under a live lease: it costs one write per session,
        and it repairs a record deleted by hand. Peers see no change, since the value is the same.
        """
        state = self._state
        if not state.lease or await self._client.keep_alive(state.lease) <= 0:
            if state.lease:
                log.warning("membership: lease %x expired; registering again", state.lease)
            state.lease, self._lease_ttl = await self._client.grant_lease(self._lease_ttl)
            for claim in self._claims:
                if not await claim(self._client, state.lease):
                    log.error("membership: a key this node owned was taken by another node")
        await self._client.put(self._prefix + self._record.name, self._record.to_json(),
                               lease=state.lease)

    async def _keep_alive(self) -> None:
        while True:
            await trio.sleep(lease_refresh_interval(self._lease_ttl))
            if await self._client.keep_alive(self._state.lease) <= 0:
                # etcd let the lease go (we were too slow, or someone revoked it): take a new one.
                await self._register()

    async def _publish(self) -> None:
        """Write our record again whenever :meth:`update` changed it."""
        while True:
            await self._record_changed.wait()
            self._record_changed = trio.Event()
            await self._client.put(self._prefix + self._record.name, self._record.to_json(),
                                   lease=self._state.lease)

    async def _follow(self) -> None:
        start = self._state.revision + 1
        async with aclosing(self._client.watch_prefix(self._prefix, start)) as batches:
            async for batch in batches:
                await self._apply(batch)

    async def _apply(self, batch: list[WatchEvent]) -> None:
        view = dict(self._state.view)
        for event in batch:
            record = None if event.deleted else self._parse(event.kv.key, event.kv.value)
            name = event.kv.key[len(self._prefix):]
            if record is None:
                view.pop(name, None)
                self._state.leases.pop(name, None)
            else:
                view[record.name] = record
                self._state.leases[record.name] = event.kv.lease
            self._state.revision = max(self._state.revision, event.kv.mod_revision)
        changes = diff_views(self._state.view, view)
        self._state.view = view
        await self._emit(changes)

    def _parse(self, key: str, value: bytes) -> NodeRecord | None:
        """A peer's record, or None for our own record and for records that cannot be used."""
        name = key[len(self._prefix):]
        if name == self._record.name:
            return None
        try:
            record = NodeRecord.from_json(value)
        except ValueError as exc:
            log.warning("membership: ignoring %s: %s", key, exc)
            return None
        if record.name != name:
            log.warning("membership: ignoring %s: it names node %r", key, record.name)
            return None
        return record

    async def _emit(self, changes: list[MembershipChange]) -> None:
        """Hand changes to the caller; the view already includes them when the caller looks."""
        for change in changes:
            await self._changes.send(change)

    async def _revoke(self) -> None:
        lease = self._state.lease
        if not lease:
            return
        with trio.move_on_after(REVOKE_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._client.revoke_lease(lease)
                self._state.lease = 0
            except (StoreUnavailable, StoreError) as exc:
                log.warning("membership: could not revoke lease %x; peers will drop us after "
                            "its TTL: %s", lease, exc)

