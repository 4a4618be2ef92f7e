"""What changed about a file on disk, without reading it: for the watchers of the config files
(``proxy.server``) and of the Redis TLS files (``proxy.oauth.redis_client``).

A stat, not a read: mtime (ns), size, inode and the real path. The real path and the inode are
there for Kubernetes, which updates a mounted ConfigMap or Secret by swapping a symlink to a new
directory: the new file may have the same size and, within the clock's resolution, the same mtime.
Blocking (a system call per file): the watchers call it in a thread or before the loop starts.
"""

from __future__ import annotations

import os

FileFingerprint = tuple[int, int, int, str] | None  # None: the file cannot be read now


def fingerprint(path: str) -> FileFingerprint:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, real)
