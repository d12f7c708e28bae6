"""Stage ingest: sources and data/incoming/ → data/manifest.parquet, data/images.npy, data/quarantine.csv."""
from __future__ import annotations

from pathlib import Path

from danvae.config import Params
from danvae.data.ingest import ingest
from danvae.data.sources import materialize_sources
from pipelines.paths import DATA
from pipelines.stages.common import run_stage


def main(params: Params) -> None:
    folders = materialize_sources(params.data.sources, DATA / "raw")
    incoming = Path(params.data.incoming)
    if incoming.is_dir():
        folders.append(("incoming", incoming))
    result = ingest(folders, DATA, params.data.image_size, params.data.channels, params.data.split, progress=True)
    print(result.summary())


if __name__ == "__main__":
    run_stage("ingest", main)
