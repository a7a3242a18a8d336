"""The journal of kernel objects a node's daemon may have created, so that a crash leaves a trace.

Theory of operation
-------------------
Before the daemon creates a named network namespace or a TAP in the root namespace, it records
the name here; after it has removed one, it erases the name. Likewise before its uplink joins a
shared underlay (a namespace or bridge other nodes may use too) it records that, and erases it
once it has left. So at any instant the file lists a
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
* How the lock was let go tells a deliberate stop from a death: a daemon that stops unlinks the
  lock file while it still holds the lock, a killed one leaves the file in place. The hot standby
  (``vswitch.runtime.standby``) waits on the lock and takes over only in the second case.

Containers
----------
A pod's containers outlive a daemon that is restarted (``vswitch.runtime.containers``), so the
next one must tell them from a process that merely got the same pid. Each running container has
a record, ``{netns}.{name}.container``: its pid, its start time (field 22 of /proc/PID/stat) and
a digest of how it was started; and an output file, ``{netns}.{name}.log``. The supervisor
writes a record right after the container started and erases it once the container is gone;
removing the pod (``remove_container_files``) removes both files of every container it had.
Records and output files live in the state directory next to the journal, so an empty state
directory still means a clean node. Their names start with the pod's namespace name, which
holds the node's name, and never end in ``.state``.

Shared underlays
----------------
Several nodes on one host may put their uplinks' far sides into one namespace and one bridge. Those
objects belong to no single node: the one that creates them may stop long before the others. Their
story lives in an ``UnderlayRecord`` (``underlay.netns.{name}.state``, or ``underlay.root.state``
for a bridge in the root namespace): which of them a daemon created (and may therefore remove once
nobody uses them) and which gateway addresses a daemon added to a bridge that was already there.
Anything not in the record was there before any daemon and is never removed. Every read and write
of the record, and every creation or removal it describes, happens under ``UnderlayLock``, a
blocking flock on the same name with ``.lock``, so that two daemons starting or stopping at the same
moment take turns. Nodes that share an underlay must therefore share a state directory (the
default one, ``/run/vswitch``, is shared by every node that does not set its own).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

JOURNAL_VERSION = 1


class JournalError(Exception):
    """The journal exists but cannot be read; it names the file so a person can inspect it."""


class NodeBusyError(Exception):
    """Another live process (a running daemon) holds the node's lock."""


class UnderlayBusyError(NodeBusyError):
    """A shared underlay's lock stayed taken for longer than a start or a stop can take."""


@dataclass(frozen=True)
class UnderlayUse:
    """A node's uplink in a shared underlay: the far side's namespace and the TAP there."""

    netns: str | None  # None: the root namespace
    tap: str

    def as_json(self) -> dict[str, Any]:
        return {"netns": self.netns, "tap": self.tap}


@dataclass(frozen=True)
class JournalEntries:
    netns: tuple[str, ...] = ()
    taps: tuple[str, ...] = ()  # names of TAPs created in the root namespace
    underlays: tuple[UnderlayUse, ...] = ()  # shared underlays the node's uplink joined

    def __bool__(self) -> bool:
        return bool(self.netns or self.taps or self.underlays)


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
    underlays = []
    for entry in data.get("underlays", []):
        if not (isinstance(entry, dict) and isinstance(entry.get("tap"), str)
                and isinstance(entry.get("netns"), (str, type(None)))):
            raise JournalError(f"{path}: an underlay entry must have a string tap and a string "
                               "or null netns")
        underlays.append(UnderlayUse(netns=entry["netns"], tap=entry["tap"]))
    return JournalEntries(netns=tuple(netns), taps=tuple(taps), underlays=tuple(underlays))


def other_nodes_entries(state_dir: str, node: str) -> dict[str, JournalEntries]:
    """The journals of the other nodes in ``state_dir``, by node name.

    A journal that cannot be read is left out: it is its own node's problem, reported when that
    node runs or is cleaned.
    """
    found: dict[str, JournalEntries] = {}
    try:
        filenames = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return found
    for filename in filenames:
        stem, extension = os.path.splitext(filename)
        if extension != ".state" or "." in stem or stem == node:
            continue
        try:
            found[stem] = read_journal(state_dir, stem)
        except JournalError:
            continue
    return found


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
        self._underlays = list(entries.underlays)

    def entries(self) -> JournalEntries:
        return JournalEntries(netns=tuple(self._netns), taps=tuple(self._taps),
                              underlays=tuple(self._underlays))

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

    def record_underlay(self, use: UnderlayUse) -> None:
        if use not in self._underlays:
            self._underlays.append(use)
            self._write()

    def erase_underlay(self, use: UnderlayUse) -> None:
        if use in self._underlays:
            self._underlays.remove(use)
            self._write()

    def _write(self) -> None:
        if not self._netns and not self._taps and not self._underlays:
            _remove_file(self.path)
            return
        data: dict[str, Any] = {"version": JOURNAL_VERSION, "node": self.node,
                                "netns": self._netns, "taps": self._taps}
        if self._underlays:
            data["underlays"] = [use.as_json() for use in self._underlays]
        _write_json_atomically(self.path, data)


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_json_atomically(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_file(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Containers


@dataclass(frozen=True)
class ContainerRecord:
    pid: int
    start_time: int  # field 22 of /proc/PID/stat: with the pid, one process for good
    spec: str  # digest of the command, environment and resolv.conf it was started with


CONTAINER_SUFFIXES = (".container", ".log")


def _container_stem(state_dir: str, netns: str, name: str) -> str:
    return os.path.join(state_dir, f"{netns}.{name}")


def container_log_path(state_dir: str, netns: str, name: str) -> str:
    return _container_stem(state_dir, netns, name) + ".log"


def record_container(state_dir: str, netns: str, name: str, record: ContainerRecord) -> None:
    _write_json_atomically(_container_stem(state_dir, netns, name) + ".container", {
        "version": JOURNAL_VERSION, "pid": record.pid, "start_time": record.start_time,
        "spec": record.spec})


def read_container(state_dir: str, netns: str, name: str) -> ContainerRecord | None:
    """The container's record, or None when there is none or it cannot be read (a container
    nobody can vouch for is started again; ``Kernel`` removal still finds its process)."""
    try:
        with open(_container_stem(state_dir, netns, name) + ".container",
                  encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") != JOURNAL_VERSION:
            return None
        return ContainerRecord(int(data["pid"]), int(data["start_time"]), str(data["spec"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def erase_container(state_dir: str, netns: str, name: str) -> None:
    _remove_file(_container_stem(state_dir, netns, name) + ".container")


def remove_container_files(state_dir: str, netns: str) -> None:
    """Remove the records and output files of the containers of the pod in ``netns`` (container
    names have no dots, so another pod's namespace name that merely starts alike never matches)."""
    prefix = f"{netns}."
    try:
        filenames = os.listdir(state_dir)
    except FileNotFoundError:
        return
    for filename in filenames:
        if filename.startswith(prefix) and filename.endswith(CONTAINER_SUFFIXES) and (
                "." not in filename[len(prefix):].rsplit(".", 1)[0]):
            _remove_file(os.path.join(state_dir, filename))


# ---------------------------------------------------------------------------------------------
# Shared underlays


def underlay_file_stem(state_dir: str, netns: str | None) -> str:
    """The path, without extension, of a shared underlay's record and lock.

    Node names are DNS labels, without dots, so these never clash with a node's files.
    """
    name = "underlay.root" if netns is None else f"underlay.netns.{netns}"
    return os.path.join(state_dir, name)


@dataclass
class UnderlayRecord:
    """What the daemons created in one shared underlay; read and written under its lock only.

    ``created_netns``: the namespace is the daemons' (removed once no node's TAP is in it).
    ``bridges``: bridges the daemons created (removed once they have no port).
    ``addresses``: (bridge, "ADDRESS/PREFIX") a daemon added to a bridge it did not create
    (deleted, and the bridge left alone, once it has no port).
    """

    path: str
    netns: str | None
    created_netns: bool = False
    bridges: list[str] = field(default_factory=list)
    addresses: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, state_dir: str, netns: str | None) -> "UnderlayRecord":
        path = underlay_file_stem(state_dir, netns) + ".state"
        record = cls(path=path, netns=netns)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return record
        except (OSError, ValueError) as exc:
            raise JournalError(f"{path}: cannot read the underlay record: {exc}") from exc
        try:
            if data["version"] != JOURNAL_VERSION or data["netns"] != netns:
                raise ValueError(f"not a version {JOURNAL_VERSION} record of this namespace")
            record.created_netns = bool(data["created_netns"])
            record.bridges = [str(name) for name in data["bridges"]]
            record.addresses = [(str(bridge), str(address))
                                for bridge, address in data["addresses"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(f"{path}: not a vswitch underlay record ({exc})") from None
        return record

    def __bool__(self) -> bool:
        return bool(self.created_netns or self.bridges or self.addresses)

    def save(self) -> None:
        """Write the record atomically; remove the file once it records nothing."""
        if not self:
            _remove_file(self.path)
            return
        _write_json_atomically(self.path, {
            "version": JOURNAL_VERSION, "netns": self.netns, "created_netns": self.created_netns,
            "bridges": self.bridges, "addresses": [list(pair) for pair in self.addresses]})


# ---------------------------------------------------------------------------------------------
# Locks


class _FileLock:
    """An exclusive flock on a file that its holder unlinks on release.

    Unlinking keeps the state directory empty when nothing runs; the price is that a waiter may
    lock an inode that was just unlinked, so after locking it checks that the path still names
    that inode, and starts over if not.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def _try_lock(self) -> tuple[int | None, str]:
        """The locked fd, or None and the holder's pid (as far as it is known)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None, holder
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd, ""
            os.close(fd)

    def _hold(self, fd: int) -> None:
        # The pid is only for messages; the lock itself is what counts.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Unlink while still holding the lock, so that nobody can lock the old inode after us and
        # believe they hold it.
        _remove_file(self.path)
        os.close(fd)

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class NodeLock(_FileLock):
    """An exclusive flock on ``{state_dir}/{node}.lock`` held for as long as the object is open;
    taking it fails at once while another process holds it."""

    def __init__(self, state_dir: str, node: str) -> None:
        super().__init__(os.path.join(state_dir, f"{node}.lock"))

    def acquire(self) -> None:
        ensure_state_dir(os.path.dirname(self.path) or ".")
        fd, holder = self._try_lock()
        if fd is None:
            raise NodeBusyError(f"node is in use{f' by pid {holder}' if holder else ''} "
                                f"(lock {self.path})")
        self._hold(fd)

    def __enter__(self) -> "NodeLock":
        self.acquire()
        return self

    def holder(self) -> int | None:
        """The pid of the process that holds the lock now, or None when nobody does (it is not
        taken: only looked at)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                text = _read_holder(fd)
                return int(text) if text.isdigit() else None
            return None
        finally:
            os.close(fd)

    def wait_for_holder(self) -> bool:
        """Block until the holder of the lock lets it go; whether it died holding it.

        A holder that stops deliberately unlinks the file before it closes it (``release``), so
        a waiter that then gets the lock finds the path gone or naming another inode: False, and
        the lock is not kept. A holder that died (SIGKILL, a crash in native code, the OOM
        killer) leaves the file as it was, and the kernel frees the lock with its last fd: True,
        and this object now holds the lock on that file. No file at all means nobody held it:
        False. A signal's default action ends the wait, as it ends the process.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            died_holding = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            died_holding = False
        except BaseException:
            os.close(fd)
            raise
        if not died_holding:
            os.close(fd)
            return False
        self._hold(fd)
        return True



UNDERLAY_LOCK_TIMEOUT = 30.0  # far longer than any start or stop holds it
UNDERLAY_LOCK_POLL = 0.01


class UnderlayLock(_FileLock):
    """The flock that serialises the daemons sharing one underlay; taking it waits its turn."""

    def __init__(self, state_dir: str, netns: str | None,
                 timeout: float = UNDERLAY_LOCK_TIMEOUT) -> None:
        super().__init__(underlay_file_stem(state_dir, netns) + ".lock")
        self.state_dir = state_dir
        self.timeout = timeout

    def acquire(self) -> None:
        ensure_state_dir(self.state_dir)
        deadline = time.monotonic() + self.timeout
        while True:
            fd, holder = self._try_lock()
            if fd is not None:
                self._hold(fd)
                return
            if time.monotonic() >= deadline:
                raise UnderlayBusyError(
                    f"the shared underlay lock {self.path} is still held"
                    f"{f' by pid {holder}' if holder else ''} after {self.timeout:.0f} s")
            time.sleep(UNDERLAY_LOCK_POLL)

    def __enter__(self) -> "UnderlayLock":
        self.acquire()
        return self


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
