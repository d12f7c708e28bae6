"""``python -m pipelines.check_params``: params.yaml checked before ``dvc repro`` touches any output.

A typo, an unsupported image size or a device this host lacks fails here in one line
(exit 2), not half-way through the pipeline after DVC has cleared a stage's outputs.
"""
from __future__ import annotations

import sys

from danvae.config import Params, ParamsError, load_params
from danvae.train import DeviceUnavailable, pick_device


def check(path: str = "params.yaml") -> Params:
    """The validated params; raises ParamsError or DeviceUnavailable with a one-line reason."""
    params = load_params(path)
    pick_device(params.train.device)
    return params


def main(argv: list[str] | None = None) -> int:
    path = (argv if argv is not None else sys.argv[1:] or ["params.yaml"])[0]
    try:
        params = check(path)
    except (ParamsError, DeviceUnavailable) as exc:
        print(f"params: error: {exc}", file=sys.stderr)
        return 2
    print(f"params: {path} ok (model {params.model.name}, {params.data.image_size} px, device {params.train.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
