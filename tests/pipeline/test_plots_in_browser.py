"""``dvc plots show``'s page in a real headless Chromium: with the project's template (vega
inlined) the plots are drawn, and the page requests nothing from any server."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.browser import chromium, render
from tests.pipeline.conftest import ROOT, Repo

pytestmark = pytest.mark.slow


def test_the_plots_page_draws_offline(tmp_path):
    chromium()
    repo = Repo(tmp_path / "repo")
    repo.path.mkdir()
    repo.run("git", "init", "-q")
    repo.run(sys.executable, "-m", "dvc", "init", "-q")
    (repo.path / ".dvc" / "plots").mkdir()
    shutil.copy(ROOT / ".dvc" / "plots" / "offline.html", repo.path / ".dvc" / "plots" / "offline.html")
    repo.dvc("config", "plots.html_template", "plots/offline.html")
    (repo.path / "roc.json").write_text(json.dumps([{"fpr": x / 10, "tpr": min(1.0, x / 6)} for x in range(11)]))
    (repo.path / "dvc.yaml").write_text("plots:\n  - ROC:\n      template: simple\n      x: fpr\n      y:\n"
                                        "        roc.json: tpr\n")
    repo.dvc("plots", "show", "-o", "out")
    dom, requests = render((repo.path / "out" / "index.html").as_uri(), tmp_path / "chrome", wait_ms=5000)
    assert 'class="marks"' in dom  # vega drew the chart (a canvas or svg of marks)
    assert requests == [], requests  # not one network request: the libraries are in the page
