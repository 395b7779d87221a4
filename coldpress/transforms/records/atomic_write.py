"""Files written whole or not at all, locally or on any fsspec filesystem: ``write_file_bytes``."""

from __future__ import annotations

import os
import posixpath
from typing import Any

from coldpress.transforms.sources import filesystem_for

# Filesystems whose single write is atomic by nature: an object appears whole or not at all.
_ATOMIC_PUT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"}


def write_file_bytes(data: bytes, dst_uri: str, storage_options: dict[str, Any] | None = None) -> int:
    """Write ``data`` at ``dst_uri`` atomically (see ``write_image``); return its size."""
    fs, path = filesystem_for(dst_uri, storage_options)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if "file" in protocols or "local" in protocols:
        path = os.path.abspath(path)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        # A hidden temporary name, created exclusively with mode 0o666 so that the kernel applies the
        # process umask as open() would (reading the umask would mean setting it, for every thread).
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return len(data)
    if protocols & _ATOMIC_PUT_PROTOCOLS:
        fs.pipe_file(path, data)
        return len(data)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{os.urandom(6).hex()}.tmp")
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:  # noqa: BLE001 - best effort; the original error matters
            pass
        raise
    return len(data)
