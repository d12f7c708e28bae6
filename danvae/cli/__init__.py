"""The ``danvae`` command: train, score, predict, promote, export (``danvae --help``)."""
from danvae.cli.main import main

__all__ = ["main"]
