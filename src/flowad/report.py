"""Self-contained HTML report of one or more evaluation folders.

An evaluation folder is what :func:`flowad.evaluate.write_evaluation` writes:
``metrics.json`` (with ``meta``) and ``predictions.csv``. Two optional files
add sections when present:

``online.csv``
    Online-detection metrics per stage of the runs: a ``stage`` column plus
    metric columns such as ``f1``, ``precision`` and ``recall``.
``explanations.csv``
    In-context-learning replies: ``run``, ``job``, ``label``, ``predicted``
    and ``explanation``.

The report is one HTML file: inline CSS, plots as base64 PNG, no scripts and
no external URLs, so it can be mailed or archived as is. Every string read
from the folders (job names, hosts, runs, explanations, provenance) is
HTML-escaped, because job records are untrusted input.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from flowad.exceptions import FlowadWarning

logger = logging.getLogger(__name__)

DEFAULT_MAX_TIMELINE_RUNS = 4
DEFAULT_MAX_EXPLANATIONS = 20
# Metrics shown in the comparison table, in column order.
TABLE_METRICS = (
    ("f1", "F1"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC"),
    ("accuracy", "accuracy"),
    ("threshold", "threshold"),
)
PROVENANCE_KEYS = ("data", "split", "seed", "method", "model", "template")
ONLINE_METRICS = ("f1", "precision", "recall", "accuracy", "roc_auc", "pr_auc")
EXPLANATION_COLUMNS = ("run", "job", "label", "predicted", "explanation")
SCORE_COLORMAP = "RdYlBu_r"
# Maximum length of a host or run name in a plot; longer names are cut.
MAX_PLOT_LABEL = 40
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f0f0f0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline { color: #555; }
tr.best-baseline { background: #fff3c4; color: #222; font-weight: 600; }
.note { color: #666; font-size: 0.9em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
td.explanation { max-width: 700px; white-space: pre-wrap; }
div.wide { overflow-x: auto; }
"""


@dataclass
class Evaluation:
    """The contents of one evaluation folder.

    Attributes
    ----------
    name
        Label of the folder in the report (its name, made unique).
    path
        The folder.
    metrics
        ``metrics.json`` without ``meta``.
    meta
        Provenance from ``metrics.json``: data, split, seed, method, model,
        template and flowad version.
    predictions
        ``predictions.csv``, one row per evaluated job.
    online
        ``online.csv`` if present, else None.
    explanations
        ``explanations.csv`` if present, else None.
    """

    name: str
    path: Path
    metrics: dict
    meta: dict
    predictions: pd.DataFrame
    online: pd.DataFrame | None = None
    explanations: pd.DataFrame | None = None

    @property
    def is_baseline(self) -> bool:
        """True for classical baselines (``meta.method == "baseline"``)."""
        return self.meta.get("method") == "baseline"

    @property
    def group(self) -> tuple[str, str, str]:
        """Data, split and seed: evaluations with equal groups are comparable."""
        return tuple(
            _format_value(self.meta.get(key)) for key in ("data", "split", "seed")
        )


def _format_value(value) -> str:
    """Write a provenance value as plain text (lists joined with commas)."""
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _data_names(value) -> str:
    """Write the data files of an evaluation by file name only."""
    if value is None:
        return "n/a"
    items = value if isinstance(value, (list, tuple)) else [value]
    return ", ".join(Path(str(item)).name or str(item) for item in items)


def _format_metric(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{float(value):.4f}"


def _read_optional_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame | None:
    """Read an optional CSV; warn and return None if it lacks required columns."""
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path)
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
    ) as error:
        warnings.warn(
            f"skipping {path}: it is not a readable CSV ({error})",
            FlowadWarning,
            stacklevel=3,
        )
        return None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        warnings.warn(
            f"skipping {path}: missing column(s) {missing}; expected at least "
            f"{list(required)}",
            FlowadWarning,
            stacklevel=3,
        )
        return None
    return frame


def read_evaluation(path: str | Path, *, name: str | None = None) -> Evaluation:
    """Read one evaluation folder.

    Raises
    ------
    FileNotFoundError
        If the folder lacks ``metrics.json`` or ``predictions.csv``.
    ValueError
        If ``metrics.json`` is not a JSON object or ``predictions.csv`` lacks
        the ``label`` and ``score`` columns.
    """
    path = Path(path)
    metrics_path = path / "metrics.json"
    predictions_path = path / "predictions.csv"
    for required in (metrics_path, predictions_path):
        if not required.is_file():
            raise FileNotFoundError(
                f"{required} not found; pass folders written by 'flowad evaluate' "
                "or 'flowad baseline'"
            )
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{metrics_path} is not valid JSON: {error}") from error
    if not isinstance(metrics, dict):
        raise ValueError(
            f"{metrics_path} must contain a JSON object, got {type(metrics).__name__}"
        )
    meta = metrics.pop("meta", None) or {}
    predictions = pd.read_csv(
        predictions_path, dtype={"job": str, "host": str, "run": str}
    )
    missing = [column for column in ("label", "score") if column not in predictions]
    if missing:
        raise ValueError(
            f"{predictions_path} lacks the column(s) {missing}; write it with "
            "flowad.evaluate.write_evaluation"
        )
    if "anomaly_type" in predictions:
        # pandas reads the label "None" of normal jobs as missing.
        predictions["anomaly_type"] = predictions["anomaly_type"].fillna("None")
    if "predicted" not in predictions:
        threshold = metrics.get("threshold", 0.5)
        predictions["predicted"] = (predictions["score"] >= threshold).astype(int)
    return Evaluation(
        name=name or path.name,
        path=path,
        metrics=metrics,
        meta=meta,
        predictions=predictions,
        online=_read_optional_csv(path / "online.csv", ("stage", "f1")),
        explanations=_read_optional_csv(path / "explanations.csv", EXPLANATION_COLUMNS),
    )


# ------------------------------------------------------------------ plots


def _plot_text(text: object) -> str:
    """Make untrusted text safe for matplotlib: no mathtext, bounded length."""
    text = str(text)
    if len(text) > MAX_PLOT_LABEL:
        text = text[: MAX_PLOT_LABEL - 1] + "…"
    # An unescaped pair of dollar signs would switch matplotlib to mathtext,
    # which can fail to parse and abort the whole report.
    return text.replace("$", r"\$")


def _new_figure(width: float, height: float, *, columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(width, height))
    return figure, axes


def _figure_to_data_uri(figure) -> str:
    """Encode a figure as a PNG data URI and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    # Dropping the Software entry keeps matplotlib's URL out of the file.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def plot_confusion_matrix(metrics: dict) -> str:
    """Draw the 2 x 2 confusion matrix with counts; return a data URI."""
    matrix = np.asarray(metrics["confusion_matrix"], dtype=int)
    figure, axis = _new_figure(3.2, 3.0)
    axis.imshow(matrix, cmap="Blues")
    names = ["normal", "anomalous"]
    axis.set_xticks([0, 1], labels=names)
    axis.set_yticks([0, 1], labels=names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    peak = matrix.max() if matrix.size else 0
    for row in range(2):
        for column in range(2):
            value = matrix[row, column]
            color = "white" if peak and value > peak / 2 else "black"
            axis.text(column, row, str(value), ha="center", va="center", color=color)
    axis.set_title("Confusion matrix")
    return _figure_to_data_uri(figure)


def plot_curves(evaluations: list[Evaluation]) -> str | None:
    """Draw ROC and precision-recall curves; None if no folder has both classes."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    figure, (roc_axis, pr_axis) = _new_figure(8, 3.6, columns=2)
    drawn = 0
    for evaluation in evaluations:
        labels = evaluation.predictions["label"].to_numpy(dtype=int)
        scores = evaluation.predictions["score"].to_numpy(dtype=float)
        if len(np.unique(labels)) < 2:
            continue
        name = _plot_text(evaluation.name)
        false_positive, true_positive, _ = roc_curve(labels, scores)
        roc_axis.plot(
            false_positive,
            true_positive,
            label=f"{name} ({_format_metric(evaluation.metrics.get('roc_auc'))})",
        )
        precision, recall, _ = precision_recall_curve(labels, scores)
        pr_axis.step(
            recall,
            precision,
            where="post",
            label=f"{name} ({_format_metric(evaluation.metrics.get('pr_auc'))})",
        )
        drawn += 1
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(figure)
        return None
    roc_axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_axis.set_xlabel("false positive rate")
    roc_axis.set_ylabel("true positive rate")
    roc_axis.set_title("ROC curve (AUC)")
    pr_axis.set_xlabel("recall")
    pr_axis.set_ylabel("precision")
    pr_axis.set_title("Precision-recall curve (AP)")
    for axis in (roc_axis, pr_axis):
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.legend(fontsize="small", loc="lower right" if axis is roc_axis else "best")
    return _figure_to_data_uri(figure)


def _recall_per_type(evaluation: Evaluation) -> tuple[dict, dict]:
    """Return recall and support per anomaly type, from metrics or predictions."""
    recall = evaluation.metrics.get("recall_per_type")
    support = evaluation.metrics.get("support_per_type", {})
    if recall is None and "anomaly_type" in evaluation.predictions:
        anomalous = evaluation.predictions[
            evaluation.predictions["anomaly_type"].astype(str) != "None"
        ]
        grouped = anomalous.groupby(anomalous["anomaly_type"].astype(str))["predicted"]
        recall = grouped.mean().to_dict()
        support = grouped.size().to_dict()
    return recall or {}, support


def plot_recall_per_type(evaluation: Evaluation) -> str | None:
    """Draw recall per anomaly type as bars; None without anomalous jobs."""
    recall, support = _recall_per_type(evaluation)
    if not recall:
        return None
    names = sorted(recall)
    figure, axis = _new_figure(4.8, 0.45 * len(names) + 1.4)
    positions = np.arange(len(names))
    axis.barh(positions, [recall[name] for name in names], color="#4477aa")
    axis.set_yticks(
        positions,
        labels=[
            f"{_plot_text(name)} ({support.get(name, '?')} jobs)" for name in names
        ],
    )
    axis.set_xlim(0, 1)
    axis.invert_yaxis()
    axis.set_xlabel("recall")
    axis.set_title("Recall per anomaly type")
    return _figure_to_data_uri(figure)


def plot_score_histograms(evaluation: Evaluation) -> str:
    """Draw the score distributions of normal and anomalous jobs."""
    predictions = evaluation.predictions
    scores = predictions["score"].to_numpy(dtype=float)
    labels = predictions["label"].to_numpy(dtype=int)
    figure, axis = _new_figure(4.8, 3.4)
    bins = np.linspace(0, 1, 41)
    for value, name, color in ((0, "normal", "#4477aa"), (1, "anomalous", "#cc3311")):
        selected = scores[labels == value]
        if len(selected):
            axis.hist(
                selected,
                bins=bins,
                alpha=0.6,
                color=color,
                label=f"{name} ({len(selected)} jobs)",
                weights=np.full(len(selected), 1 / len(selected)),
            )
    threshold = evaluation.metrics.get("threshold")
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", label="threshold")
    axis.set_xlabel("anomaly score")
    axis.set_ylabel("share of jobs in class")
    axis.set_title("Score distribution")
    axis.legend(fontsize="small")
    return _figure_to_data_uri(figure)


def plot_online(online: pd.DataFrame) -> str:
    """Draw online-detection metrics per stage."""
    figure, axis = _new_figure(5.5, 3.4)
    stages = online["stage"]
    numeric_stage = pd.api.types.is_numeric_dtype(stages)
    positions = (
        stages.to_numpy(dtype=float) if numeric_stage else np.arange(len(online))
    )
    for metric in ONLINE_METRICS:
        if metric in online and pd.api.types.is_numeric_dtype(online[metric]):
            axis.plot(
                positions,
                online[metric].to_numpy(dtype=float),
                marker="o",
                label=metric,
            )
    if not numeric_stage:
        axis.set_xticks(
            positions, labels=[_plot_text(stage) for stage in stages], rotation=30
        )
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("stage")
    axis.set_ylabel("metric")
    axis.set_title("Online detection per stage")
    axis.legend(fontsize="small")
    return _figure_to_data_uri(figure)


def select_timeline_runs(
    predictions: pd.DataFrame, *, max_runs: int = DEFAULT_MAX_TIMELINE_RUNS
) -> list[str]:
    """Pick the runs with the most anomalous jobs, plus one normal run.

    Runs with anomalous jobs come first (most anomalous jobs first). When
    ``max_runs`` is at least 2, the last place goes to the first run without
    any, so the report shows a healthy run next to the bad ones.
    """
    if "run" not in predictions or max_runs < 1:
        return []
    counts = predictions.groupby("run", sort=True)["label"].sum()
    anomalous = counts[counts > 0].sort_values(ascending=False, kind="stable")
    normal = list(counts[counts == 0].index)
    keep_normal = bool(normal) and max_runs >= 2
    chosen = list(anomalous.index[: max_runs - 1 if keep_normal else max_runs])
    if normal:
        chosen.append(normal[0])
    return [str(run) for run in chosen[:max_runs]]


def _numeric_column(jobs: pd.DataFrame, column: str) -> pd.Series:
    """Return a column as floats, or all NaN when the table lacks it."""
    if column not in jobs:
        return pd.Series(np.nan, index=jobs.index)
    return pd.to_numeric(jobs[column], errors="coerce")


def _job_intervals(jobs: pd.DataFrame) -> pd.DataFrame:
    """Return start and end of each job with usable times.

    The start is ``execute_start``, or ``submit`` where that is missing.
    """
    start = _numeric_column(jobs, "execute_start").fillna(
        _numeric_column(jobs, "submit")
    )
    end = _numeric_column(jobs, "execute_end")
    frame = pd.DataFrame({"start": start, "end": end})
    return frame[frame["start"].notna() & frame["end"].notna()]


def _assign_rows(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, int]:
    """Place intervals in rows so that overlapping jobs on one host do not hide."""
    order = np.argsort(starts, kind="stable")
    row_ends: list[float] = []
    rows = np.zeros(len(starts), dtype=int)
    for position in order:
        for row, row_end in enumerate(row_ends):
            if row_end <= starts[position]:
                rows[position] = row
                row_ends[row] = ends[position]
                break
        else:
            rows[position] = len(row_ends)
            row_ends.append(ends[position])
    return rows, max(len(row_ends), 1)


def _natural_key(text: str) -> list:
    """Sort key that orders ``container-4-7`` before ``container-12-15``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _draw_host_lanes(axis, jobs: pd.DataFrame, colormap) -> list[str]:
    """Draw one lane per host with a bar per job; return the hosts in lane order.

    ``jobs`` has columns start, end (seconds), host, score and label.
    """
    host_names = sorted(set(jobs["host"]), key=_natural_key)
    # A minimum width keeps jobs of a few milliseconds visible.
    min_width = max(jobs["end"].max(), 1.0) * 0.002
    for lane, host in enumerate(host_names):
        on_host = jobs[jobs["host"] == host]
        rows, row_count = _assign_rows(
            on_host["start"].to_numpy(), on_host["end"].to_numpy()
        )
        height = 0.8 / row_count
        for job, row in zip(on_host.itertuples(index=False), rows):
            anomalous = job.label == 1
            axis.barh(
                lane - 0.4 + height * (row + 0.5),
                max(job.end - job.start, min_width),
                left=job.start,
                height=height * 0.9,
                color=colormap(float(np.clip(job.score, 0.0, 1.0))),
                # A thin grey edge keeps pale mid-range colours visible on white.
                edgecolor="black" if anomalous else "#999999",
                linewidth=1.2 if anomalous else 0.3,
            )
    return host_names


def plot_run_timeline(
    predictions: pd.DataFrame, run: str, *, threshold: float | None = None
) -> str | None:
    """Draw one run's jobs as bars per host, coloured by anomaly score.

    Bars go from ``execute_start`` (or ``submit`` when that is missing) to
    ``execute_end``, in seconds since the run's first job started. Jobs on one
    host that overlap in time are stacked inside the host's lane. Truly
    anomalous jobs get a black outline. Returns None when no job of the run
    has usable times.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    selected = predictions[predictions["run"].astype(str) == run]
    intervals = _job_intervals(selected)
    if intervals.empty:
        return None
    selected = selected.loc[intervals.index]
    origin = intervals["start"].min()
    jobs = pd.DataFrame(
        {
            "start": intervals["start"] - origin,
            "end": np.maximum(intervals["end"], intervals["start"]) - origin,
            "host": (
                selected["host"].fillna("unknown host").astype(str)
                if "host" in selected
                else "unknown host"
            ),
            "score": selected["score"].astype(float),
            "label": selected["label"].astype(int),
        }
    )
    colormap = colormaps[SCORE_COLORMAP]
    figure, axis = _new_figure(10, 0.32 * jobs["host"].nunique() + 1.8)
    host_names = _draw_host_lanes(axis, jobs, colormap)
    axis.set_yticks(
        np.arange(len(host_names)), labels=[_plot_text(host) for host in host_names]
    )
    axis.set_ylim(len(host_names) - 0.5, -0.5)
    axis.set_xlabel(
        "seconds since the first job started (black outline: truly anomalous job)"
    )
    axis.set_title(
        f"Run {_plot_text(run)}: {len(jobs)} jobs, "
        f"{int(jobs['label'].sum())} truly anomalous",
        loc="left",
    )
    colorbar_axis = make_axes_locatable(axis).append_axes("right", size="1.5%", pad=0.1)
    colorbar = figure.colorbar(
        ScalarMappable(norm=Normalize(0, 1), cmap=colormap), cax=colorbar_axis
    )
    colorbar.set_label("anomaly score")
    if threshold is not None:
        colorbar.ax.axhline(threshold, color="black", linewidth=1.5)
    return _figure_to_data_uri(figure)


# ------------------------------------------------------------------ HTML


def _image(uri: str | None, caption: str) -> str:
    if uri is None:
        return f'<p class="note">{html.escape(caption)}: not available.</p>'
    text = html.escape(caption)
    return (
        f'<figure><img src="{uri}" alt="{text}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def _provenance_row(evaluation: Evaluation) -> str:
    cells = [
        f"<td>{html.escape(_format_value(evaluation.meta.get(key)))}</td>"
        for key in (*PROVENANCE_KEYS, "flowad_version")
    ]
    return f"<tr><td>{html.escape(evaluation.name)}</td>{''.join(cells)}</tr>"


def _provenance_table(evaluations: list[Evaluation]) -> str:
    header = "".join(
        f"<th>{html.escape(key.replace('_', ' '))}</th>"
        for key in ("evaluation", *PROVENANCE_KEYS, "flowad_version")
    )
    rows = [_provenance_row(evaluation) for evaluation in evaluations]
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _best_baselines(evaluations: list[Evaluation]) -> dict[tuple, Evaluation]:
    """Return the baseline with the highest F1 for each data/split/seed group."""
    best: dict[tuple, Evaluation] = {}
    for evaluation in evaluations:
        if not evaluation.is_baseline:
            continue
        f1 = evaluation.metrics.get("f1") or 0.0
        current = best.get(evaluation.group)
        if current is None or f1 > (current.metrics.get("f1") or 0.0):
            best[evaluation.group] = evaluation
    return best


def _metrics_table(evaluations: list[Evaluation]) -> str:
    """Return the comparison table: each group's models, then its baselines."""
    best = _best_baselines(evaluations)
    group_order = {}
    for evaluation in evaluations:
        group_order.setdefault(evaluation.group, len(group_order))
    ordered = sorted(
        evaluations,
        key=lambda item: (
            group_order[item.group],
            item.is_baseline,
            -(item.metrics.get("f1") or 0.0) if item.is_baseline else 0.0,
        ),
    )
    header = "".join(
        f"<th>{name}</th>"
        for name in (
            "evaluation",
            "method",
            "model",
            "template / features",
            "data",
            "split",
            "seed",
            "jobs",
            "anomalous",
            *(label for _, label in TABLE_METRICS),
            "best baseline F1",
        )
    )
    rows = []
    for evaluation in ordered:
        group_best = best.get(evaluation.group)
        if evaluation.is_baseline:
            css = "best-baseline" if group_best is evaluation else "baseline"
            comparison = "best baseline" if group_best is evaluation else ""
        else:
            css = "model"
            comparison = (
                f"{_format_metric(group_best.metrics.get('f1'))} "
                f"({_format_value(group_best.meta.get('model'))})"
                if group_best is not None
                else "no baseline on the same data, split and seed"
            )
        text_cells = [
            evaluation.name,
            *(
                _format_value(evaluation.meta.get(key))
                for key in ("method", "model", "template")
            ),
            _data_names(evaluation.meta.get("data")),
            _format_value(evaluation.meta.get("split")),
            _format_value(evaluation.meta.get("seed")),
        ]
        number_cells = [
            evaluation.metrics.get("jobs"),
            evaluation.metrics.get("anomalous"),
            *(evaluation.metrics.get(key) for key, _ in TABLE_METRICS),
        ]
        cells = [f"<td>{html.escape(text)}</td>" for text in text_cells]
        cells += [
            f'<td class="number">{_format_metric(value)}</td>' for value in number_cells
        ]
        cells.append(f"<td>{html.escape(comparison)}</td>")
        rows.append(f'<tr class="{css}">{"".join(cells)}</tr>')
    return f'<div class="wide"><table><tr>{header}</tr>{"".join(rows)}</table></div>'


def _explanations_table(
    explanations: pd.DataFrame, *, max_rows: int, seed: int = 0
) -> str:
    sample = explanations
    if len(sample) > max_rows:
        sample = sample.sample(n=max_rows, random_state=seed)
    sample = sample.sort_values(["run", "job"], kind="stable")
    header = "".join(f"<th>{name}</th>" for name in EXPLANATION_COLUMNS)
    rows = []
    for record in sample.itertuples(index=False):
        cells = [
            f"<td>{html.escape(str(getattr(record, column)))}</td>"
            for column in EXPLANATION_COLUMNS[:-1]
        ]
        cells.append(
            f'<td class="explanation">{html.escape(str(record.explanation))}</td>'
        )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        f'<p class="note">{len(sample)} of {len(explanations)} explanations, '
        f"sampled with seed {seed}.</p>"
    )
    return f"{note}<table><tr>{header}</tr>{''.join(rows)}</table>"


def _evaluation_section(
    evaluation: Evaluation, *, max_timeline_runs: int, max_explanations: int
) -> str:
    """Return the HTML section with every plot of one evaluation folder."""
    title = html.escape(evaluation.name)
    meta = ", ".join(
        f"{key} {html.escape(_format_value(evaluation.meta.get(key)))}"
        for key in (*PROVENANCE_KEYS, "flowad_version")
    )
    parts = [f"<h2>{title}</h2>", f'<p class="note">{meta}</p>']
    plots = []
    if evaluation.metrics.get("confusion_matrix"):
        plots.append(
            _image(plot_confusion_matrix(evaluation.metrics), "Confusion matrix")
        )
    plots.append(_image(plot_curves([evaluation]), "ROC and precision-recall curves"))
    plots.append(_image(plot_recall_per_type(evaluation), "Recall per anomaly type"))
    plots.append(_image(plot_score_histograms(evaluation), "Score distributions"))
    if evaluation.online is not None:
        plots.append(
            _image(plot_online(evaluation.online), "Online detection per stage")
        )
    parts.append(f'<div class="plots">{"".join(plots)}</div>')

    runs = select_timeline_runs(evaluation.predictions, max_runs=max_timeline_runs)
    if runs:
        parts.append("<h3>Run timelines</h3>")
        parts.append(
            '<p class="note">One lane per host, one bar per job from execution '
            "start to end, coloured by anomaly score; the black line on the colour "
            "bar marks the threshold. Runs with the most anomalous jobs are shown, "
            "plus one normal run.</p>"
        )
        threshold = evaluation.metrics.get("threshold")
        for run in runs:
            uri = plot_run_timeline(evaluation.predictions, run, threshold=threshold)
            parts.append(_image(uri, f"Timeline of run {run}"))
    if evaluation.explanations is not None:
        parts.append("<h3>Explanations</h3>")
        parts.append(
            _explanations_table(evaluation.explanations, max_rows=max_explanations)
        )
    return "\n".join(parts)


def _unique_names(paths: list[Path]) -> list[str]:
    """Name folders by their base name, adding the parent where names repeat."""
    names = [path.name or str(path) for path in paths]
    repeated = {name for name in names if names.count(name) > 1}
    unique = []
    for path, name in zip(paths, names):
        label = f"{path.parent.name}/{name}" if name in repeated else name
        while label in unique:
            label += "'"
        unique.append(label)
    return unique


def build_report(
    result_dirs: str | Path | list[str | Path],
    out_path: str | Path,
    *,
    title: str = "flowad report",
    max_timeline_runs: int = DEFAULT_MAX_TIMELINE_RUNS,
    max_explanations: int = DEFAULT_MAX_EXPLANATIONS,
) -> Path:
    """Write one self-contained HTML report for evaluation folders.

    Parameters
    ----------
    result_dirs
        Evaluation folders (``metrics.json`` + ``predictions.csv``), in the
        order they appear in the report.
    out_path
        HTML file to write; its folder is created.
    title
        Heading of the report.
    max_timeline_runs
        Runs drawn as timelines per folder (default 4). Each timeline is one
        image, so more runs mean a larger file.
    max_explanations
        Explanations listed per folder when ``explanations.csv`` exists
        (default 20, sampled with a fixed seed).

    Returns
    -------
    pathlib.Path
        The written report.

    Raises
    ------
    ValueError
        If no folder is given.
    FileNotFoundError
        If a folder lacks ``metrics.json`` or ``predictions.csv``.
    """
    from flowad import __version__

    if isinstance(result_dirs, (str, Path)):
        result_dirs = [result_dirs]
    paths = [Path(path) for path in result_dirs]
    if not paths:
        raise ValueError("no evaluation folder given; pass at least one")
    evaluations = [
        read_evaluation(path, name=name)
        for path, name in zip(paths, _unique_names(paths))
    ]
    logger.info("Building a report of %d evaluation folder(s)", len(evaluations))
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Written by flowad {html.escape(__version__)} on {created}.'
        " Scores are in [0, 1], higher is more anomalous; thresholds were chosen"
        " on validation jobs.</p>",
        "<h2>Evaluations</h2>",
        _provenance_table(evaluations),
        "<h2>Metrics</h2>",
        '<p class="note">Baselines follow the models of the same data, split and '
        "seed; the best baseline (highest F1) is highlighted.</p>",
        _metrics_table(evaluations),
    ]
    if len(evaluations) > 1:
        body.append(
            _image(
                plot_curves(evaluations), "ROC and precision-recall curves, all folders"
            )
        )
    for evaluation in evaluations:
        body.append(
            _evaluation_section(
                evaluation,
                max_timeline_runs=max_timeline_runs,
                max_explanations=max_explanations,
            )
        )
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(document, encoding="utf-8")
    logger.info("Wrote report %s (%d bytes)", out_path, len(document))
    return out_path
