"""Run the analyses of :mod:`flowad.experiments` on the Flow-Bench workflows.

For each requested experiment and workflow (or workflow pair for
``transfer`` and ``forgetting``, or all ``--workflows`` together for
``transfer-matrix``) this loads ``<data-root>/flowbench/<name>.zip``,
optionally keeps a seeded, label-stratified fraction of its runs, runs the
experiment into ``--out-root/<experiment>-<workflow>/`` (tables and plots) and
writes its rows to
``--results-dir/analysis-<experiment>-<workflow>-<split>-seed<seed>.json``.
Each row has the keys workflow, split, method, template, model, seed and
metrics, plus the experiment's extra columns. The ``Analyses`` section of
``benchmarks/RESULTS.md`` is then regenerated from every ``analysis-*.json``
file in the results folder; other sections are left unchanged.

Example (small configuration, two shared CPU cores)::

    nice -n 10 python benchmarks/run_experiments.py --data-root /path/to/data \\
        --experiments online imbalance --workflows 1000genome \\
        --run-fraction 0.1 --max-train-jobs 2000 --epochs 1

``transfer-matrix`` concatenates the ``--workflows`` into one job table and
writes ``transfer-matrix-<n>workflows``; ``--pairs`` then restricts its
fine-tunes (default: every ordered pair)::

    nice -n 10 python benchmarks/run_experiments.py --data-root /path/to/data \\
        --experiments transfer-matrix --workflows montage predict_future_sales \\
        --max-test-jobs 2000 --pairs montage:predict_future_sales
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from _common import load_workflow

from flowad.experiments import EXPERIMENTS, run_experiment, subsample_runs
from flowad.finetune import FinetuneConfig

logger = logging.getLogger("run_experiments")

HERE = Path(__file__).resolve().parent
SECTION_START = "<!-- analyses:start -->"
SECTION_END = "<!-- analyses:end -->"
DEFAULT_PAIRS = ("1000genome:montage", "montage:1000genome")


def _load(data_root: Path, workflow: str, fraction: float, seed: int):
    """Load one workflow and keep a seeded fraction of its runs."""
    jobs = load_workflow(data_root, workflow)
    if fraction < 1:
        jobs = subsample_runs(jobs, fraction, seed=seed).reset_index(drop=True)
    logger.info("%s: %d runs, %d jobs", workflow, jobs["run"].nunique(), len(jobs))
    return jobs


def _settings(name: str, args: argparse.Namespace) -> list[tuple]:
    """Return the (source, target) runs of one experiment.

    ``source`` is a workflow name or, for ``transfer-matrix``, a tuple of all
    requested workflows. ``target`` is ``None`` for one-table experiments.
    """
    if name == "transfer-matrix":
        return [(tuple(args.workflows), None)]
    if EXPERIMENTS[name].needs_target:
        return [tuple(pair.split(":")) for pair in args.pairs or DEFAULT_PAIRS]
    return [(workflow, None) for workflow in args.workflows]


def _render_section(results_dir: Path) -> str:
    """Build the Analyses section from every analysis JSON file."""
    lines = [
        SECTION_START,
        "## Analyses",
        "",
        "Written by `benchmarks/run_experiments.py`; each block names the command,",
        "data sizes, split and seed. Small configurations (subsampled runs and",
        "training jobs, one epoch) on two shared CPU cores: read them as",
        "smoke-scale numbers, not as the study's results.",
        "",
    ]
    paths = sorted(results_dir.glob("analysis-*.json"))
    documents = [json.loads(path.read_text()) for path in paths]
    missing = sorted(
        set(EXPERIMENTS) - {document["experiment"] for document in documents}
    )
    if missing:
        lines += [f"No results recorded yet for: {', '.join(missing)}.", ""]
    for document in documents:
        lines += [
            f"### {document['experiment']}: {document['meta'].get('workflow')}"
            + (
                f" -> {document['meta']['target_workflow']}"
                if "target_workflow" in document["meta"]
                else ""
            ),
            "",
            f"- command: `{document['command']}`",
            f"- machine: {document['machine']}, finished {document['finished']}",
        ]
        lines += [f"- {key}: {value}" for key, value in document["meta"].items()]
        lines += ["", document["table_markdown"], ""]
    lines.append(SECTION_END)
    return "\n".join(lines)


def _update_results_page(results_dir: Path, page: Path) -> None:
    """Replace the Analyses section of RESULTS.md, keeping the other sections."""
    section = _render_section(results_dir)
    text = page.read_text() if page.is_file() else "# Benchmark results\n"
    if SECTION_START in text and SECTION_END in text:
        before = text[: text.index(SECTION_START)]
        after = text[text.index(SECTION_END) + len(SECTION_END) :]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    page.write_text(text)


def _tables_markdown(out: Path) -> str:
    """Return the tables of table.md, without its title and provenance lines."""
    text = (out / "table.md").read_text()
    tables = text[text.index("\n|") + 1 :].strip()
    return tables.replace("\n## ", "\n#### ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument(
        "--experiments", nargs="+", choices=sorted(EXPERIMENTS), required=True
    )
    parser.add_argument(
        "--workflows",
        nargs="+",
        default=["1000genome"],
        help="For one-workflow runs; transfer-matrix uses all of them together.",
    )
    parser.add_argument(
        "--pairs",
        nargs="+",
        help="A:B workflow pairs for transfer and forgetting (default: "
        f"{' '.join(DEFAULT_PAIRS)}); for transfer-matrix, the only fine-tunes "
        "to run (default: every ordered pair).",
    )
    parser.add_argument(
        "--max-test-jobs",
        type=int,
        help="transfer-matrix: label-stratified subsample of each workflow's "
        "validation and test jobs (default: all).",
    )
    parser.add_argument("--run-fraction", type=float, default=1.0)
    parser.add_argument("--split", default="runs", choices=("runs", "rows"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--template", default="compact")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--max-train-jobs", type=int, default=2000)
    parser.add_argument("--max-validation-jobs", type=int, default=500)
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.2, 1.0]
    )
    parser.add_argument("--lora-methods", nargs="+", default=["full", "lora-encoder"])
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--out-root", type=Path, default=Path("experiment-output"))
    parser.add_argument("--page", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    config = FinetuneConfig(
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        template=args.template,
        max_train_jobs=args.max_train_jobs,
        max_validation_jobs=args.max_validation_jobs,
        seed=args.seed,
        num_threads=args.threads,
        show_progress_bar=False,
    )
    options = {
        "fractions": tuple(args.fractions),
        "methods": tuple(args.lora_methods),
        "pairs": args.pairs,
        "max_test_jobs": args.max_test_jobs,
    }
    command = "python benchmarks/run_experiments.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, object] = {}

    def jobs_of(workflow: str | tuple):
        if isinstance(workflow, tuple):
            return pd.concat([jobs_of(name) for name in workflow], ignore_index=True)
        if workflow not in cache:
            cache[workflow] = _load(
                args.data_root, workflow, args.run_fraction, args.seed
            )
        return cache[workflow]

    for name in args.experiments:
        for source, target in _settings(name, args):
            if isinstance(source, tuple):
                label = f"{len(source)}workflows"
            else:
                label = source if target is None else f"{source}-to-{target}"
            out = args.out_root / f"{name}-{label}"
            source_jobs = jobs_of(source)
            result = run_experiment(
                name,
                source_jobs,
                out=out,
                config=config,
                split=args.split,
                seed=args.seed,
                target_jobs=None if target is None else jobs_of(target),
                options=options,
                meta={
                    "run_fraction": args.run_fraction,
                    "jobs": len(source_jobs),
                    **({"target_jobs": len(jobs_of(target))} if target else {}),
                },
            )
            document = json.loads((result.out / "result.json").read_text())
            document["command"] = command
            document["machine"] = (
                f"{platform.machine()}, {os.cpu_count()} CPU cores, shared"
            )
            document["finished"] = datetime.now(timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"
            )
            document["table_markdown"] = _tables_markdown(result.out)
            target_path = (
                args.results_dir
                / f"analysis-{name}-{label}-{args.split}-seed{args.seed}.json"
            )
            target_path.write_text(json.dumps(document, indent=2) + "\n")
            logger.info("Wrote %s", target_path)
            _update_results_page(args.results_dir, args.page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
