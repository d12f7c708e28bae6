"""``python -m danvae.cli``: the ``danvae`` command (torchrun launches its workers this way)."""
import sys

from danvae.cli.main import main

sys.exit(main())
