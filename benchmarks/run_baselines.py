"""Benchmark the classical baselines on every Flow-Bench workflow.

For each workflow zip under ``<data-root>/flowbench`` this trains the
baselines of :mod:`flowad.baselines` on the ``runs`` split (one fit per seed)
and, where ``<data-root>/paper_splits/<workflow>`` exists, on the published
``paper`` split. Each fit writes one JSON file under ``--results-dir`` with the
keys workflow, split, method, template (the feature set), model, seed,
metrics (as in ``metrics.json``), fit_seconds and machine. The ``Baselines``
section of ``benchmarks/RESULTS.md`` is then regenerated from every baseline
JSON file in that folder; other sections of the file are left unchanged.

Example::

    nice -n 10 python benchmarks/run_baselines.py --data-root /path/to/data
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from _common import WORKFLOWS, machine, mean_std, split_workflow

from flowad.baselines import FEATURE_SETS, MODEL_NAMES, BaselineDetector
from flowad.data import load_jobs
from flowad.evaluate import compute_metrics
from flowad.splits import make_split

logger = logging.getLogger("run_baselines")

HERE = Path(__file__).resolve().parent
SECTION_START = "<!-- baselines:start -->"
SECTION_END = "<!-- baselines:end -->"
SUMMARY_COLUMNS = [
    "workflow",
    "split",
    "features",
    "model",
    "seeds",
    "F1",
    "ROC AUC",
    "PR AUC",
]


def _context_available() -> bool:
    try:
        import flowad.context  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def _result_path(results_dir: Path, record: dict) -> Path:
    seed = "none" if record["seed"] is None else record["seed"]
    name = (
        f"baseline-{record['workflow']}-{record['split']}-{record['template']}-"
        f"{record['model']}-seed{seed}.json"
    )
    return results_dir / name


def _run_one(jobs, split, *, workflow, model, features, seed, n_jobs) -> dict:
    """Fit one baseline on one split and return its result record."""
    started = time.perf_counter()
    detector = BaselineDetector(model, features=features, seed=seed, n_jobs=n_jobs)
    detector.fit(split.part(jobs, "train"), split.part(jobs, "validation"))
    test_jobs = split.part(jobs, "test")
    scores = detector.predict_proba(test_jobs)
    metrics = compute_metrics(
        test_jobs["label"].to_numpy(),
        scores,
        threshold=detector.threshold_,
        anomaly_types=test_jobs["anomaly_type"].to_numpy(),
    )
    return {
        "workflow": workflow,
        "split": split.name,
        "method": "baseline",
        "template": features,
        "model": model,
        "seed": seed,
        "split_sizes": split.sizes(),
        "metrics": metrics,
        "fit_seconds": round(time.perf_counter() - started, 2),
        "machine": machine(),
    }


def _splits_for(workflow: str, jobs, args) -> list:
    """Return (jobs, split, seed) triples to run for one workflow.

    The ``paper`` split shares runs between parts, so its job table carries
    the whole-run context (see :func:`_common.split_workflow`).
    """
    triples = []
    if "runs" in args.splits:
        for seed in args.seeds:
            triples.append((jobs, make_split(jobs, "runs", seed=seed), seed))
    paper_dir = Path(args.data_root) / "paper_splits" / workflow
    if "paper" in args.splits and (paper_dir / "test.csv").exists():
        # The published split is fixed, so its seed only seeds the model.
        triples.append(
            (*split_workflow(jobs, args.data_root, workflow, "paper", 0), 0)
        )
    return triples


def run_benchmarks(args: argparse.Namespace) -> None:
    """Fit every requested baseline and write one JSON file per fit."""
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for workflow in args.workflows:
        zip_path = Path(args.data_root) / "flowbench" / f"{workflow}.zip"
        if not zip_path.exists():
            logger.warning("Skipping %s: %s not found", workflow, zip_path)
            continue
        jobs = load_jobs(zip_path)
        for split_jobs, split, seed in _splits_for(workflow, jobs, args):
            for features in args.features:
                for model in args.models:
                    record = {
                        "workflow": workflow,
                        "split": split.name,
                        "template": features,
                        "model": model,
                        "seed": seed,
                    }
                    path = _result_path(results_dir, record)
                    if args.skip_existing and path.exists():
                        continue
                    record = _run_one(
                        split_jobs,
                        split,
                        workflow=workflow,
                        model=model,
                        features=features,
                        seed=seed,
                        n_jobs=args.jobs,
                    )
                    record["command"] = args.command_line
                    record["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
                    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
                    logger.info(
                        "%s %s seed %s %s %s: F1 %.4f (%.0f s)",
                        workflow,
                        split.name,
                        seed,
                        features,
                        model,
                        record["metrics"]["f1"],
                        record["fit_seconds"],
                    )


def read_results(results_dir: str | Path) -> pd.DataFrame:
    """Read the result files of this script into one row per fit.

    Other scripts may also write results with ``method == "baseline"`` (for
    example with context columns computed on whole job tables), so only the
    ``baseline-*.json`` files that this script names are read.
    """
    rows = []
    for path in sorted(Path(results_dir).glob("baseline-*.json")):
        record = json.loads(path.read_text())
        if record.get("method") != "baseline":
            continue
        metrics = record["metrics"]
        rows.append(
            {
                "workflow": record["workflow"],
                "split": record["split"],
                "features": record["template"],
                "model": record["model"],
                "seed": record["seed"],
                "f1": metrics["f1"],
                "roc_auc": metrics["roc_auc"],
                "pr_auc": metrics["pr_auc"],
                "fit_seconds": record.get("fit_seconds"),
                "machine": record.get("machine"),
                "command": record.get("command"),
                "date": record.get("date"),
            }
        )
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Return one row per workflow, split, features and model, over all seeds."""
    keys = ["workflow", "split", "features", "model"]
    rows = []
    for key, group in results.groupby(keys, sort=True):
        rows.append(
            {
                **dict(zip(keys, key)),
                "seeds": ", ".join(str(seed) for seed in sorted(group["seed"])),
                "f1_mean": group["f1"].mean(),
                "F1": mean_std(group["f1"]),
                "ROC AUC": mean_std(group["roc_auc"]),
                "PR AUC": mean_std(group["pr_auc"]),
                "fit s": f"{group['fit_seconds'].mean():.0f}",
            }
        )
    return pd.DataFrame(rows)


def best_baselines(summary: pd.DataFrame) -> pd.DataFrame:
    """Return the row with the highest mean F1 per workflow and split.

    Other benchmark scripts can print it beside their language-model numbers:
    ``best_baselines(summarise(read_results(results_dir)))``.
    """
    best = summary.groupby(["workflow", "split"])["f1_mean"].idxmax()
    return summary.loc[best].sort_values(["workflow", "split"])


def _markdown_table(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(str(value) for value in record) + " |")
    return lines


def render_section(results: pd.DataFrame) -> str:
    """Return the Markdown of the Baselines section."""
    summary = summarise(results)
    best_rows = best_baselines(summary)
    machines = sorted(set(results["machine"].dropna()))
    commands = sorted(set(results["command"].dropna()))
    dates = sorted(set(results["date"].dropna()))
    lines = [
        "## Baselines",
        "",
        "Classical models (`flowad baseline`, module `flowad.baselines`) trained",
        "on the same splits and numeric fields that the language models read.",
        "`published` is the nine fields of the published sentence, and `context`",
        "adds the run-context columns of `flowad.context`. The threshold maximises",
        "F1 on validation, and metrics are on test jobs. For the `runs` split the",
        "table gives mean ± sample standard deviation over the listed split seeds",
        "(the seed also seeds the model). The `paper` split uses the published",
        "validation and test rows with model seed 0. Context columns are computed",
        "within each part, so with the `paper` split they see only the share of",
        "each run that falls into that part.",
        "",
        f"- Machine: {'; '.join(machines)}",
        f"- Command: `{'`; `'.join(commands)}`",
        f"- Date: {', '.join(dates)}",
        "",
        "### Best baseline per workflow and split (highest mean test F1)",
        "",
        *_markdown_table(best_rows, SUMMARY_COLUMNS),
        "",
        "### All baselines",
        "",
        *_markdown_table(summary, [*SUMMARY_COLUMNS, "fit s"]),
    ]
    return "\n".join(lines)


def write_section(markdown_path: Path, section: str) -> None:
    """Replace the Baselines section of the results page, or append it."""
    block = f"{SECTION_START}\n{section}\n{SECTION_END}"
    if markdown_path.exists():
        text = markdown_path.read_text()
    else:
        text = "# Benchmark results\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        _, tail = rest.split(SECTION_END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    markdown_path.write_text(text)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    context = ["context"] if _context_available() else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root",
        required=True,
        help="Folder with flowbench/<workflow>.zip and paper_splits/<workflow>/.",
    )
    parser.add_argument(
        "--workflows", nargs="+", default=list(WORKFLOWS), choices=WORKFLOWS
    )
    parser.add_argument(
        "--splits", nargs="+", default=["runs", "paper"], choices=("runs", "paper")
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="Seeds of the runs split.",
    )
    parser.add_argument(
        "--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES
    )
    parser.add_argument(
        "--features",
        nargs="+",
        default=["published", *context],
        choices=FEATURE_SETS,
        help="Feature sets (default: published, plus context if flowad.context "
        "exists).",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="Workers for rf and iforest, threads for gbdt.",
    )
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--results-md", default=str(HERE / "RESULTS.md"))
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="Keep result files that already exist.",
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="Only regenerate the Baselines section from existing result files.",
    )
    args = parser.parse_args(argv)
    args.command_line = "python benchmarks/run_baselines.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.summary_only:
        run_benchmarks(args)
    results = read_results(args.results_dir)
    if results.empty:
        logger.error(
            "No baseline results in %s; run without --summary-only", args.results_dir
        )
        return 1
    write_section(Path(args.results_md), render_section(results))
    logger.info("Updated %s", args.results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
