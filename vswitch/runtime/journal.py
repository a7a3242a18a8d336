"""The journal of kernel objects a node's daemon may have created, so that a crash leaves a trace.

Theory of operation
-------------------
Before the daemon creates a named network namespace or a TAP in the root namespace, it records
the name here; after it has removed one, it erases the name. So at any instant the file lists a
superset of what exists, and a run killed at any point (SIGKILL included) is cleaned up by the next
run or by ``vswitchctl clean`` from this file alone. Names derived from the topology are cleaned
too, but the journal is what covers pods that have since been removed from the topology.

Rules:

* Record before create, erase after delete. Never the other way round.
* Every write replaces the file atomically (a temporary file, fsync, rename): a reader sees the
  old list or the new one, never half of either.
* When nothing is left the file is removed, so an empty state directory means a clean node.
* One daemon per node: ``NodeLock`` (an flock on ``{node}.lock``) keeps a second daemon or a
  ``clean`` from removing objects a live daemon is using. The kernel drops the lock when the holder
  dies, however it dies.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass

JOURNAL_VERSION = 1


class JournalError(Exception):
    """The journal exists but cannot be read; it names the file so a person can inspect it."""


class NodeBusyError(Exception):
    """Another live process (a running daemon) holds the node's lock."""


@dataclass(frozen=True)
class JournalEntries:
    netns: tuple[str, ...] = ()
    taps: tuple[str, ...] = ()  # names of TAPs created in the root namespace

    def __bool__(self) -> bool:
        return bool(self.netns or self.taps)


def ensure_state_dir(state_dir: str) -> None:
    """Create the state directory private to root; an existing one is left as it is."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)


def journal_path(state_dir: str, node: str) -> str:
    return os.path.join(state_dir, f"{node}.state")


def read_journal(state_dir: str, node: str) -> JournalEntries:
    """The entries on disk; empty when there is no journal."""
    path = journal_path(state_dir, node)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return JournalEntries()
    except (OSError, ValueError) as exc:
        raise JournalError(f"{path}: cannot read the journal: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != JOURNAL_VERSION:
        raise JournalError(f"{path}: not a version {JOURNAL_VERSION} vswitch journal")
    netns = data.get("netns", [])
    taps = data.get("taps", [])
    if not all(isinstance(n, str) for n in [*netns, *taps]):
        raise JournalError(f"{path}: entries must be strings")
    return JournalEntries(netns=tuple(netns), taps=tuple(taps))


class Journal:
    """The on-disk list of one node's kernel objects, kept in step with an in-memory copy.

    Not thread-safe: the kernel layer calls it from its single netlink worker thread only.
    """

    def __init__(self, state_dir: str, node: str) -> None:
        self.state_dir = state_dir
        self.node = node
        self.path = journal_path(state_dir, node)
        ensure_state_dir(state_dir)
        entries = read_journal(state_dir, node)
        # Lists, not sets, so that cleanup runs in creation order and the file diffs readably.
        self._netns = list(entries.netns)
        self._taps = list(entries.taps)

    def entries(self) -> JournalEntries:
        return JournalEntries(netns=tuple(self._netns), taps=tuple(self._taps))

    def record_netns(self, name: str) -> None:
        if name not in self._netns:
            self._netns.append(name)
            self._write()

    def erase_netns(self, name: str) -> None:
        if name in self._netns:
            self._netns.remove(name)
            self._write()

    def record_tap(self, name: str) -> None:
        if name not in self._taps:
            self._taps.append(name)
            self._write()

    def erase_tap(self, name: str) -> None:
        if name in self._taps:
            self._taps.remove(name)
            self._write()

    def _write(self) -> None:
        if not self._netns and not self._taps:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        data = {"version": JOURNAL_VERSION, "node": self.node, "netns": self._netns,
                "taps": self._taps}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


class NodeLock:
    """An exclusive flock on ``{state_dir}/{node}.lock`` held for as long as the object is open."""

    def __init__(self, state_dir: str, node: str) -> None:
        self.path = os.path.join(state_dir, f"{node}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_state_dir(os.path.dirname(self.path) or ".")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise NodeBusyError(
                        f"node is in use{f' by pid {holder}' if holder else ''} "
                        f"(lock {self.path})"
                    ) from exc
                raise
            # A releasing holder unlinks the file; if we locked that old inode, the lock is
            # worthless, so try again on whatever the path names now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        # The pid is only for messages; the lock itself is what counts.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Unlink while still holding the lock, so that nobody can lock the old inode after us and
        # believe they hold the node.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(fd)

    def __enter__(self) -> "NodeLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
