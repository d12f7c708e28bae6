"""At most one retrain at a time, across processes and hosts."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RETRAIN_LIMIT = "danvae-retrain"
LOCK_FILE = Path(".cache/retrain.lock")
SLOW_ACQUIRE_S = 2.0  # an uncontended slot is granted well within this


class SingleFlight:
    """At most one retrain at a time: a Prefect global concurrency limit (1 slot; every host on
    the same server) and an exclusive ``flock`` on a file in the project (every process on this
    checkout, whichever Prefect API it talks to; also the fallback when the limit is unavailable).

    ``wait=True``: block until both are free (``waited`` says whether it had to); ``wait=False``:
    give up at once (``acquired`` False). ``holder`` says who held it.
    """

    def __init__(self, project_dir: Path, name: str = RETRAIN_LIMIT, wait: bool = True,
                 max_wait_s: float = 6 * 3600, logger=None):  # noqa: ANN001
        self.lock_path = project_dir / LOCK_FILE
        self.name, self.wait, self.max_wait_s, self.logger = name, wait, max_wait_s, logger
        self.acquired = self.waited = False
        self.holder = ""
        self.mechanisms: list[str] = []
        self._stack = ExitStack()

    def _log(self, msg: str, *args: Any) -> None:
        if self.logger is not None:
            self.logger.info(msg, *args)

    def _limit(self) -> bool:
        """Take the global concurrency slot; False when busy and not waiting. Without a usable limit
        (an API that refuses to create it) the file lock alone guards this checkout."""
        from prefect.client.orchestration import get_client
        from prefect.concurrency.sync import concurrency

        try:
            with get_client(sync_client=True) as client:
                client.upsert_global_concurrency_limit_by_name(self.name, 1)
                limit = client.read_global_concurrency_limit_by_name(self.name)
        except Exception as exc:  # noqa: BLE001 — the file lock still guards this checkout
            if self.logger is not None:
                self.logger.warning("global concurrency limit %r unavailable (%s); using the file lock only",
                                    self.name, exc)
            return True
        # Busy is read, not probed with a short acquisition timeout: a timed-out acquisition can be
        # slow under load for no reason, and one cut off in flight can leave a slot held until its
        # lease expires.
        busy = limit.active_slots >= limit.limit
        options = dict(strict=True, raise_on_lease_renewal_failure=False)
        if busy:
            self.holder = f"concurrency limit {self.name!r}"
            if not self.wait:
                return False
            self.waited = True
            self._log("another retrain holds the %r concurrency slot; waiting for it to finish (at most %g s)",
                      self.name, self.max_wait_s)
        if self.wait:
            started = time.monotonic()
            self._stack.enter_context(concurrency(self.name, timeout_seconds=self.max_wait_s, **options))
            if time.monotonic() - started > SLOW_ACQUIRE_S:  # taken by another between the read and now
                self.waited = True
        else:
            try:  # one attempt, no timeout: taken, or refused (423) because another run just took it
                self._stack.enter_context(concurrency(self.name, max_retries=0, **options))
            except Exception:
                with get_client(sync_client=True) as client:
                    limit = client.read_global_concurrency_limit_by_name(self.name)
                if limit.active_slots < limit.limit:
                    raise
                self.holder = f"concurrency limit {self.name!r}"
                return False
        self.mechanisms.append(f"concurrency limit {self.name!r}")
        return True

    def _lock(self) -> bool:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._stack.callback(os.close, fd)
        deadline = time.monotonic() + self.max_wait_s
        logged = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                held_by = self.lock_path.read_text(errors="replace").strip() or "another process"
                self.holder = f"{self.lock_path} ({held_by})"
                if not self.wait:
                    return False
                if not logged:
                    self._log("%s is held by %s; waiting for it", self.lock_path, held_by)
                    logged = True
                self.waited = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {self.max_wait_s:g} s for {self.lock_path} ({held_by})") from None
                time.sleep(1.0)
        self._stack.callback(fcntl.flock, fd, fcntl.LOCK_UN)
        from prefect.runtime import flow_run

        info = {"pid": os.getpid(), "host": socket.gethostname(), "flow_run": flow_run.get_id(),
                "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._stack.callback(os.ftruncate, fd, 0)
        self.mechanisms.append(f"file lock {LOCK_FILE}")
        return True

    def __enter__(self) -> SingleFlight:
        try:
            self.acquired = self._limit() and self._lock()
        except BaseException:
            self._stack.close()
            raise
        if not self.acquired:
            self._stack.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
