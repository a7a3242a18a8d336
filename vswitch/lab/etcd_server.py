"""One etcd member on loopback, started the way a user starts a one-member cluster.

The lab (``vswitch.lab.cluster``) and the tests use it: Debian's ``etcd`` (package
``etcd-server``) with a data directory of its own and a unique member name, healthy before
``start`` returns. ``stop`` and ``start`` may be called in between to take the store away and
bring it back with its data (same ports, same directory), as when etcd restarts; ``close`` stops
it and removes the directory unless it was given by the caller.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


class EtcdError(RuntimeError):
    pass


def etcd_problem() -> str | None:
    """Why no etcd can be run here, or None if it can."""
    if not os.access(ETCD, os.X_OK):
        return f"{ETCD} not found (install Debian's etcd-server package)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EtcdServer:
    """One etcd member on 127.0.0.1; always :meth:`close` it."""

    def __init__(self, client_port: int | None = None, peer_port: int | None = None,
                 directory: Path | None = None, name: str | None = None) -> None:
        self.name = name or f"vsw-etcd-{secrets.token_hex(4)}"
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self._owns_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self.log_path = self.directory / "etcd.log"
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [ETCD, "--name", self.name, "--data-dir", str(self.directory / "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}",
                "--initial-cluster-token", self.name]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start etcd and wait until it reports itself healthy."""
        if self.running:
            raise EtcdError("etcd is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(self.command(), stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EtcdError(f"etcd exited with status {self._process.returncode}; its log: "
                                f"{self.log_path}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise EtcdError(f"etcd did not become healthy within {timeout:g} s; its log: "
                        f"{self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as answer:
                return b'"true"' in answer.read()
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
