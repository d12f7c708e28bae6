"""The params check `make run` does before `dvc repro`: one line and exit 2 on what a rerun would repeat."""
from __future__ import annotations

import pytest
import torch
import yaml

from pipelines.check_params import main

PARAMS = "params.yaml"


def _write(tmp_path, edit) -> str:
    params = yaml.safe_load(open(PARAMS))
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_the_committed_params_pass(capsys):
    assert main([PARAMS]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("edit, says", [
    (lambda p: p["data"].update(image_size=48), "image_size"),
    (lambda p: p["train"].update(epoch=3), "epoch"),
    (lambda p: p["model"].update(name="resnet"), "name"),
])
def test_bad_params_fail_in_one_line(tmp_path, capsys, edit, says):
    assert main([_write(tmp_path, edit)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("params: error:") and says in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_cuda_on_a_host_without_it_fails_before_the_pipeline(tmp_path, capsys):
    assert main([_write(tmp_path, lambda p: p["train"].update(device="cuda"))]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
