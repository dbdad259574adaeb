"""The study's analyses as runnable experiments: ``flowad experiment NAME``.

Each experiment fine-tunes one or more detectors on a split of the user's
jobs and writes to its output folder:

``table.csv``
    The main table, one row per setting (method, stage, fraction ...).
``table.md``
    The main table and any extra tables in Markdown, headed by what was run
    (data, split, seed, configuration).
``table_<name>.csv``
    Extra tables (confusion matrices, earliest-flag histograms).
``result.json``
    Provenance and one row per table row with the keys ``workflow``,
    ``split``, ``method``, ``template``, ``model``, ``seed`` and ``metrics``.
``*.png``
    Plots.

Experiments (see :data:`EXPERIMENTS`):

``online``
    F1 per lifecycle stage of a full-record model and of a model trained on
    partial records. Also the earliest stage at which anomalous jobs are
    flagged, and the time gained before the job's end.
``types``
    Multi-class models (normal/cpu/hdd and each level); confusion matrices.
``imbalance``
    Plain training, class-weighted loss and balanced sampling; F1 and PR-AUC.
``lora``
    Full fine-tuning against LoRA adapters on the encoder (and optionally on
    SmolLM2): trainable parameters, F1, training time, peak memory.
``transfer``
    Train on workflow A, test on B; fine-tune on B from A or from the
    pretrained model with 1 %, 5 %, 20 % and 100 % of B's training runs.
``transfer-matrix``
    One model per workflow of a multi-workflow job table, scored on every
    workflow (zero-shot, at the source's and at the target's validation
    threshold), then fine-tuned on every other workflow.
``forgetting``
    Fine-tune on A, then on B; F1 on A before and after, with freezing and
    replay of A's jobs as mitigations.

Thresholds are always chosen on validation jobs of the data the detector
was last fitted on; test jobs are only scored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flowad.evaluate import choose_threshold, compute_metrics
from flowad.finetune import FinetuneConfig, TextClassifierDetector
from flowad.splits import PART_NAMES, Split, make_split

logger = logging.getLogger(__name__)

TABLE_CSV = "table.csv"
TABLE_MARKDOWN = "table.md"
RESULT_JSON = "result.json"
DEFAULT_FRACTIONS = (0.01, 0.05, 0.2, 1.0)
# Settings of the transfer-matrix table and the file names of their matrices.
ZERO_SHOT_SOURCE = "zero-shot source threshold"
ZERO_SHOT_TARGET = "zero-shot target threshold"
FINE_TUNED = "fine-tuned"
TRANSFER_SETTINGS = (ZERO_SHOT_SOURCE, ZERO_SHOT_TARGET, FINE_TUNED)
MATRIX_NAMES = {
    ZERO_SHOT_SOURCE: "zero_shot_source_threshold",
    ZERO_SHOT_TARGET: "zero_shot_target_threshold",
    FINE_TUNED: "fine_tuned",
}
# Table columns copied into a JSON row's "metrics"; the rest are extras.
METRIC_COLUMNS = (
    "f1",
    "precision",
    "recall",
    "pr_auc",
    "roc_auc",
    "macro_f1",
    "accuracy",
    "support",
    "f1_before",
    "f1_after",
    "pr_auc_before",
    "pr_auc_after",
    "forgetting",
    "f1_after_own_threshold",
    "train_seconds",
    "peak_memory_mb",
    "trainable_parameters",
    "total_parameters",
    "adapter_mb",
)


@dataclass
class ExperimentSettings:
    """Inputs of one experiment run.

    Attributes
    ----------
    jobs
        Job table of workflow A (the only workflow for most experiments).
    split
        Split of ``jobs``.
    config
        Base fine-tuning configuration; experiments vary copies of it.
    out
        Output folder.
    target_jobs, target_split
        Workflow B for ``transfer`` and ``forgetting``; ``None`` otherwise.
    options
        Experiment-specific options (see each experiment's docstring).
    meta
        Provenance written to ``table.md`` and ``result.json``.
    """

    jobs: pd.DataFrame
    split: Split
    config: FinetuneConfig
    out: Path
    target_jobs: pd.DataFrame | None = None
    target_split: Split | None = None
    options: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


@dataclass
class ExperimentResult:
    """Tables and plots an experiment wrote.

    Attributes
    ----------
    name
        Experiment name.
    table
        Main table (also in ``table.csv``).
    extra_tables
        Further tables by name (``table_<name>.csv``).
    plots
        PNG files written.
    out
        Output folder.
    """

    name: str
    table: pd.DataFrame
    extra_tables: dict[str, pd.DataFrame]
    plots: list[Path]
    out: Path


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: its name, one-line summary and function."""

    name: str
    summary: str
    function: Callable[[ExperimentSettings], tuple]
    needs_target: bool = False


# ---------------------------------------------------------------- helpers


def _workflow_name(jobs: pd.DataFrame) -> str:
    """Return the workflow name(s) of a job table, joined by '+'."""
    return "+".join(sorted(jobs["workflow"].astype(str).unique()))


def _fit(
    config: FinetuneConfig,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    *,
    detector_class: type = TextClassifierDetector,
    **detector_options,
) -> TextClassifierDetector:
    """Build and fit one detector."""
    detector = detector_class(config, **detector_options)
    detector.fit(train, validation)
    return detector


def _binary_metrics(
    detector, jobs: pd.DataFrame, scores: np.ndarray | None = None
) -> dict:
    """Return F1, precision, recall, PR-AUC and ROC-AUC at the detector's threshold."""
    if scores is None:
        scores = detector.predict_proba(jobs)
    metrics = compute_metrics(
        jobs["label"].to_numpy(), scores, threshold=detector.threshold_
    )
    return {
        key: metrics[key] for key in ("f1", "precision", "recall", "pr_auc", "roc_auc")
    }


def _markdown_table(table: pd.DataFrame) -> str:
    """Write a table in GitHub Markdown; floats get four decimals, NaN is "-"."""

    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "-" if np.isnan(value) else f"{value:.4f}"
        return str(value)

    header = "| " + " | ".join(str(column) for column in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = [
        "| " + " | ".join(cell(value) for value in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def _json_rows(
    name: str, table: pd.DataFrame, settings: ExperimentSettings
) -> list[dict]:
    """Turn table rows into result rows with the shared benchmark keys."""
    rows = []
    for record in table.to_dict("records"):
        metrics = {
            key: _plain(record.pop(key)) for key in METRIC_COLUMNS if key in record
        }
        rows.append(
            {
                "experiment": name,
                "workflow": record.pop("workflow", settings.meta.get("workflow")),
                "split": settings.meta.get("split"),
                "method": record.pop("method", name),
                "template": settings.config.template,
                "model": record.pop("model", settings.meta.get("model")),
                "seed": settings.config.seed,
                "metrics": metrics,
                **{key: _plain(value) for key, value in record.items()},
            }
        )
    return rows


def _plain(value):
    """Convert NumPy scalars and NaN to JSON values."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    return value


def _write_outputs(
    name: str,
    settings: ExperimentSettings,
    table: pd.DataFrame,
    extra_tables: dict[str, pd.DataFrame],
) -> None:
    """Write table.csv, table_<name>.csv, table.md and result.json."""
    out = settings.out
    table.to_csv(out / TABLE_CSV, index=False)
    for extra_name, extra in extra_tables.items():
        extra.to_csv(out / f"table_{extra_name}.csv", index=False)
    lines = [f"# Experiment `{name}`", ""]
    for key, value in settings.meta.items():
        lines.append(f"- {key}: {value}")
    lines += ["", _markdown_table(table), ""]
    for extra_name, extra in extra_tables.items():
        lines += [f"## {extra_name}", "", _markdown_table(extra), ""]
    (out / TABLE_MARKDOWN).write_text("\n".join(lines))
    document = {
        "experiment": name,
        "meta": settings.meta,
        "config": settings.config.to_dict(),
        "options": {key: _plain(value) for key, value in settings.options.items()},
        "rows": _json_rows(name, table, settings),
    }
    (out / RESULT_JSON).write_text(json.dumps(document, indent=2, default=str) + "\n")


def _new_figure(width: float = 6.0, height: float = 4.0):
    """Return a matplotlib Figure and axes without touching pyplot state."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plots need matplotlib; install it with `pip install matplotlib`"
        ) from error
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _peak_memory_mb() -> float:
    """Return the peak resident memory of this process so far, in MiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- online


def _experiment_online(settings: ExperimentSettings) -> tuple:
    """F1 per lifecycle stage; earliest flagging stage of anomalous test jobs.

    Options: ``copies`` (partial copies per training job for the augmented
    model, default 1).
    """
    from flowad.online import STAGE_NAMES, augment_partial, event_times, score_partial
    from flowad.templates import get_template

    config = settings.config
    if get_template(config.template).uses_run_context:
        raise ValueError(
            f"the online experiment trains on partial copies of jobs, which template "
            f"{config.template!r} cannot render (it uses run context); choose a "
            "template without run context such as 'compact'"
        )
    copies = int(settings.options.get("copies", 1))
    jobs, split = settings.jobs, settings.split
    train, validation = split.part(jobs, "train"), split.part(jobs, "validation")
    test = split.part(jobs, "test")
    models = {
        "full-record": _fit(config, train, validation),
        "partial-records": _fit(
            config,
            augment_partial(train, copies=copies, seed=config.seed),
            augment_partial(validation, copies=copies, seed=config.seed + 1),
        ),
    }
    times = event_times(test)
    end_times = times[STAGE_NAMES[-1]].to_numpy()
    anomalous = test["label"].to_numpy() == 1
    rows, earliest_rows, gained_rows = [], [], []
    for method, detector in models.items():
        flagged_at = np.full(len(test), -1)
        for index, stage in enumerate(STAGE_NAMES):
            scores = score_partial(detector, test, stage)
            metrics = _binary_metrics(detector, test, scores)
            rows.append({"method": method, "stage": stage, **metrics})
            newly = (scores >= detector.threshold_) & (flagged_at < 0)
            flagged_at[newly] = index
        for index, stage in enumerate([*STAGE_NAMES, "never"]):
            code = index if stage != "never" else -1
            earliest_rows.append(
                {
                    "method": method,
                    "stage": stage,
                    "anomalous_jobs": int(((flagged_at == code) & anomalous).sum()),
                }
            )
        caught = anomalous & (flagged_at >= 0)
        stage_times = times.to_numpy()[np.flatnonzero(caught), flagged_at[caught]]
        gained = end_times[caught] - stage_times
        gained_rows.append(
            {
                "method": method,
                "anomalous_jobs": int(anomalous.sum()),
                "flagged": int(caught.sum()),
                "median_seconds_gained": (
                    float(np.median(gained)) if len(gained) else np.nan
                ),
                "mean_seconds_gained": (
                    float(np.mean(gained)) if len(gained) else np.nan
                ),
                "median_job_seconds": (
                    float(
                        np.median(
                            end_times[anomalous] - times["ready"].to_numpy()[anomalous]
                        )
                    )
                    if anomalous.any()
                    else np.nan
                ),
            }
        )
    table = pd.DataFrame(rows)
    earliest = pd.DataFrame(earliest_rows)
    plots = [
        _plot_stage_lines(table, settings.out / "f1_per_stage.png"),
        _plot_earliest(earliest, settings.out / "earliest_stage.png"),
    ]
    extra = {"earliest_stage": earliest, "time_gained": pd.DataFrame(gained_rows)}
    return table, extra, plots


def _plot_stage_lines(table: pd.DataFrame, path: Path) -> Path:
    """Plot F1 per stage, one line per method."""
    figure, axes = _new_figure()
    for method, rows in table.groupby("method", sort=False):
        axes.plot(rows["stage"], rows["f1"], marker="o", label=method)
    axes.set_xlabel("lifecycle stage (record known up to its end)")
    axes.set_ylabel("F1 on test jobs")
    axes.set_ylim(0, 1)
    axes.tick_params(axis="x", rotation=30)
    axes.legend()
    figure.savefig(path, dpi=120)
    return path


def _plot_earliest(earliest: pd.DataFrame, path: Path) -> Path:
    """Plot a histogram of the earliest flagging stage per method."""
    figure, axes = _new_figure()
    methods = list(dict.fromkeys(earliest["method"]))
    stages = list(dict.fromkeys(earliest["stage"]))
    width = 0.8 / max(len(methods), 1)
    positions = np.arange(len(stages))
    for offset, method in enumerate(methods):
        counts = earliest[earliest["method"] == method].set_index("stage")[
            "anomalous_jobs"
        ]
        axes.bar(
            positions + offset * width,
            counts.reindex(stages).to_numpy(),
            width,
            label=method,
        )
    axes.set_xticks(positions + width * (len(methods) - 1) / 2, stages, rotation=30)
    axes.set_ylabel("anomalous test jobs")
    axes.set_title("earliest stage at which a job is flagged")
    axes.legend()
    figure.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------- types


def _known_classes(
    train: pd.DataFrame, validation: pd.DataFrame, column: str
) -> pd.DataFrame:
    """Drop validation jobs of classes absent from training, with a warning."""
    known = set(train[column].astype(str))
    keep = validation[column].astype(str).isin(known).to_numpy()
    if not keep.all():
        logger.warning(
            "Dropped %d validation job(s) of classes not in the training part: %s",
            int((~keep).sum()),
            sorted(set(validation[column].astype(str)) - known),
        )
    return validation[keep]


def _experiment_types(settings: ExperimentSettings) -> tuple:
    """Multi-class detectors (kind and level); per-class metrics, confusion matrices.

    Options: ``label_columns`` (default ``("anomaly_kind", "anomaly_type")``).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    jobs, split = settings.jobs, settings.split
    train, validation = split.part(jobs, "train"), split.part(jobs, "validation")
    test = split.part(jobs, "test")
    columns = settings.options.get("label_columns") or ("anomaly_kind", "anomaly_type")
    rows, extra, plots = [], {}, []
    for column in columns:
        config = dataclasses.replace(settings.config, label_column=column)
        detector = _fit(config, train, _known_classes(train, validation, column))
        probabilities = detector.predict_classes(test)
        predicted = np.asarray(detector.label_names_)[probabilities.argmax(axis=1)]
        truth = test[column].astype(str).to_numpy()
        classes = list(detector.label_names_) + sorted(
            set(truth) - set(detector.label_names_)
        )
        precision, recall, f1, support = precision_recall_fscore_support(
            truth, predicted, labels=classes, zero_division=0
        )
        for index, name in enumerate(classes):
            rows.append(
                {
                    "method": column,
                    "class": name,
                    "precision": float(precision[index]),
                    "recall": float(recall[index]),
                    "f1": float(f1[index]),
                    "support": int(support[index]),
                }
            )
        present = [i for i, name in enumerate(classes) if support[i] > 0]
        rows.append(
            {
                "method": column,
                "class": "macro (classes in test)",
                "precision": float(np.mean(precision[present])),
                "recall": float(np.mean(recall[present])),
                "f1": float(np.mean(f1[present])),
                "support": int(support.sum()),
            }
        )
        binary = _binary_metrics(detector, test, 1.0 - probabilities[:, 0])
        rows.append(
            {
                "method": column,
                "class": "anomalous (binary)",
                **binary,
                "support": int(test["label"].sum()),
            }
        )
        matrix = confusion_matrix(truth, predicted, labels=classes)
        frame = pd.DataFrame(matrix, columns=[f"predicted {name}" for name in classes])
        frame.insert(0, "true class", classes)
        extra[f"confusion_{column}"] = frame
        plots.append(
            _plot_confusion(
                matrix, classes, settings.out / f"confusion_{column}.png", column
            )
        )
    table = pd.DataFrame(rows).drop(columns=["roc_auc"], errors="ignore")
    return table, extra, plots


def _plot_confusion(
    matrix: np.ndarray, classes: list[str], path: Path, title: str
) -> Path:
    """Plot a confusion matrix with counts in the cells."""
    figure, axes = _new_figure(1.2 * len(classes) + 2, 1.0 * len(classes) + 1.5)
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=30)
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for row in range(len(classes)):
        for column in range(len(classes)):
            axes.text(column, row, str(matrix[row, column]), ha="center", va="center")
    figure.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------- imbalance


def balanced_sample(jobs: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Oversample anomalous jobs (with replacement) to as many as normal ones.

    Duplicated rows share their run, so run-context templates would count
    them twice; use this with templates without run context.
    """
    labels = jobs["label"].to_numpy()
    normal = np.flatnonzero(labels == 0)
    anomalous = np.flatnonzero(labels == 1)
    if len(anomalous) == 0 or len(normal) == 0:
        raise ValueError(
            f"balanced sampling needs both classes, got {len(normal)} normal and "
            f"{len(anomalous)} anomalous jobs"
        )
    rng = np.random.default_rng(seed)
    larger, smaller = (
        (normal, anomalous) if len(normal) >= len(anomalous) else (anomalous, normal)
    )
    extra = rng.choice(smaller, size=len(larger) - len(smaller), replace=True)
    positions = np.sort(np.concatenate([larger, smaller, extra]))
    return jobs.iloc[positions].reset_index(drop=True)


def _experiment_imbalance(settings: ExperimentSettings) -> tuple:
    """Plain training, class-weighted loss and balanced sampling; F1 and PR-AUC."""
    from sklearn.metrics import precision_recall_curve

    jobs, split, config = settings.jobs, settings.split, settings.config
    train, validation = split.part(jobs, "train"), split.part(jobs, "validation")
    test = split.part(jobs, "test")
    methods = {
        "plain": (dataclasses.replace(config, class_weight=None), train),
        "class-weighted": (dataclasses.replace(config, class_weight="balanced"), train),
        "balanced-sampling": (
            dataclasses.replace(config, class_weight=None),
            balanced_sample(train, seed=config.seed),
        ),
    }
    rows, curves = [], {}
    for method, (method_config, method_train) in methods.items():
        detector = _fit(method_config, method_train, validation)
        scores = detector.predict_proba(test)
        rows.append(
            {
                "method": method,
                "train_anomalous_share": float(method_train["label"].mean()),
                **_binary_metrics(detector, test, scores),
            }
        )
        curves[method] = precision_recall_curve(test["label"].to_numpy(), scores)
    figure, axes = _new_figure()
    for method, (precision, recall, _) in curves.items():
        axes.plot(recall, precision, label=method)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("precision-recall on test jobs")
    axes.legend()
    path = settings.out / "precision_recall.png"
    figure.savefig(path, dpi=120)
    return pd.DataFrame(rows), {}, [path]


# ---------------------------------------------------------------- lora


def _lora_method(method: str, config: FinetuneConfig, options: dict) -> tuple:
    """Return detector class, detector options and config of one LoRA method."""
    from flowad.lora import LoraDetector, smollm2_model_folder

    lora_options = {"rank": int(options.get("rank", 8))}
    lora_rate = float(options.get("lora_learning_rate", 5e-4))
    if method == "full":
        return TextClassifierDetector, {}, config
    if method == "lora-encoder":
        return (
            LoraDetector,
            lora_options,
            dataclasses.replace(config, learning_rate=lora_rate),
        )
    if method == "lora-smollm2":
        folder = smollm2_model_folder(cache_dir=options.get("cache_dir"))
        return (
            LoraDetector,
            lora_options,
            dataclasses.replace(config, model=str(folder), learning_rate=lora_rate),
        )
    raise ValueError(
        f"unknown lora-experiment method {method!r}; choose from "
        "{full, lora-encoder, lora-smollm2}"
    )


def _lora_run(
    method: str,
    config: FinetuneConfig,
    options: dict,
    train,
    validation,
    test,
    out: Path,
) -> dict:
    """Fit, save and score one method; return its table row."""
    detector_class, detector_options, method_config = _lora_method(
        method, config, options
    )
    started = time.perf_counter()
    detector = _fit(
        method_config,
        train,
        validation,
        detector_class=detector_class,
        **detector_options,
    )
    seconds = time.perf_counter() - started
    model_dir = out / f"model-{method}"
    detector.save(model_dir)
    weights = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    if hasattr(detector, "trainable_parameters_"):
        trainable, total = detector.trainable_parameters_, detector.total_parameters_
    else:
        total = sum(p.numel() for p in detector.model_.parameters())
        trainable = sum(
            p.numel() for p in detector.model_.parameters() if p.requires_grad
        )
    return {
        "method": method,
        "model": detector.metadata_.get("base_model"),
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "adapter_mb": weights / 2**20,
        "train_seconds": seconds,
        "peak_memory_mb": _peak_memory_mb(),
        **_binary_metrics(detector, test),
    }


def _experiment_lora(settings: ExperimentSettings) -> tuple:
    """Full fine-tuning against LoRA; parameters, F1, time, memory, saved size.

    Options: ``methods`` (default ``("full", "lora-encoder")``; add
    ``"lora-smollm2"`` for the decoder), ``rank`` (default 8),
    ``lora_learning_rate`` (default 5e-4), ``isolate`` (default True). With
    ``isolate`` each method is fitted in a fresh process, so ``peak_memory_mb``
    is its own peak. Without it, the peak of the current process so far is
    reported.
    """
    jobs, split, config = settings.jobs, settings.split, settings.config
    train, validation = split.part(jobs, "train"), split.part(jobs, "validation")
    test = split.part(jobs, "test")
    methods = settings.options.get("methods") or ("full", "lora-encoder")
    isolate = bool(settings.options.get("isolate", True))
    rows = []
    for method in methods:
        arguments = (
            method,
            config,
            dict(settings.options),
            train,
            validation,
            test,
            settings.out,
        )
        if isolate:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(1) as pool:
                rows.append(pool.apply(_lora_run, arguments))
        else:
            rows.append(_lora_run(*arguments))
    table = pd.DataFrame(rows)
    table["memory_measured"] = "own process" if isolate else "process peak so far"
    figure, axes = _new_figure()
    axes.scatter(table["trainable_parameters"], table["f1"])
    for row in table.itertuples():
        axes.annotate(row.method, (row.trainable_parameters, row.f1))
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters")
    axes.set_ylabel("F1 on test jobs")
    path = settings.out / "lora_parameters_f1.png"
    figure.savefig(path, dpi=120)
    return table, {}, [path]


# ---------------------------------------------------------------- transfer


def subsample_runs(
    jobs: pd.DataFrame, fraction: float, *, seed: int = 0
) -> pd.DataFrame:
    """Keep a seeded fraction of the runs, at least one run per run label.

    Runs are drawn within each run label (normal, cpu_K, hdd_K), so a small
    fraction still contains anomalous runs.
    """
    from flowad.data import run_labels

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = run_labels(jobs)
    rng = np.random.default_rng(seed)
    chosen = []
    for _, runs in labels.groupby(labels, sort=True):
        names = np.sort(runs.index.to_numpy())
        count = max(1, int(round(fraction * len(names))))
        chosen.extend(rng.choice(names, size=count, replace=False))
    return jobs[jobs["run"].isin(set(chosen))]


def _experiment_transfer(settings: ExperimentSettings) -> tuple:
    """Train on A, test on B; fine-tune on B from A or from scratch per fraction.

    Options: ``fractions`` of B's training runs (default 0.01, 0.05, 0.2, 1.0).
    """
    source, source_split = settings.jobs, settings.split
    target, target_split = settings.target_jobs, settings.target_split
    config = settings.config
    fractions = tuple(settings.options.get("fractions") or DEFAULT_FRACTIONS)
    source_name, target_name = _workflow_name(source), _workflow_name(target)
    target_train = target_split.part(target, "train")
    target_validation = target_split.part(target, "validation")
    target_test = target_split.part(target, "test")

    source_model = _fit(
        config,
        source_split.part(source, "train"),
        source_split.part(source, "validation"),
    )
    source_dir = settings.out / "source-model"
    source_model.save(source_dir)
    rows = [
        {
            "method": "source only (no target training)",
            "workflow": f"{source_name} -> {target_name}",
            "start": source_name,
            "fraction": 0.0,
            "train_runs": 0,
            "train_jobs": 0,
            **_binary_metrics(source_model, target_test),
        },
        {
            "method": "source on its own test",
            "workflow": source_name,
            "start": "pretrained",
            "fraction": np.nan,
            "train_runs": int(source_split.part(source, "train")["run"].nunique()),
            "train_jobs": int(len(source_split.part(source, "train"))),
            **_binary_metrics(source_model, source_split.part(source, "test")),
        },
    ]
    for fraction in fractions:
        train = subsample_runs(target_train, fraction, seed=config.seed)
        for start, model in (
            ("pretrained", config.model),
            (source_name, str(source_dir)),
        ):
            detector = _fit(
                dataclasses.replace(config, model=model), train, target_validation
            )
            rows.append(
                {
                    "method": f"fine-tune on target from {start}",
                    "workflow": f"{source_name} -> {target_name}",
                    "start": start,
                    "fraction": fraction,
                    "train_runs": int(train["run"].nunique()),
                    "train_jobs": int(
                        min(len(train), config.max_train_jobs or len(train))
                    ),
                    **_binary_metrics(detector, target_test),
                }
            )
    table = pd.DataFrame(rows)
    figure, axes = _new_figure()
    curves = table[table["fraction"] > 0]
    for start, part in curves.groupby("start", sort=False):
        axes.plot(part["fraction"] * 100, part["f1"], marker="o", label=f"from {start}")
    zero_shot = table.iloc[0]["f1"]
    axes.axhline(zero_shot, linestyle="--", color="grey", label=f"{source_name} only")
    axes.set_xscale("log")
    axes.set_xlabel(f"% of {target_name} training runs")
    axes.set_ylabel(f"F1 on {target_name} test jobs")
    axes.set_ylim(0, 1)
    axes.legend()
    path = settings.out / "label_efficiency.png"
    figure.savefig(path, dpi=120)
    return table, {}, [path]


# ---------------------------------------------------------------- transfer matrix


def _parse_pairs(pairs, workflows: Sequence[str]) -> list[tuple[str, str]]:
    """Turn ``"A:B"`` strings (or 2-tuples) into checked (source, target) pairs.

    A name may also be spelled as its archive is (``predict_future_sales``
    or ``1000genome`` for the workflows ``predict-future-sales`` and
    ``1000-genome``): hyphens and underscores are ignored when matching.
    """

    def key(name: str) -> str:
        return name.replace("-", "").replace("_", "")

    spellings = {key(name): name for name in workflows}
    parsed = []
    for pair in pairs:
        if not isinstance(pair, str):
            pair = ":".join(pair)
        source, separator, target = pair.partition(":")
        source = spellings.get(key(source), source)
        target = spellings.get(key(target), target)
        if not separator or not source or not target:
            raise ValueError(
                f"invalid pair {pair!r}: expected 'SOURCE:TARGET', for example "
                f"'{workflows[0]}:{workflows[1]}'"
            )
        unknown = sorted({source, target} - set(workflows))
        if unknown:
            raise ValueError(
                f"pair {pair!r} names workflow(s) {unknown} that are not in the "
                f"jobs. Choose among {list(workflows)}"
            )
        if source == target:
            raise ValueError(
                f"pair {pair!r} fine-tunes a workflow on itself, but the diagonal "
                "is always the workflow's own model. List only pairs of two "
                "different workflows"
            )
        parsed.append((source, target))
    return list(dict.fromkeys(parsed))


def _workflow_parts(
    jobs: pd.DataFrame,
    *,
    split: Split,
    max_test_jobs: int | None,
) -> dict[str, pd.DataFrame]:
    """Split one workflow's jobs on their own and subsample validation and test.

    The subsample is label-stratified and seeded with the split's seed, so a
    small ``max_test_jobs`` still keeps anomalous jobs in both parts.
    """
    from flowad.icl import stratified_sample

    workflow = _workflow_name(jobs)
    own_split = make_split(jobs, split.name, seed=split.seed)
    parts = {part: own_split.part(jobs, part) for part in PART_NAMES}
    for part, rows in parts.items():
        if len(rows) == 0:
            raise ValueError(
                f"workflow {workflow!r} has no {part} jobs under the {split.name!r} "
                f"split ({jobs['run'].nunique()} runs); give it more runs or use "
                "split='rows'"
            )
    if max_test_jobs is not None:
        for part in ("validation", "test"):
            rows = parts[part]
            keep = stratified_sample(
                rows["label"].to_numpy(), max_test_jobs, seed=split.seed
            )
            parts[part] = rows.iloc[keep]
    return parts


def _cell(
    source: str,
    target: str,
    setting: str,
    *,
    test: pd.DataFrame,
    test_scores: np.ndarray,
    validation: pd.DataFrame,
    validation_scores: np.ndarray,
    threshold: float,
) -> dict:
    """Return one long-table row: test and validation metrics at ``threshold``."""
    test_metrics = compute_metrics(
        test["label"].to_numpy(), test_scores, threshold=threshold
    )
    validation_metrics = compute_metrics(
        validation["label"].to_numpy(), validation_scores, threshold=threshold
    )
    return {
        "source": source,
        "target": target,
        "setting": setting,
        **{
            key: np.nan if test_metrics[key] is None else test_metrics[key]
            for key in ("f1", "roc_auc", "pr_auc")
        },
        "threshold": threshold,
        "validation_f1": validation_metrics["f1"],
        "test_jobs": len(test),
        "validation_jobs": len(validation),
    }


def _zero_shot_rows(
    source: str,
    model: TextClassifierDetector,
    parts: dict[str, dict[str, pd.DataFrame]],
) -> list[dict]:
    """Score one workflow's model on every workflow, at both thresholds.

    The row of its own workflow is also the diagonal of the fine-tuned matrix.
    """
    from flowad.evaluate import choose_threshold

    rows = []
    for target, target_parts in parts.items():
        validation, test = target_parts["validation"], target_parts["test"]
        scores = {
            "test_scores": model.predict_proba(test),
            "validation_scores": model.predict_proba(validation),
            "test": test,
            "validation": validation,
        }
        # Re-choosing the threshold changes no weight: an operator can do it
        # with a few labelled runs of the target workflow.
        target_threshold = choose_threshold(
            validation["label"].to_numpy(), scores["validation_scores"]
        )
        rows.append(
            _cell(
                source, target, ZERO_SHOT_SOURCE, threshold=model.threshold_, **scores
            )
        )
        rows.append(
            _cell(
                source, target, ZERO_SHOT_TARGET, threshold=target_threshold, **scores
            )
        )
        if target == source:
            # The diagonal of the fine-tuned matrix is the workflow's own model.
            rows.append(
                _cell(source, target, FINE_TUNED, threshold=model.threshold_, **scores)
            )
    return rows


def _fine_tuned_row(
    source: str,
    target: str,
    model: TextClassifierDetector,
    target_parts: dict[str, pd.DataFrame],
) -> dict:
    """Score a model fitted on ``target`` on its test part, at its own threshold."""
    validation, test = target_parts["validation"], target_parts["test"]
    return _cell(
        source,
        target,
        FINE_TUNED,
        test=test,
        test_scores=model.predict_proba(test),
        validation=validation,
        validation_scores=model.predict_proba(validation),
        threshold=model.threshold_,
    )


def transfer_matrices(
    table: pd.DataFrame, workflows: Sequence[str], *, metric: str = "f1"
) -> dict[str, pd.DataFrame]:
    """Pivot the long transfer-matrix table into one wide matrix per setting.

    Rows are source workflows (trained on), columns target workflows (tested
    on). A cell absent from ``table`` is NaN.
    """
    matrices = {}
    for setting in TRANSFER_SETTINGS:
        rows = table[table["setting"] == setting]
        wide = (
            rows.pivot(index="source", columns="target", values=metric)
            .reindex(index=list(workflows), columns=list(workflows))
            .astype(float)
        )
        wide.columns.name = None
        matrices[setting] = wide.rename_axis("source").reset_index()
    return matrices


def _plot_matrix(matrix: pd.DataFrame, path: Path, *, title: str) -> Path:
    """Draw a heatmap with the value in each cell ("-" for a cell not run)."""
    workflows = list(matrix["source"])
    values = matrix.drop(columns="source").to_numpy(dtype=float)
    size = 1.2 + 0.9 * len(workflows)
    figure, axes = _new_figure(size + 1.5, size)
    from matplotlib import colormaps

    colormap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = axes.imshow(np.ma.masked_invalid(values), vmin=0, vmax=1, cmap=colormap)
    for row, column in np.ndindex(values.shape):
        value = values[row, column]
        axes.text(
            column,
            row,
            "-" if np.isnan(value) else f"{value:.2f}",
            ha="center",
            va="center",
            color="black" if np.isnan(value) or value > 0.6 else "white",
        )
    axes.set_xticks(np.arange(len(workflows)), workflows, rotation=30, ha="right")
    axes.set_yticks(np.arange(len(workflows)), workflows)
    axes.set_xlabel("target workflow (tested on)")
    axes.set_ylabel("source workflow (trained on)")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="F1 on target test jobs")
    figure.savefig(path, dpi=120)
    return path


def _experiment_transfer_matrix(settings: ExperimentSettings) -> tuple:
    """Zero-shot and fine-tuned F1 for every ordered pair of workflows.

    Each workflow is split on its own with the experiment's split and seed,
    and one model per workflow is trained and saved under
    ``models/<workflow>/``. Every model is scored on every workflow's test
    part at its own threshold and at a threshold re-chosen on the target's
    validation part. For each pair A != B, A's model is then fine-tuned on
    B's training part and scored at the threshold chosen on B's validation
    part. The fine-tuned models are not saved. The diagonal of the
    fine-tuned matrix is B's own model.

    Options: ``pairs`` (``"A:B"`` strings restricting the fine-tunes; default
    every ordered pair), ``max_test_jobs`` (label-stratified subsample of each
    workflow's validation and test parts; default ``None``, all jobs).
    """
    jobs, config = settings.jobs, settings.config
    workflows = sorted(jobs["workflow"].astype(str).unique())
    if len(workflows) < 2:
        raise ValueError(
            f"transfer-matrix needs jobs of at least two workflows, found "
            f"{workflows}; pass the runs of several workflows (--data a.zip b.zip)"
        )
    if settings.split.name == "paper":
        raise ValueError(
            "transfer-matrix splits each workflow on its own, which the published "
            "'paper' split cannot do; use split 'runs' or 'rows'"
        )
    max_test_jobs = settings.options.get("max_test_jobs")
    if max_test_jobs is not None and int(max_test_jobs) < 1:
        raise ValueError(
            f"max_test_jobs must be None or at least 1, got {max_test_jobs}"
        )
    pairs = settings.options.get("pairs")
    pairs = (
        [(a, b) for a in workflows for b in workflows if a != b]
        if pairs is None
        else _parse_pairs(pairs, workflows)
    )

    parts = {
        workflow: _workflow_parts(
            jobs[jobs["workflow"].astype(str) == workflow],
            split=settings.split,
            max_test_jobs=None if max_test_jobs is None else int(max_test_jobs),
        )
        for workflow in workflows
    }
    rows = []
    for source in workflows:
        logger.info("Training the %s model", source)
        model = _fit(config, parts[source]["train"], parts[source]["validation"])
        model.save(settings.out / "models" / source)
        rows += _zero_shot_rows(source, model, parts)
    for number, (source, target) in enumerate(pairs, start=1):
        logger.info(
            "Fine-tuning the %s model on %s (%d of %d)",
            source,
            target,
            number,
            len(pairs),
        )
        start = dataclasses.replace(config, model=str(settings.out / "models" / source))
        model = _fit(start, parts[target]["train"], parts[target]["validation"])
        rows.append(_fine_tuned_row(source, target, model, parts[target]))

    table = pd.DataFrame(rows).sort_values(["source", "target"], kind="stable")
    table = table.reset_index(drop=True)
    settings.meta["workflows"] = workflows
    settings.meta["fine_tuned_pairs"] = len(pairs)
    settings.meta["max_test_jobs"] = max_test_jobs
    for part in ("validation", "test"):
        settings.meta[f"{part}_jobs"] = {
            workflow: len(parts[workflow][part]) for workflow in workflows
        }
    matrices = transfer_matrices(table, workflows)
    plots = [
        _plot_matrix(
            matrix,
            settings.out / f"transfer_{MATRIX_NAMES[setting]}.png",
            title=f"F1, {setting}",
        )
        for setting, matrix in matrices.items()
    ]
    extra = {MATRIX_NAMES[setting]: matrix for setting, matrix in matrices.items()}
    return table, extra, plots


# ---------------------------------------------------------------- forgetting


def _experiment_forgetting(settings: ExperimentSettings) -> tuple:
    """Fine-tune on A, then on B; F1 on A before and after, with mitigations.

    ``f1_after`` uses the fine-tuned model's threshold, chosen on B's
    validation jobs; ``f1_after_own_threshold`` re-chooses the threshold on
    A's validation jobs, which separates lost ranking from a moved threshold.

    Options: ``freeze_layers`` (N of the ``last-N`` mitigation, default 2),
    ``replay_fraction`` (share of A's training jobs mixed into B's training
    jobs, default 0.1).
    """
    source, source_split = settings.jobs, settings.split
    target, target_split = settings.target_jobs, settings.target_split
    config = settings.config
    freeze_layers = int(settings.options.get("freeze_layers", 2))
    replay_fraction = float(settings.options.get("replay_fraction", 0.1))
    source_name, target_name = _workflow_name(source), _workflow_name(target)
    source_train = source_split.part(source, "train")
    source_validation = source_split.part(source, "validation")
    source_test = source_split.part(source, "test")
    target_train = target_split.part(target, "train")
    target_validation = target_split.part(target, "validation")
    target_test = target_split.part(target, "test")

    source_model = _fit(config, source_train, source_validation)
    source_dir = settings.out / "source-model"
    source_model.save(source_dir)
    before = _binary_metrics(source_model, source_test)
    before_target = _binary_metrics(source_model, target_test)

    rng = np.random.default_rng(config.seed)
    replay_count = int(round(replay_fraction * len(source_train)))
    replayed = source_train.iloc[
        np.sort(rng.choice(len(source_train), replay_count, replace=False))
    ]
    sequential = dataclasses.replace(config, model=str(source_dir))
    methods = {
        "plain": (sequential, target_train),
        "freeze encoder (head only)": (
            dataclasses.replace(sequential, freeze="encoder"),
            target_train,
        ),
        f"freeze all but last {freeze_layers} layers": (
            dataclasses.replace(sequential, freeze=f"last-{freeze_layers}"),
            target_train,
        ),
        f"replay {replay_fraction:.0%} of {source_name}": (
            sequential,
            pd.concat([target_train, replayed]),
        ),
    }
    rows = [
        {
            "method": f"{source_name} model (before)",
            "workflow": f"{source_name} -> {target_name}",
            "f1_before": before["f1"],
            "f1_after": before["f1"],
            "pr_auc_before": before["pr_auc"],
            "pr_auc_after": before["pr_auc"],
            "forgetting": 0.0,
            "f1_after_own_threshold": before["f1"],
            "target_f1": before_target["f1"],
            "target_pr_auc": before_target["pr_auc"],
        }
    ]
    for method, (method_config, train) in methods.items():
        detector = _fit(method_config, train, target_validation)
        source_scores = detector.predict_proba(source_test)
        after = _binary_metrics(detector, source_test, source_scores)
        # The fine-tuned model keeps the threshold chosen on the target's
        # validation jobs; an operator can keep one threshold per workflow.
        own_threshold = choose_threshold(
            source_validation["label"].to_numpy(), detector.predict_proba(source_validation)
        )
        after_own = compute_metrics(
            source_test["label"].to_numpy(), source_scores, threshold=own_threshold
        )["f1"]
        after_target = _binary_metrics(detector, target_test)
        rows.append(
            {
                "method": method,
                "workflow": f"{source_name} -> {target_name}",
                "f1_before": before["f1"],
                "f1_after": after["f1"],
                "pr_auc_before": before["pr_auc"],
                "pr_auc_after": after["pr_auc"],
                "forgetting": before["f1"] - after["f1"],
                "f1_after_own_threshold": after_own,
                "target_f1": after_target["f1"],
                "target_pr_auc": after_target["pr_auc"],
            }
        )
    table = pd.DataFrame(rows)
    figure, axes = _new_figure(7, 4)
    positions = np.arange(len(table))
    axes.bar(positions - 0.2, table["f1_after"], 0.4, label=f"F1 on {source_name}")
    axes.bar(positions + 0.2, table["target_f1"], 0.4, label=f"F1 on {target_name}")
    axes.set_xticks(positions, table["method"], rotation=20, ha="right")
    axes.set_ylim(0, 1)
    axes.legend()
    path = settings.out / "forgetting.png"
    figure.savefig(path, dpi=120)
    return table, {}, [path]


# ---------------------------------------------------------------- registry


EXPERIMENTS = {
    experiment.name: experiment
    for experiment in (
        Experiment(
            "online",
            "F1 per lifecycle stage and earliest flagging stage.",
            _experiment_online,
        ),
        Experiment(
            "types", "Multi-class detectors and confusion matrices.", _experiment_types
        ),
        Experiment(
            "imbalance",
            "Class-weighted loss and balanced sampling.",
            _experiment_imbalance,
        ),
        Experiment("lora", "LoRA adapters against full fine-tuning.", _experiment_lora),
        Experiment(
            "transfer",
            "Train on A, test and fine-tune on B.",
            _experiment_transfer,
            needs_target=True,
        ),
        Experiment(
            "transfer-matrix",
            "Zero-shot and fine-tuned F1 for every pair of workflows.",
            _experiment_transfer_matrix,
        ),
        Experiment(
            "forgetting",
            "F1 on A after fine-tuning on B.",
            _experiment_forgetting,
            needs_target=True,
        ),
    )
}


def run_experiment(
    name: str,
    jobs: pd.DataFrame,
    *,
    out: str | Path,
    config: FinetuneConfig | None = None,
    split: str = "runs",
    seed: int = 0,
    paper_dir: str | Path | None = None,
    target_jobs: pd.DataFrame | None = None,
    options: dict | None = None,
    meta: dict | None = None,
) -> ExperimentResult:
    """Run one registered experiment and write its tables and plots.

    Parameters
    ----------
    name
        Experiment name: {online, types, imbalance, lora, transfer,
        transfer-matrix, forgetting}.
    jobs
        Job table (workflow A for ``transfer`` and ``forgetting``; several
        workflows for ``transfer-matrix``).
    out
        Output folder, created if needed.
    config
        Base fine-tuning configuration (default :class:`FinetuneConfig`).
    split
        Split of ``jobs`` (and of ``target_jobs``): {runs, rows, paper}.
        ``transfer-matrix`` applies it to each workflow on its own and
        rejects ``paper``.
    seed
        Seed of the split.
    paper_dir
        Folder of the published splits, for ``split="paper"``.
    target_jobs
        Job table of workflow B; required by ``transfer`` and ``forgetting``.
    options
        Experiment-specific options, listed in each experiment's docstring.
    meta
        Provenance for ``table.md`` and ``result.json`` (data paths ...).

    Returns
    -------
    ExperimentResult
    """
    if name not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}"
        )
    experiment = EXPERIMENTS[name]
    if experiment.needs_target and target_jobs is None:
        raise ValueError(
            f"experiment {name!r} needs a second workflow; pass target_jobs "
            "(--target-data on the command line)"
        )
    config = config or FinetuneConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split_object = make_split(jobs, split, seed=seed, paper_dir=paper_dir)
    target_split = None
    if target_jobs is not None:
        # The published splits exist per workflow; B always gets a run split.
        target_split = make_split(
            target_jobs, "runs" if split == "paper" else split, seed=seed
        )
    settings = ExperimentSettings(
        jobs=jobs,
        split=split_object,
        config=config,
        out=out,
        target_jobs=target_jobs,
        target_split=target_split,
        options=dict(options or {}),
        meta={
            "workflow": _workflow_name(jobs),
            **(
                {"target_workflow": _workflow_name(target_jobs)}
                if target_jobs is not None
                else {}
            ),
            "split": split,
            "seed": seed,
            "model": config.model or "all-MiniLM-L6-v2 (packaged)",
            "template": config.template,
            "num_epochs": config.num_epochs,
            "max_train_jobs": config.max_train_jobs,
            "max_validation_jobs": config.max_validation_jobs,
            **(meta or {}),
        },
    )
    started = time.perf_counter()
    logger.info("Running experiment %r into %s", name, out)
    table, extra_tables, plots = experiment.function(settings)
    settings.meta["seconds"] = round(time.perf_counter() - started, 1)
    _write_outputs(name, settings, table, extra_tables)
    return ExperimentResult(name, table, extra_tables, list(plots), out)


def experiment_names() -> Sequence[str]:
    """Return the names of the registered experiments."""
    return sorted(EXPERIMENTS)
