"""Files replaced atomically: written to a temp file beside them, then renamed over them, so a
crash or a full disk leaves the previous version (or nothing), never half a file."""
from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


@functools.cache
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; once per process
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temp file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the data set is shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
