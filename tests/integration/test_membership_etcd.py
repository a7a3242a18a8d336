"""Node membership against a real etcd: records appear, dead nodes go, a lost store changes nothing
until it returns, and concurrent ``pod_cidr = "auto"`` allocations never collide.

Leases are 3 s here (etcd's minimum with its default heartbeat and election timeout), so that
"withdrawn within the lease TTL" is quick to observe. Each test uses its own cluster name, so tests
sharing the module's etcd cannot see each other's nodes.
"""
from __future__ import annotations

import random
import secrets
import signal
import sys
from contextlib import aclosing, asynccontextmanager
from ipaddress import IPv4Network
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

from etcd_support import (  # noqa: E402
    CuttableProxy,
    EtcdServer,
    running_etcd,
    node_record,
    spawn_member,
)

from vswitch.membership.etcd import EtcdClient, WatchCompacted  # noqa: E402
from vswitch.membership.members import (  # noqa: E402
    ChangeKind,
    Membership,
    MembershipChange,
    nodes_prefix,
)
from vswitch.membership.subnets import PoolExhausted, allocate_pod_cidr  # noqa: E402

pytestmark = pytest.mark.integration

TTL = 3
# etcd checks lease expiry about twice a second; a watcher hears of it a moment later.
EXPIRY_SLACK = 1.5


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    yield from running_etcd()


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """An etcd for one test, which may stop and restart it."""
    yield from running_etcd()


@pytest.fixture
def cluster() -> str:
    return f"test-{secrets.token_hex(4)}"


@asynccontextmanager
async def member(
    endpoint: str, cluster: str, name: str, pod_cidr: str
) -> AsyncIterator[tuple[Membership, trio.MemoryReceiveChannel[MembershipChange]]]:
    """A node running :class:`Membership` in this process until the block ends (clean shutdown)."""
    send, receive = trio.open_memory_channel[MembershipChange](100)
    async with EtcdClient([endpoint], timeout=1.0) as client, trio.open_nursery() as nursery:
        membership = Membership(client, cluster, node_record(name, pod_cidr), send,
                                lease_ttl=TTL, rng=random.Random(name),
                                backoff_initial=0.1, backoff_cap=0.5)
        await nursery.start(membership.run)
        yield membership, receive
        nursery.cancel_scope.cancel()


async def next_change(changes: trio.MemoryReceiveChannel[MembershipChange],
                      within: float) -> MembershipChange:
    with trio.fail_after(within):
        return await changes.receive()


def kinds_and_names(changes: list[MembershipChange]) -> set[tuple[ChangeKind, str]]:
    return {(change.kind, change.record.name) for change in changes}


async def test_a_record_reaches_other_nodes_within_one_second(etcd, cluster):
    async with member(etcd.endpoint, cluster, "alpha", "10.1.1.0/24") as (alpha, alpha_changes):
        async with member(etcd.endpoint, cluster, "bravo", "10.1.2.0/24") as (bravo, _):
            joined_at = trio.current_time()
            change = await next_change(alpha_changes, within=1.0)
            assert trio.current_time() - joined_at < 1.0
            assert change == MembershipChange(ChangeKind.JOINED,
                                              node_record("bravo", "10.1.2.0/24"))
            # bravo learnt of alpha from its first listing, before it reported started.
            assert bravo.view == {"alpha": node_record("alpha", "10.1.1.0/24")}
            assert alpha.view == {"bravo": node_record("bravo", "10.1.2.0/24")}
            assert 0 < await alpha.lease_remaining("bravo") <= TTL
            assert 0 < await alpha.lease_remaining("alpha") <= TTL
            assert await alpha.lease_remaining("nobody") is None


async def test_clean_shutdown_revokes_the_lease_so_peers_see_the_node_leave_at_once(etcd, cluster):
    async with member(etcd.endpoint, cluster, "alpha", "10.1.1.0/24") as (_, alpha_changes):
        async with member(etcd.endpoint, cluster, "bravo", "10.1.2.0/24") as (bravo, _):
            assert (await next_change(alpha_changes, 1.0)).kind is ChangeKind.JOINED
            bravo_lease = bravo.lease
        left_at = trio.current_time()
        change = await next_change(alpha_changes, within=1.0)
        assert change.kind is ChangeKind.LEFT and change.record.name == "bravo"
        assert trio.current_time() - left_at < 1.0
        assert bravo.lease == 0
        async with EtcdClient([etcd.endpoint]) as client:
            assert await client.keep_alive(bravo_lease) == 0


async def test_a_killed_node_is_withdrawn_within_its_lease_ttl(etcd, cluster):
    async with member(etcd.endpoint, cluster, "alpha", "10.1.1.0/24") as (alpha, alpha_changes):
        bravo = await trio.to_thread.run_sync(
            spawn_member, etcd.endpoint, cluster, "bravo", "10.1.2.0/24", TTL)
        try:
            assert (await next_change(alpha_changes, 1.0)).kind is ChangeKind.JOINED
            bravo.send_signal(signal.SIGKILL)
            killed_at = trio.current_time()
        finally:
            bravo.kill()
            await trio.to_thread.run_sync(bravo.wait)
        change = await next_change(alpha_changes, within=TTL + EXPIRY_SLACK)
        assert change == MembershipChange(ChangeKind.LEFT, node_record("bravo", "10.1.2.0/24"))
        # Not withdrawn early either: the lease was refreshed at most a third of a TTL ago.
        assert trio.current_time() - killed_at > TTL / 2
        assert alpha.view == {}


async def test_a_lost_lease_is_replaced_and_the_record_written_again(etcd, cluster):
    async with member(etcd.endpoint, cluster, "alpha", "10.1.1.0/24") as (_, alpha_changes):
        async with member(etcd.endpoint, cluster, "bravo", "10.1.2.0/24") as (bravo, _):
            assert (await next_change(alpha_changes, 1.0)).kind is ChangeKind.JOINED
            old_lease = bravo.lease
            async with EtcdClient([etcd.endpoint]) as client:
                await client.revoke_lease(old_lease)
            assert (await next_change(alpha_changes, 1.0)).kind is ChangeKind.LEFT
            # bravo notices at its next refresh (a third of the TTL) and registers again.
            change = await next_change(alpha_changes, within=TTL / 3 + 1.0)
            assert change == MembershipChange(ChangeKind.JOINED,
                                              node_record("bravo", "10.1.2.0/24"))
            assert bravo.lease not in (0, old_lease)


async def test_etcd_down_withdraws_nothing_and_the_view_catches_up_when_it_returns(own_etcd,
                                                                                  cluster):
    store = own_etcd
    async with member(store.endpoint, cluster, "alpha", "10.1.1.0/24") as (alpha, alpha_changes):
        bravo = await trio.to_thread.run_sync(
            spawn_member, store.endpoint, cluster, "bravo", "10.1.2.0/24", TTL)
        try:
            assert (await next_change(alpha_changes, 1.0)).kind is ChangeKind.JOINED
            await trio.to_thread.run_sync(store.stop)
            # bravo dies while the store is away: nobody can know yet.
            bravo.send_signal(signal.SIGKILL)
        finally:
            bravo.kill()
            await trio.to_thread.run_sync(bravo.wait)

        # charlie starts while the store is away: it comes up (alone) and keeps trying.
        async with member(store.endpoint, cluster, "charlie", "10.1.3.0/24") as (charlie,
                                                                                 charlie_changes):
            assert charlie.statistics().connected is False

            # Fail static: longer than a lease TTL without the store, and alpha withdraws nothing.
            with trio.move_on_after(TTL + EXPIRY_SLACK):
                change = await alpha_changes.receive()
                pytest.fail(f"alpha changed its view while etcd was down: {change}")
            assert alpha.view == {"bravo": node_record("bravo", "10.1.2.0/24")}
            assert alpha.statistics().connected is False
            assert alpha.statistics().failures > 0

            await trio.to_thread.run_sync(store.start)
            # etcd restores leases with a fresh TTL when it restarts, so bravo's record goes one
            # TTL after the restart; charlie joins as soon as its backoff lets it retry.
            seen = []
            with trio.fail_after(TTL + 3.0):
                while len(seen) < 2:
                    seen.append(await alpha_changes.receive())
            assert kinds_and_names(seen) == {(ChangeKind.LEFT, "bravo"),
                                             (ChangeKind.JOINED, "charlie")}
            assert alpha.view == {"charlie": node_record("charlie", "10.1.3.0/24")}
            assert alpha.statistics().connected is True
            # charlie's first listing may still hold bravo's restored lease: it sees bravo leave
            # within the same TTL.
            with trio.fail_after(TTL + 3.0):
                while charlie.view != {"alpha": node_record("alpha", "10.1.1.0/24")}:
                    await charlie_changes.receive()


async def test_a_partitioned_node_keeps_its_view_then_catches_up_and_registers_again(etcd,
                                                                                      cluster):
    """Cut from the store (which stays up for the others) for longer than its lease: alpha
    withdraws nothing meanwhile; when it is back it emits exactly what changed while it was away,
    although the revisions it missed were compacted, and writes its record under a new lease."""
    async with trio.open_nursery() as relays:
        proxy = CuttableProxy(etcd.client_port)
        await relays.start(proxy.run)
        async with (
            member(proxy.endpoint, cluster, "alpha", "10.1.1.0/24") as (alpha, alpha_changes),
            member(etcd.endpoint, cluster, "charlie", "10.1.3.0/24") as (charlie, _),
        ):
            async with member(etcd.endpoint, cluster, "bravo", "10.1.2.0/24"):
                seen = [await next_change(alpha_changes, 1.0) for _ in range(2)]
                assert kinds_and_names(seen) == {(ChangeKind.JOINED, "bravo"),
                                                 (ChangeKind.JOINED, "charlie")}
                alpha_lease = alpha.lease
                proxy.cut()
            # While alpha is cut off: bravo has left, charlie moves, delta joins.
            moved = node_record("charlie", "10.1.3.0/24", address="192.0.2.33")
            async with EtcdClient([etcd.endpoint]) as client:
                await client.put(nodes_prefix(cluster) + "charlie", moved.to_json(),
                                 lease=charlie.lease)
            async with member(etcd.endpoint, cluster, "delta", "10.1.4.0/24") as (_, delta_changes):
                with trio.move_on_after(TTL + EXPIRY_SLACK):
                    change = await alpha_changes.receive()
                    pytest.fail(f"alpha changed its view while cut from etcd: {change}")
                assert set(alpha.view) == {"bravo", "charlie"}
                # The others saw alpha's lease expire.
                delta_seen = []
                while (ChangeKind.LEFT, "alpha") not in kinds_and_names(delta_seen):
                    delta_seen.append(await next_change(delta_changes, 1.0))
                async with EtcdClient([etcd.endpoint]) as client:
                    await client.compact((await client.list_prefix("/")).revision)

                proxy.restore()
                with trio.fail_after(3.0):
                    caught_up = [await alpha_changes.receive() for _ in range(3)]
                assert caught_up == [
                    MembershipChange(ChangeKind.LEFT, node_record("bravo", "10.1.2.0/24")),
                    MembershipChange(ChangeKind.CHANGED, moved),
                    MembershipChange(ChangeKind.JOINED, node_record("delta", "10.1.4.0/24")),
                ]
                assert alpha.lease not in (0, alpha_lease)
                rejoined = await next_change(delta_changes, 1.0)
                assert rejoined == MembershipChange(ChangeKind.JOINED,
                                                    node_record("alpha", "10.1.1.0/24"))
        relays.cancel_scope.cancel()


async def test_a_watch_from_a_compacted_revision_is_refused(etcd, cluster):
    """The signal membership resynchronises on: the watch raises instead of skipping changes."""
    async with EtcdClient([etcd.endpoint]) as client:
        prefix = nodes_prefix(cluster)
        first = await client.put(prefix + "x", b"1")
        await client.put(prefix + "x", b"2")
        await client.compact(first + 1)
        with pytest.raises(WatchCompacted) as refused:
            async for _ in client.watch_prefix(prefix, first):
                pass
        assert refused.value.compact_revision == first + 1
        async with aclosing(client.watch_prefix(prefix, first + 1)) as batches:
            batch = await anext(batches)
        assert [(e.deleted, e.kv.value) for e in batch] == [(False, b"2")]
        await client.delete(prefix + "x")


async def test_concurrent_auto_allocations_get_different_subnets(etcd, cluster):
    pool = IPv4Network("10.244.0.0/22")  # four /24s for four nodes: they must contend
    names = ["node-a", "node-b", "node-c", "node-d"]
    async with EtcdClient([etcd.endpoint]) as client:
        leases = {name: (await client.grant_lease(TTL))[0] for name in names}
        got: dict[str, IPv4Network] = {}

        async def allocate(name: str) -> None:
            got[name] = await allocate_pod_cidr(client, cluster, name, pool, 24, leases[name])

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(allocate, name)
        assert sorted(got.values()) == list(pool.subnets(new_prefix=24))

        latecomer_lease, _ = await client.grant_lease(TTL)
        with pytest.raises(PoolExhausted):
            await allocate_pod_cidr(client, cluster, "node-e", pool, 24, latecomer_lease)

        # node-b restarts (a new lease) while its old one still holds the subnet: it gets the
        # same subnet back, now under the new lease.
        new_lease, _ = await client.grant_lease(TTL)
        again = await allocate_pod_cidr(client, cluster, "node-b", pool, 24, new_lease)
        assert again == got["node-b"]
        await client.revoke_lease(leases["node-b"])
        assert await allocate_pod_cidr(client, cluster, "node-b", pool, 24, new_lease) == again
        for lease in [*leases.values(), latecomer_lease, new_lease]:
            await client.revoke_lease(lease)
