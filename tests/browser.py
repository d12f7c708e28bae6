"""A real headless Chromium for the UI tests: render a page, return its DOM after the scripts
ran and every request the page itself made (Chromium's own background services are told off
and, should they still call out, are not the page's requests). Tests skip where Debian's
``chromium`` is not installed (``apt-get install -y chromium``)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps",
         "--disable-features=AutofillServerCommunication,OptimizationHints,MediaRouter,Translate",
         # nothing but this machine answers: a page that reaches out fails visibly, never silently online
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    return found


def render(url: str, work: Path, wait_ms: int = 15000) -> tuple[str, list[str]]:
    """(the DOM after ``wait_ms`` of virtual time, the URLs the page requested)."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "net.json"
    done = subprocess.run([chromium(), *QUIET, f"--user-data-dir={work / 'profile'}", f"--log-net-log={log}",
                           f"--virtual-time-budget={wait_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    events = json.loads(log.read_text())["events"]
    requests = [e["params"] for e in events if "url" in e.get("params", {}) and "method" in e["params"]]
    # a page's requests name it as initiator (a file:// page is the opaque origin "null")
    origin = "null" if url.startswith("file:") else re.match(r"^(\w+://[^/]*)", url).group(1)
    own = [r["url"] for r in requests
           if str(r.get("initiator", "")) == origin or str(r.get("initiator", "")).startswith(origin + "/")
           or (origin != "null" and origin in r.get("network_isolation_key", "").split())
           or r["url"].startswith(url.split("#")[0])]
    return done.stdout, own


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
