"""Reading a TCP stream to its end, for the programs here that send or sink bulk data.

Not a program: the others import it as a sibling (a script's own directory is first on its
``sys.path``), since they run inside pods with nothing but the standard library.
"""
import hashlib


def digest_to_end(conn):
    """Read until the peer shuts down its side: (bytes received, their SHA-256 in hex)."""
    digest, count = hashlib.sha256(), 0
    while True:
        chunk = conn.recv(1 << 16)
        if not chunk:
            return count, digest.hexdigest()
        digest.update(chunk)
        count += len(chunk)


def read_to_end(conn, chunk_size=4096):
    """Everything the peer sends until it shuts down its side."""
    received = b""
    while True:
        chunk = conn.recv(chunk_size)
        if not chunk:
            return received
        received += chunk
