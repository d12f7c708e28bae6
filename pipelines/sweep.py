"""The thesis grid as DVC experiments: queue it, run it, gather one comparison table.

    python -m pipelines.sweep queue  [--models vae,dpvae,danvae] [--zx 24,56,120] [--ratios 0.05,0.10,0.20]
                                     [--vae-every-ratio] [--dry-run] [-S key=value ...]
    python -m pipelines.sweep run    [--jobs 1]
    python -m pipelines.sweep gather [--out reports/sweep] [--all-commits] [--source auto|dvc|mlflow]

``queue`` stages one ``dvc exp run --queue -S model.name=.. -S model.zx_dim=.. -S
data.train_anomaly_ratio=..`` per grid point. The plain ``vae`` trains on normal images
only, so the labelled-anomaly ratio cannot change it: it is queued once per ``zx_dim``
(at the first ratio given) unless ``--vae-every-ratio`` asks for every ratio.

``run`` is ``dvc exp run --run-all --jobs N``. Queued experiments run in temporary
copies of the repository; so that their MLflow runs are not lost with those copies,
``MLFLOW_TRACKING_URI`` is pointed at this project's ``mlflow.db`` unless already set.

``gather`` reads ``dvc exp show --json`` and writes ``<out>/sweep.csv`` and
``<out>/sweep.md``: model, zx_dim, ratio, overall AUROC, darkest-quintile AUROC,
Spearman correlation of the score with brightness on normal test images, R²(z_y), R²(z_x).
Where a grid point ran more than once, the newest experiment counts. ``dvc exp show`` reads
``reports/metrics.json`` from DVC's cache; where an experiment's metrics cannot be read (a
``cache: false`` metrics file that git ignores, a cache that lacks it) ``gather`` falls back
to the MLflow runs the experiments logged (``--source`` chooses).

The table itself (``rows_from_exp_show``, ``gather_table``, ``to_markdown``, ``rows_from_mlflow``)
is made by pure functions in :mod:`pipelines.sweep_table`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.env import tool_env
from pipelines.sweep_table import (METRICS_FILE, MODELS, NORMALS_ONLY, PARAMS_FILE, gather_table, rows_from_exp_show,
                                   rows_from_mlflow, to_markdown)

ZX_DIMS = (24, 56, 120)
RATIOS = (0.05, 0.10, 0.20)
SWEEP_ALIAS = "sweep"  # the alias the sweep's versions get, never challenger's


# ---- the grid -----------------------------------------------------------------------


def grid(models: Sequence[str] = MODELS, zx_dims: Sequence[int] = ZX_DIMS, ratios: Sequence[float] = RATIOS,
         vae_every_ratio: bool = False) -> list[dict[str, Any]]:
    """Grid points as params, ``vae`` once per ``zx_dim`` (first ratio) unless ``vae_every_ratio``."""
    points = []
    for model in models:
        for zx in zx_dims:
            for i, ratio in enumerate(ratios):
                if model in NORMALS_ONLY and not vae_every_ratio and i > 0:
                    continue
                points.append({"model.name": model, "model.zx_dim": int(zx), "data.train_anomaly_ratio": float(ratio)})
    return points


def queue_command(point: Mapping[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """The ``dvc exp run --queue`` arguments (after ``dvc``) for one grid point. Its model
    version gets the alias ``sweep``, so an experiment never becomes the ``challenger``."""
    cmd = ["exp", "run", "--queue", "-S", f"tracking.alias={SWEEP_ALIAS}"]
    for key, value in point.items():
        cmd += ["-S", f"{key}={value}"]
    for setting in extra:
        cmd += ["-S", setting]
    return cmd


# ---- talking to DVC -----------------------------------------------------------------


def dvc_env(repo: Path) -> dict[str, str]:
    """The environment for dvc and the stages (:func:`pipelines.env.tool_env`), MLflow runs kept in
    ``<repo>/mlflow.db`` even from DVC's temporary experiment copies."""
    env = tool_env()
    env.setdefault("MPLCONFIGDIR", str(repo / ".cache" / "matplotlib"))
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{repo.resolve() / 'mlflow.db'}")
    # .dvc/config may name a relative core.site_cache_dir (this project's: tmp/site_cache); DVC
    # resolves it against the working directory, which for queued experiments is a temporary
    # copy where it does not exist ("unable to open database file"). An absolute one fixes that.
    site = _site_cache_dir(repo)
    if site is not None:
        env.setdefault("DVC_SITE_CACHE_DIR", str(site))
    return env


def _site_cache_dir(repo: Path) -> Path | None:
    """``core.site_cache_dir`` from ``.dvc/config``/``config.local``, made absolute (None when unset)."""
    import configparser

    value = None
    for name in ("config", "config.local"):
        parser = configparser.ConfigParser()
        try:
            parser.read(repo / ".dvc" / name)
        except configparser.Error:
            continue
        value = parser.get("core", "site_cache_dir", fallback=value)
    if not value:
        return None
    path = Path(value.strip().strip("'\""))
    return path if path.is_absolute() else (repo / path).resolve()


def dvc(repo: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=dvc_env(repo), text=True,
                          capture_output=capture, check=False)


def exp_show(repo: Path, all_commits: bool = False) -> list[dict[str, Any]]:
    args = ["exp", "show", "--json", "--force"]
    if all_commits:
        args.append("--all-commits")
    proc = dvc(repo, *args, capture=True)
    if proc.returncode != 0:
        raise SystemExit(f"sweep: dvc exp show failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def _split(text: str, cast) -> list:
    return [cast(v.strip()) for v in text.split(",") if v.strip()]


def cmd_queue(args: argparse.Namespace) -> int:
    points = grid(_split(args.models, str), _split(args.zx, int), _split(args.ratios, float), args.vae_every_ratio)
    unknown = sorted({p["model.name"] for p in points} - set(MODELS))
    if unknown:
        raise SystemExit(f"sweep: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    for point in points:
        cmd = queue_command(point, args.set_param or [])
        print("dvc " + " ".join(cmd), flush=True)
        if not args.dry_run:
            proc = dvc(args.repo, *cmd, capture=True)
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return proc.returncode
    print(f"sweep: {'would queue' if args.dry_run else 'queued'} {len(points)} experiments", flush=True)
    return 0


def failed_tasks(status_text: str) -> set[str]:
    """Task ids marked Failed in ``dvc queue status`` output."""
    return {line.split()[0] for line in status_text.splitlines() if line.split()[-1:] == ["Failed"]}


def cmd_run(args: argparse.Namespace) -> int:
    """``dvc exp run --run-all``; non-zero when DVC fails or any experiment of this run failed
    (DVC itself exits 0 when queued experiments fail)."""
    before = failed_tasks(dvc(args.repo, "queue", "status", capture=True).stdout)
    code = dvc(args.repo, "exp", "run", "--run-all", "--jobs", str(args.jobs)).returncode
    failed = failed_tasks(dvc(args.repo, "queue", "status", capture=True).stdout) - before
    if failed:
        print(f"sweep: {len(failed)} experiment(s) failed: {', '.join(sorted(failed))} "
              f"(see `dvc queue logs <task>`)", file=sys.stderr)
        return code or 1
    return code


def mlflow_runs(repo: Path) -> pd.DataFrame:
    """Every run of the project's MLflow experiment (``tracking.experiment`` in params.yaml)."""
    import yaml

    env = dvc_env(repo)
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    params = yaml.safe_load((repo / PARAMS_FILE).read_text()) or {}
    experiment = (params.get("tracking") or {}).get("experiment", "danvae")
    return mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time ASC"])


def collect_rows(repo: Path, source: str = "auto", all_commits: bool = False) -> tuple[list[dict[str, Any]], str]:
    """The rows and where they came from. ``auto``: DVC experiments, else MLflow runs.

    DVC cannot show an experiment's metrics it has no copy of (a ``cache: false`` metrics file
    that git ignores, a cache without it): ``dvc exp show`` then lists the experiments without
    metrics, and the MLflow runs they logged are the record.
    """
    if source in ("auto", "dvc"):
        show = exp_show(repo, all_commits)
        rows = rows_from_exp_show(show)
        if rows or source == "dvc":
            return rows, "dvc"
        n_exps = sum(len(b.get("experiments") or []) for b in show)
        print(f"sweep: {n_exps} DVC experiment(s) but none with {METRICS_FILE} in its commit "
              f"(a git-ignored cache: false file, or a cache without it?); "
              f"reading the MLflow runs instead", file=sys.stderr)
    return rows_from_mlflow(mlflow_runs(repo)), "mlflow"


def cmd_gather(args: argparse.Namespace) -> int:
    rows, used = collect_rows(args.repo, args.source, args.all_commits)
    table = gather_table(rows)
    out = args.out if args.out.is_absolute() else args.repo / args.out
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False)
    (out / "sweep.md").write_text(to_markdown(table))
    print(to_markdown(table))
    print(f"sweep: {len(table)} grid points (from {used}) → {out / 'sweep.csv'}, {out / 'sweep.md'}")
    return 0 if len(table) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the project (default: here)")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue the grid as DVC experiments")
    q.add_argument("--models", default=",".join(MODELS))
    q.add_argument("--zx", default=",".join(map(str, ZX_DIMS)))
    q.add_argument("--ratios", default=",".join(f"{r:.2f}" for r in RATIOS))
    q.add_argument("--vae-every-ratio", action="store_true", help="queue vae at every ratio, not once per zx_dim")
    q.add_argument("-S", "--set-param", action="append", metavar="KEY=VALUE", help="extra param for every point")
    q.add_argument("--dry-run", action="store_true", help="print the commands only")
    r = sub.add_parser("run", help="run every queued experiment (dvc exp run --run-all)")
    r.add_argument("--jobs", type=int, default=1)
    g = sub.add_parser("gather", help="write the results table (markdown and CSV)")
    g.add_argument("--out", type=Path, default=Path("reports/sweep"))
    g.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    g.add_argument("--source", choices=("auto", "dvc", "mlflow"), default="auto",
                   help="dvc exp show, the MLflow runs, or auto: DVC when its experiments carry metrics")
    args = parser.parse_args(argv)
    args.repo = args.repo.resolve()
    return {"queue": cmd_queue, "run": cmd_run, "gather": cmd_gather}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
