"""Helpers shared by the benchmark scripts: data loading, splits, result files.

Every benchmark run writes one JSON document to ``benchmarks/results/`` with
the date, the machine, the command line and the run's own keys.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_PAGE = Path(__file__).resolve().parent / "RESULTS.md"
WORKFLOWS = (
    "1000genome",
    "montage",
    "predict_future_sales",
    "variant_calling",
    "casa_wind_full",
    "casa_nowcast_small",
)
# Workflows with text splits published by the SC'24 study.
PAPER_WORKFLOWS = ("1000genome", "montage", "predict_future_sales")


def machine() -> str:
    """Describe the processor, core count and torch build of this machine."""
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def write_result(name: str, document: dict, *, sort_keys: bool = False) -> Path:
    """Write ``document`` as ``results/<name>.json`` with date, machine and command."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(sys.argv),
        **document,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, sort_keys=sort_keys) + "\n")
    return path


def load_workflow(data_root: Path, workflow: str):
    """Load every run of one Flow-Bench workflow from ``<data_root>/flowbench``."""
    from flowad.data import load_jobs

    path = Path(data_root) / "flowbench" / f"{workflow}.zip"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; check --data-root")
    return load_jobs(path)


def split_workflow(
    jobs, data_root: Path, workflow: str, split_name: str, seed: int, *, attach: bool = True
):
    """Split a workflow's jobs; return ``(jobs, split)``.

    For the ``rows`` and ``paper`` splits, which share runs between parts,
    the run context is attached to the whole table first (see
    :func:`flowad.context.attach_context`), as the command line does;
    ``attach=False`` skips that for callers that compute features themselves.
    """
    from flowad.splits import make_split

    split = make_split(
        jobs, split_name, seed=seed, paper_dir=Path(data_root) / "paper_splits" / workflow
    )
    if attach and split_name != "runs":
        from flowad.context import attach_context

        jobs = attach_context(jobs)
    return jobs, split


def splits_for(workflow: str, split_names: list[str], seeds: list[int]):
    """Yield ``(split name, seed)`` pairs; ``paper`` has one fixed split."""
    for split_name in split_names:
        if split_name == "paper":
            if workflow in PAPER_WORKFLOWS:
                yield split_name, 0
        else:
            for seed in seeds:
                yield split_name, seed


def mean_std(values) -> str:
    """Format ``mean ± std`` over seeds (sample standard deviation), three decimals."""
    values = [float(value) for value in values if value is not None and not np.isnan(value)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
