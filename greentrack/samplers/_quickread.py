"""Reads of kernel-made files (powercap's ``energy_uj``, ``/proc/stat``) that keep the GIL.

``os.pread`` lets go of the GIL for the system call, as any read that might block must. These
reads never wait on a device or a disk: the kernel makes their text on the spot, in a few
microseconds. Letting go of the GIL for them costs far more than it saves: the sampler thread
then waits for the GIL back, up to the interpreter's switch interval (5 ms), and a training thread
that holds it (a Python-bound loop: Lightning's ~1 ms steps) is made to hand it over, a wait of its
own, each time (issue 25; ``bench/sampler_interference.py`` counts them: two RAPL zones read on
every 50 ms fast poll were 40 of them a second). So the call goes through ``ctypes.PyDLL``, whose
functions run with the GIL held (Python's ctypes documentation: "the Python GIL is not released
during the function call"), and a file whose read ever takes longer than :data:`SLOW_S` goes back
to ``os.pread`` for good. Only a file in memory is read so (sysfs, procfs, tmpfs: its
filesystem's ``statfs(2)`` magic number): the same path on a FUSE mount (lxcfs serves a
container's /proc/stat), NFS or a disk can block, and a read that blocks with the GIL held would
stop training. Anywhere ``libc``'s ``pread`` cannot be had this way, ``os.pread``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

#: A read slower than this is not "on the spot": it lets go of the GIL from then on (s).
SLOW_S = 200e-6

#: Filesystems whose files are made in memory, by ``statfs(2)`` magic (linux/magic.h).
MEMORY_FS = {0x62656572: "sysfs", 0x9FA0: "proc", 0x01021994: "tmpfs"}

_PREAD: Any = None
_FSTATFS: Any = None
_LOOKED = False


def _libc_pread() -> Any:
    """(libc's ``pread`` called with the GIL held, ctypes' buffer maker, ctypes' errno getter),
    or None (not Linux, no libc symbol)."""
    global _PREAD, _FSTATFS, _LOOKED
    if _LOOKED:
        return _PREAD
    _LOOKED = True
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # lazy: only the samplers that read such files need it

        libc = ctypes.PyDLL(None, use_errno=True)
        fn = getattr(libc, "pread64", None) or libc.pread
        fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64)
        fn.restype = ctypes.c_ssize_t
        # fstatfs may wait on a FUSE daemon: through CDLL, which lets go of the GIL
        fstatfs = ctypes.CDLL(None, use_errno=True).fstatfs
        fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
        fstatfs.restype = ctypes.c_int
        _FSTATFS = fstatfs
        _PREAD = (fn, ctypes.create_string_buffer, ctypes.get_errno)
    except (ImportError, OSError, AttributeError):
        _PREAD = None
    return _PREAD


def fs_type(fd: int) -> int | None:
    """The ``statfs(2)`` magic number of ``fd``'s filesystem (``f_type``, the first field of
    Linux's ``struct statfs``), or None where it cannot be had."""
    if _libc_pread() is None:
        return None
    import ctypes

    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit Linux
    if _FSTATFS(fd, buf) != 0:
        return None
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


class QuickRead:
    """``pread`` of one open descriptor, with the GIL held where its file is in memory and while
    its reads stay quick."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.holds_gil = _libc_pread() is not None and fs_type(fd) in MEMORY_FS
        self.slow_reads = 0

    def pread(self, n: int, offset: int = 0) -> bytes:
        """Up to ``n`` bytes at ``offset``; raises ``OSError`` (its errno's subclass: a
        ``PermissionError`` for EACCES) as ``os.pread`` does."""
        if not self.holds_gil:
            return os.pread(self.fd, n, offset)
        fn, buffer, get_errno = _PREAD
        buf = buffer(n)
        t0 = time.perf_counter()
        got = fn(self.fd, buf, n, offset)
        if time.perf_counter() - t0 > SLOW_S:
            self.slow_reads += 1
            self.holds_gil = False  # a file this slow lets go of the GIL from now on
        if got < 0:
            code = get_errno()
            raise OSError(code, os.strerror(code))
        raw: bytes = buf.raw[:got]
        return raw
