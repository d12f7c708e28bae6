"""Whether a process still runs, by pid: for the records a killed process leaves behind."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs on this host (someone else's process included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
