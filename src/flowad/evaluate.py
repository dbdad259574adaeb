"""Metrics for anomalous-job detection and threshold selection.

Every detector in flowad returns a score per job in [0, 1], higher meaning
more anomalous. A label is ``score >= threshold``. The threshold is chosen on
the validation part (:func:`choose_threshold`), never on test.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")


def choose_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Return the score threshold that maximises F1 on the given jobs.

    Ties go to the highest threshold (fewest alarms). With one class only the
    threshold is 0.5.
    """
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if len(np.unique(labels)) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    denominator = precision[:-1] + recall[:-1]
    f1 = np.divide(
        2 * precision[:-1] * recall[:-1],
        denominator,
        out=np.zeros_like(denominator),
        where=denominator > 0,
    )
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


def compute_metrics(
    labels: Sequence[int],
    scores: Sequence[float],
    *,
    threshold: float = 0.5,
    anomaly_types: Sequence[str] | None = None,
) -> dict:
    """Compute binary metrics, the confusion matrix and recall per anomaly type.

    Parameters
    ----------
    labels
        True labels, 1 = anomalous.
    scores
        Anomaly scores in [0, 1].
    threshold
        A job is predicted anomalous when its score is at least this value.
    anomaly_types
        Optional ``anomaly_type`` per job (``"None"`` for normal jobs); adds
        ``recall_per_type`` and ``support_per_type``.

    Returns
    -------
    dict
        JSON-serialisable metrics. ``roc_auc`` and ``pr_auc`` are ``None``
        when only one class is present.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores differ in length: {labels.shape} vs {scores.shape}"
        )
    predicted = (scores >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="binary", zero_division=0
    )
    both_classes = len(np.unique(labels)) == 2
    metrics = {
        "jobs": int(len(labels)),
        "anomalous": int(labels.sum()),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(roc_auc_score(labels, scores)) if both_classes else None,
        "pr_auc": (
            float(average_precision_score(labels, scores)) if both_classes else None
        ),
        "confusion_matrix": confusion_matrix(
            labels, predicted, labels=[0, 1]
        ).tolist(),
    }
    if anomaly_types is not None:
        types = pd.Series(np.asarray(anomaly_types, dtype=str))
        frame = pd.DataFrame({"type": types, "predicted": predicted})
        anomalous = frame[frame["type"] != "None"]
        grouped = anomalous.groupby("type")["predicted"]
        metrics["recall_per_type"] = {
            str(key): float(value) for key, value in grouped.mean().items()
        }
        metrics["support_per_type"] = {
            str(key): int(value) for key, value in grouped.size().items()
        }
        normal = frame[frame["type"] == "None"]
        if len(normal):
            metrics["false_positive_rate"] = float(normal["predicted"].mean())
    return metrics


def format_metrics_table(metrics: dict, *, title: str | None = None) -> str:
    """Format metrics as a plain-text table for the terminal."""
    lines = [title] if title else []
    lines.append(f"{'metric':<22}{'value':>10}")
    lines.append("-" * 32)
    for name in ("jobs", "anomalous", "threshold", *METRIC_NAMES):
        value = metrics.get(name)
        if value is None:
            text = "n/a"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = f"{value:.4f}"
        lines.append(f"{name:<22}{text:>10}")
    matrix = metrics.get("confusion_matrix")
    if matrix:
        lines.append("")
        lines.append("confusion matrix (rows: true, columns: predicted)")
        lines.append(f"{'':<12}{'normal':>10}{'anomalous':>11}")
        lines.append(f"{'normal':<12}{matrix[0][0]:>10}{matrix[0][1]:>11}")
        lines.append(f"{'anomalous':<12}{matrix[1][0]:>10}{matrix[1][1]:>11}")
    recall_per_type = metrics.get("recall_per_type")
    if recall_per_type:
        lines.append("")
        lines.append(f"{'anomaly type':<22}{'recall':>10}{'jobs':>8}")
        support = metrics.get("support_per_type", {})
        for name, value in sorted(recall_per_type.items()):
            lines.append(f"{name:<22}{value:>10.4f}{support.get(name, 0):>8}")
    return "\n".join(lines)


def write_metrics(metrics: dict, path: str | Path) -> Path:
    """Write metrics as indented JSON, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def write_predictions(predictions: pd.DataFrame, path: str | Path) -> Path:
    """Write a predictions table as CSV, or Parquet when the suffix is .parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        predictions.to_parquet(path, index=False)
    else:
        predictions.to_csv(path, index=False)
    return path


# Job columns copied into every predictions table. Timestamps let the report
# draw a timeline per run; the rest identifies the job.
PREDICTION_ID_COLUMNS = (
    "workflow",
    "run",
    "job",
    "job_type",
    "transformation",
    "host",
    "anomaly_type",
    "label",
)
PREDICTION_TIME_COLUMNS = ("ready", "submit", "execute_start", "execute_end")


def build_predictions(
    jobs: pd.DataFrame, scores: Sequence[float], *, threshold: float
) -> pd.DataFrame:
    """Return one row per job: identifiers, times, score and predicted label."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) != len(jobs):
        raise ValueError(
            f"got {len(scores)} scores for {len(jobs)} jobs; pass one score per job"
        )
    columns = [c for c in (*PREDICTION_ID_COLUMNS, *PREDICTION_TIME_COLUMNS) if c in jobs]
    predictions = jobs[columns].reset_index(drop=True).copy()
    predictions["score"] = scores
    predictions["predicted"] = (scores >= threshold).astype(int)
    return predictions


def write_evaluation(
    out_dir: str | Path,
    jobs: pd.DataFrame,
    scores: Sequence[float],
    *,
    threshold: float,
    meta: dict | None = None,
) -> dict:
    """Write ``metrics.json`` and ``predictions.csv`` for one evaluation.

    Parameters
    ----------
    out_dir
        Folder to create or reuse.
    jobs
        The evaluated jobs (with ``label`` and ``anomaly_type``).
    scores
        Anomaly score per job, in [0, 1].
    threshold
        Decision threshold, chosen on validation.
    meta
        Provenance stored under ``"meta"`` in ``metrics.json``: data, split,
        seed, method, model, template, flowad version.

    Returns
    -------
    dict
        The metrics, including ``meta``.
    """
    from flowad import __version__

    out_dir = Path(out_dir)
    metrics = compute_metrics(
        jobs["label"].to_numpy(),
        scores,
        threshold=threshold,
        anomaly_types=jobs["anomaly_type"].to_numpy(),
    )
    metrics["meta"] = {"flowad_version": __version__, **(meta or {})}
    write_metrics(metrics, out_dir / "metrics.json")
    write_predictions(
        build_predictions(jobs, scores, threshold=threshold),
        out_dir / "predictions.csv",
    )
    return metrics
