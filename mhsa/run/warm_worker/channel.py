"""Where the warm worker listens and how client and worker prove who they are to each other.

The socket is a file in a directory only this user can enter (`$XDG_RUNTIME_DIR/mhsa`, else
`<tmp>/mhsa-<uid>`, created 0700 and refused unless it is a real directory owned by this uid with no
access for others), named after the results directory and the checkout whose `mhsa` serves it. Nobody
else can bind or replace it, so no other user can pose as the worker. Both ends check the other's uid
(`SO_PEERCRED`) before anything is sent: the worker runs jobs only for its own uid, the client sends its
environment, cwd, job and standard streams only to a process of its own uid.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
from pathlib import Path

PROTOCOL = b"MHSAW2\n"
PACKAGE = Path(__file__).resolve().parents[2]  # the mhsa this process imported


class WorkerUnavailable(OSError):
    """The worker cannot be used here; the message says why and what to do."""


def _check_private(path: Path) -> None:
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WorkerUnavailable(
            f"{path} must be a directory of uid {os.getuid()} that others cannot enter (it is "
            f"{'a directory' if stat.S_ISDIR(st.st_mode) else 'not a directory'} of uid {st.st_uid}, mode "
            f"{oct(st.st_mode & 0o777)}): remove it, or set XDG_RUNTIME_DIR to a private directory")


def private_dir() -> Path:
    """The directory of this user's worker sockets, created if absent, checked if present."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and os.path.isdir(runtime) else None
    path = base / "mhsa" if base else Path(tempfile.gettempdir()) / f"mhsa-{os.getuid()}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise WorkerUnavailable(f"cannot create {path} ({err.strerror}): set TMPDIR or XDG_RUNTIME_DIR to a "
                                "directory you can write to") from None
    _check_private(path)
    return path


def socket_path(results_dir: str | os.PathLike, package: Path = PACKAGE) -> Path:
    """The socket of the worker that serves `results_dir` with the `mhsa` at `package`."""
    key = f"{Path(results_dir).resolve()}\0{package}"
    return private_dir() / f"ww-{hashlib.sha1(key.encode()).hexdigest()[:16]}.sock"


def peer_uid(sock: socket.socket) -> int:
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]


def send(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        buf += chunk
    return buf


def recv(sock: socket.socket) -> dict:
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, n))


class Messages:
    """Length-prefixed JSON messages read with a deadline, so a waiting client still handles signals."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, b""

    def poll(self, timeout: float) -> dict | None:
        """The next message, or None if none arrived within `timeout`; ConnectionError on EOF."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack("!I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    msg, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return json.loads(msg)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("the warm worker closed the connection")
            self.buf += chunk


def source_fingerprint(package: Path = PACKAGE) -> str:
    """The mhsa sources at `package`: an edit after the worker started shows as a new fingerprint."""
    h = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
