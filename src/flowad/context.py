"""Run-context features and the sentence templates built on them.

A job record alone carries little signal: a runtime of 2,000 s is normal for
one transformation and slow for another, and a slow run may be slow
everywhere. Flow-Bench injects anomalies per executor host (a container such
as ``poseidon-worker-2-container-8-11``): in an anomalous run every compute job
on an affected container carries the label and no other job does. So the
useful evidence compares a job with the same transformation elsewhere in its
run, and a host with the other hosts of that run.

:func:`context_features` computes that evidence from the records only. It never
reads ``LABEL_COLUMNS``, so the features of a job table do not change when its
labels change. All statistics are per run: a job's features depend only on the
jobs of its own run.

The measures (``MEASURES``) are runtime, CPU time, stage-in and stage-out
delay, CPU share (CPU time over runtime), queue delay and stage-in rate
(bytes over delay). For each measure a job gets:

``<measure>_ratio``
    The job's value over the median of its transformation in its run.
``<measure>_ratio_others``
    The job's value over the median of its transformation on the *other*
    hosts of the run (median of the per-host medians), so that a host with many
    jobs does not pull its own reference.

and its host (all jobs of that host in the run) gets:

``host_<measure>_median``, ``host_<measure>_max``
    Median and maximum of ``<measure>_ratio_others`` over the host's jobs.
``host_<measure>_share_high``
    Share of the host's jobs whose ``<measure>_ratio_others`` exceeds
    ``HIGH_RATIO`` (1.3).
``node_<measure>_median``, ``host_<measure>_vs_node``
    The same median over all containers of the host's machine, and the
    host's median over it.

plus ``is_compute``, ``run_hosts``, ``host_jobs``, ``host_jobs_ratio`` (over
the run's median jobs per host) and ``node_hosts``. The column names are listed
in ``CONTEXT_FEATURE_COLUMNS``.

Templates registered here, all with ``uses_run_context=True``:

``context``
    ``<transformation> <type>:`` runtime, CPU time, stage-in and stage-out with
    their ratio to the run median, then the host's job count and the median
    ratios of its jobs for runtime, stage-in and stage-out, and its share of
    slow jobs. 65 to 70 MiniLM word pieces per job on average (measured on five
    runs of each Flow-Bench workflow), against 83 to 92 for ``published``.
``context_short``
    Runtime, CPU time and stage-in only, host evidence for runtime and
    stage-in. 52 to 56 word pieces per job on average.
``context_job``
    The job part of ``context`` without host evidence, for the ablation.
    37 to 41 word pieces per job on average.
``context_terse``
    The ratios of ``context_short`` plus stage-out as whole percentages after
    one word each, no absolute values or units (``individuals run 100 cpu 99
    in 130 out 83 host 7 run 100 in 100 slow 0``): few word pieces for fast
    scoring.
``context_bare``
    The values of ``context_terse`` without their words
    (``individuals 100 99 130 83 7 100 100 0``), 11 word pieces per 1000genome job.
``context_full``
    ``context`` plus the job's CPU share ratio, the number of containers on
    the host's machine, the largest runtime, stage-in, CPU-share and queue
    ratios among the host's jobs, and the host's runtime and CPU share over
    its machine's (``node``). It drops the host's stage-out ratio, which
    gradient boosting hardly used. 97 to 102 word pieces per job on average
    (five runs of each of three workflows), at most 113 over all 1000genome
    runs, so sentences fit MiniLM's 128 without truncation there.

Splits that cut runs into parts (``rows``, ``paper``) leave each part with a
share of every run, so features computed on one part see only that share.
:func:`attach_context` computes the features once on the whole table and
stores them as ``context:<name>`` columns; rows taken from that table carry
them, and :func:`context_features` and the templates use them instead of
recomputing. Online scoring drops these columns (they describe whole runs).

Open tasks
----------
- Templates use every row passed in, so they do not take ``known``. Online
  scoring (:mod:`flowad.online`) renders each job together with the jobs of
  its run that finished earlier. ``known`` gives the same restriction to
  feature tables in one call.
- Statistics are per run only. A reference across runs (the typical runtime of
  a transformation) would help when most hosts of a run are affected, but it
  would have to be fitted on training runs and stored with the model.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from flowad.templates import (
    COMPACT_NAMES,
    PUBLISHED_FIELDS,
    Template,
    format_number,
    format_quantity,
    register_template,
)

logger = logging.getLogger(__name__)

# Measure name -> (numerator column, denominator column or None). A ratio
# measure is numerator / denominator of the same job.
MEASURES = {
    "runtime": ("runtime", None),
    "cpu": ("kickstart_executables_cpu_time", None),
    "stage_in": ("stage_in_delay", None),
    "stage_out": ("stage_out_delay", None),
    "cpu_share": ("kickstart_executables_cpu_time", "runtime"),
    "queue": ("queue_delay", None),
    "in_rate": ("stage_in_bytes", "stage_in_delay"),
}
# Added to value and reference before dividing, so that jobs of a few seconds
# or with zero delay do not give huge or undefined ratios. Durations are whole
# seconds in Flow-Bench, so 1 s is their resolution.
RATIO_OFFSETS = {
    "runtime": 1.0,
    "cpu": 1.0,
    "stage_in": 1.0,
    "stage_out": 1.0,
    "cpu_share": 0.01,
    "queue": 1.0,
    "in_rate": 1.0,
}
# A job is "high" on a measure when it exceeds the other hosts' median by 30 %.
HIGH_RATIO = 1.3
# Label columns, never read here.
LABEL_COLUMNS = ("label", "anomaly_type", "anomaly_kind", "anomaly_level")
REQUIRED_COLUMNS = (
    "run",
    "host",
    "transformation",
    "job_type",
    "runtime",
    "kickstart_executables_cpu_time",
    "stage_in_delay",
    "stage_out_delay",
    "stage_in_bytes",
    "queue_delay",
)
# A container host name such as ``poseidon-worker-2-container-8-11`` runs on
# the machine ``poseidon-worker-2``. In the montage hdd runs inspected, every
# container of the capped machine slowed down, labelled or not.
CONTAINER_SUFFIX = r"-container-[\w-]*$"


def _feature_columns() -> list[str]:
    """List the feature columns in output order."""
    columns = ["is_compute", "run_hosts", "host_jobs", "host_jobs_ratio", "node_hosts"]
    for measure in MEASURES:
        columns += [f"{measure}_ratio", f"{measure}_ratio_others"]
    for measure in MEASURES:
        columns += [
            f"host_{measure}_median",
            f"host_{measure}_max",
            f"host_{measure}_share_high",
            f"node_{measure}_median",
            f"host_{measure}_vs_node",
        ]
    return columns


CONTEXT_FEATURE_COLUMNS = tuple(_feature_columns())
# Prefix of the columns written by attach_context.
ATTACHED_PREFIX = "context:"
ATTACHED_COLUMNS = tuple(ATTACHED_PREFIX + name for name in CONTEXT_FEATURE_COLUMNS)


def _measure_values(jobs: pd.DataFrame, measure: str) -> np.ndarray:
    """Return one measure per job as floats (NaN where undefined)."""
    numerator, denominator = MEASURES[measure]
    values = jobs[numerator].to_numpy(dtype=float)
    if denominator is None:
        return values
    below = jobs[denominator].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = values / below
    share[~np.isfinite(share)] = np.nan
    return share


def _median_of_others(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Return, per row, the median of the other rows' values in its group.

    ``values`` must not contain NaN. A group of one row gets NaN. Works on the
    sorted order: removing the row at sorted position ``r`` shifts every later
    position down by one, so the median of the rest is read at adjusted indices.
    """
    order = np.lexsort((values, groups))
    sorted_groups = groups[order]
    sorted_values = values[order]
    starts_mask = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    starts = np.flatnonzero(starts_mask)
    sizes = np.diff(np.r_[starts, len(order)])
    group_index = np.cumsum(starts_mask) - 1
    start = starts[group_index]
    rest = sizes[group_index] - 1
    rank = np.arange(len(order)) - start

    def value_at(position: np.ndarray) -> np.ndarray:
        shifted = np.where(position < rank, position, position + 1)
        shifted = np.clip(shifted, 0, sizes[group_index] - 1)
        return sorted_values[start + shifted]

    low = value_at(np.maximum(rest - 1, 0) // 2)
    high = value_at(rest // 2)
    medians = np.where(rest % 2 == 1, low, (low + high) / 2)
    medians = np.where(rest == 0, np.nan, medians)
    result = np.empty(len(order))
    result[order] = medians
    return result


def _others_reference(
    frame: pd.DataFrame, values: pd.Series, group_keys: list[str]
) -> np.ndarray:
    """Return, per job, the median over other hosts of per-host medians.

    Hosts are compared within ``group_keys`` (run and transformation). A job
    whose transformation ran on one host only gets the plain median of that
    host, which makes its ratio 1 when it is the only job.
    """
    host_keys = [*group_keys, "host"]
    per_host = (
        pd.DataFrame({**{key: frame[key] for key in host_keys}, "value": values})
        .dropna(subset=["value"])
        .groupby(host_keys, sort=False, observed=True)["value"]
        .median()
        .reset_index()
    )
    if per_host.empty:
        return np.full(len(frame), np.nan)
    group_ids = per_host.groupby(group_keys, sort=False, observed=True).ngroup()
    per_host["others"] = _median_of_others(
        group_ids.to_numpy(), per_host["value"].to_numpy(dtype=float)
    )
    per_host["others"] = per_host["others"].fillna(per_host["value"])
    merged = frame[host_keys].merge(
        per_host[[*host_keys, "others"]], on=host_keys, how="left"
    )
    return merged["others"].to_numpy(dtype=float)


def _check_columns(jobs: pd.DataFrame) -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in jobs.columns]
    if missing:
        raise ValueError(
            f"context features need the column(s) {missing}; load jobs with "
            "flowad.data.load_jobs"
        )


def _check_known(jobs: pd.DataFrame, known) -> np.ndarray:
    """Return ``known`` as a boolean array aligned with ``jobs``."""
    if known is None:
        return np.ones(len(jobs), dtype=bool)
    if isinstance(known, pd.Series):
        if not known.index.equals(jobs.index):
            raise ValueError(
                "known must have the same index as jobs; build it from the job "
                "table, e.g. jobs['execute_end'] <= now"
            )
        known = known.to_numpy()
    mask = np.asarray(known)
    if mask.dtype != bool:
        raise TypeError(
            f"known must be a boolean mask, got dtype {mask.dtype}; pass e.g. "
            "jobs['execute_end'] <= now"
        )
    if mask.shape != (len(jobs),):
        raise ValueError(
            f"known must have one entry per job ({len(jobs)}), got shape "
            f"{mask.shape}"
        )
    return mask


def context_features(
    jobs: pd.DataFrame, *, known: pd.Series | np.ndarray | None = None
) -> pd.DataFrame:
    """Compute run-context features for every job.

    Parameters
    ----------
    jobs
        Job table from :func:`flowad.data.load_jobs`. Pass whole runs: the
        statistics of a run come from the rows of that run present here.
    known
        Optional boolean mask, one entry per job. Only jobs marked True
        contribute to medians, host counts and host aggregates (online scoring
        marks the jobs finished so far). Every job still gets features: its own
        values are compared with the statistics of the known jobs. Default:
        all jobs are known.

    Returns
    -------
    pandas.DataFrame
        Columns ``CONTEXT_FEATURE_COLUMNS`` (floats), index ``jobs.index``.
        A ratio is NaN where the job has no value or no known job of its
        transformation ran in the run.

    Raises
    ------
    ValueError
        If a required column is missing or ``known`` does not match ``jobs``.
    """
    if known is None and all(column in jobs.columns for column in ATTACHED_COLUMNS):
        attached = jobs[list(ATTACHED_COLUMNS)].astype(float)
        attached.columns = list(CONTEXT_FEATURE_COLUMNS)
        return attached
    _check_columns(jobs)
    mask = _check_known(jobs, known)
    hosts = jobs["host"].astype(str)
    frame = pd.DataFrame(
        {
            "run": jobs["run"].astype(str).to_numpy(),
            "host": hosts.to_numpy(),
            "node": hosts.str.replace(CONTAINER_SUFFIX, "", regex=True).to_numpy(),
            "transformation": jobs["transformation"].astype(str).to_numpy(),
        }
    )
    columns: dict[str, np.ndarray] = {
        "is_compute": (jobs["job_type"].astype(str) == "compute").to_numpy(float)
    }
    columns.update(_count_features(frame, mask))
    ratios_others = {}
    for measure in MEASURES:
        values = _measure_values(jobs, measure)
        known_values = pd.Series(np.where(mask, values, np.nan))
        offset = RATIO_OFFSETS[measure]
        run_median = (
            known_values.groupby([frame["run"], frame["transformation"]])
            .transform("median")
            .to_numpy(float)
        )
        others = _others_reference(frame, known_values, ["run", "transformation"])
        columns[f"{measure}_ratio"] = (values + offset) / (run_median + offset)
        ratios_others[measure] = (values + offset) / (others + offset)
        columns[f"{measure}_ratio_others"] = ratios_others[measure]
    for measure, ratio in ratios_others.items():
        columns.update(_host_features(frame, mask, measure, ratio))
    features = pd.DataFrame(columns, index=jobs.index)
    return features[list(CONTEXT_FEATURE_COLUMNS)].astype(float)


def attach_context(jobs: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``jobs`` with its context features as extra columns.

    The features are computed on every row passed in (pass whole runs) and
    stored under ``context:<name>``. Parts of the returned table keep the
    whole-run statistics when they are rendered or turned into features,
    which matters for splits that put one run's jobs in several parts.

    Parameters
    ----------
    jobs
        Job table from :func:`flowad.data.load_jobs`.

    Returns
    -------
    pandas.DataFrame
        ``jobs`` with the columns ``ATTACHED_COLUMNS`` added (replaced if
        present).
    """
    plain = drop_attached_context(jobs)
    features = context_features(plain)
    features.columns = list(ATTACHED_COLUMNS)
    return pd.concat([plain, features], axis=1)


def drop_attached_context(jobs: pd.DataFrame) -> pd.DataFrame:
    """Return ``jobs`` without the columns written by :func:`attach_context`."""
    attached = [column for column in jobs.columns if str(column).startswith(ATTACHED_PREFIX)]
    return jobs.drop(columns=attached) if attached else jobs


def _count_features(frame: pd.DataFrame, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Count known jobs per host and hosts per run and per machine.

    A host with fewer jobs than its peers was slow or joined late, because
    HTCondor hands the next job to whichever slot is free.
    """
    known = pd.Series(mask, dtype=float)
    host_jobs = known.groupby([frame["run"], frame["host"]]).transform("sum")
    known_hosts = frame["host"].where(mask)
    per_host = (
        pd.DataFrame({"run": frame["run"], "host": known_hosts, "jobs": host_jobs})
        .dropna(subset=["host"])
        .drop_duplicates(["run", "host"])
    )
    typical = per_host.groupby("run")["jobs"].median()
    typical_jobs = frame["run"].map(typical).to_numpy(float)
    return {
        "run_hosts": known_hosts.groupby(frame["run"])
        .transform("nunique")
        .to_numpy(float),
        "host_jobs": host_jobs.to_numpy(float),
        "host_jobs_ratio": host_jobs.to_numpy(float) / typical_jobs,
        "node_hosts": known_hosts.groupby([frame["run"], frame["node"]])
        .transform("nunique")
        .to_numpy(float),
    }


def _host_features(
    frame: pd.DataFrame, mask: np.ndarray, measure: str, ratio: np.ndarray
) -> dict[str, np.ndarray]:
    """Aggregate one measure's ratios over each host and machine of a run."""
    known_ratio = pd.Series(np.where(mask, ratio, np.nan))
    host_groups = [frame["run"], frame["host"]]
    grouped = known_ratio.groupby(host_groups)
    high = pd.Series(np.where(np.isnan(known_ratio), np.nan, known_ratio > HIGH_RATIO))
    host_median = grouped.transform("median").to_numpy(float)
    node_median = (
        known_ratio.groupby([frame["run"], frame["node"]])
        .transform("median")
        .to_numpy(float)
    )
    return {
        f"host_{measure}_median": host_median,
        f"host_{measure}_max": grouped.transform("max").to_numpy(float),
        f"host_{measure}_share_high": high.groupby(host_groups)
        .transform("mean")
        .to_numpy(float),
        f"node_{measure}_median": node_median,
        f"host_{measure}_vs_node": host_median / node_median,
    }


def _ratio_text(value: float) -> str:
    """Write a ratio with two significant digits, e.g. ``1.6x``."""
    if math.isnan(value):
        return "n/a"
    return f"{format_number(value, digits=2)}x"


def _job_parts(row: dict, measures: tuple[str, ...]) -> list[str]:
    """Describe a job's own values with their ratio to the run median."""
    parts = []
    for measure in measures:
        column, _ = MEASURES[measure]
        name, unit = COMPACT_NAMES.get(column, (measure, "s"))
        value = format_quantity(row[column], unit)
        parts.append(f"{name} {value} {_ratio_text(row[f'{measure}_ratio'])}")
    return parts


def _host_jobs_text(row: dict) -> str:
    """Write the host's job count and its ratio to the run's typical host."""
    return (
        f"host {format_number(row['host_jobs'], digits=2)} jobs "
        f"{_ratio_text(row['host_jobs_ratio'])}"
    )


def _slow_share_parts(row: dict) -> list[str]:
    """Write the host's share of slow jobs, or nothing when it is unknown."""
    share = row["host_runtime_share_high"]
    return [] if math.isnan(share) else [f"{round(100 * share)}% slow"]


def _host_parts(row: dict, measures: tuple[str, ...]) -> list[str]:
    """Describe the job's host: job count and how its jobs compare with others."""
    parts = [_host_jobs_text(row)]
    for measure in measures:
        column, _ = MEASURES[measure]
        name = COMPACT_NAMES.get(column, (measure, "s"))[0]
        parts.append(f"{name} {_ratio_text(row[f'host_{measure}_median'])}")
    return parts + _slow_share_parts(row)


def _context_records(jobs: pd.DataFrame) -> list[dict]:
    """Return one dict per job with its name, type, measures and context features."""
    features = context_features(jobs)
    table = pd.concat(
        [
            jobs[["transformation", "job_type", *_measure_columns()]],
            features,
        ],
        axis=1,
    )
    return table.to_dict("records")


def _join_sentence(row: dict, job_parts: list[str], host_parts: list[str]) -> str:
    """Join ``<transformation> <type>: job parts; host parts`` (no host: no ``;``)."""
    sentence = f"{row['transformation']} {row['job_type']}: " + ", ".join(job_parts)
    if host_parts:
        sentence += "; " + ", ".join(host_parts)
    return sentence


def _render_with_context(
    jobs: pd.DataFrame,
    *,
    job_measures: tuple[str, ...],
    host_measures: tuple[str, ...],
) -> list[str]:
    """Render ``<transformation> <type>: job values; host evidence`` per job."""
    sentences = []
    for row in _context_records(jobs):
        host_parts = _host_parts(row, host_measures) if host_measures else []
        sentences.append(_join_sentence(row, _job_parts(row, job_measures), host_parts))
    return sentences


def _measure_columns() -> list[str]:
    """Return the raw columns the measures read, without repeats."""
    columns = []
    for numerator, denominator in MEASURES.values():
        for column in (numerator, denominator):
            if column is not None and column not in columns:
                columns.append(column)
    return columns


def render_context(jobs: pd.DataFrame) -> list[str]:
    """Render the compact values with run ratios and host evidence."""
    return _render_with_context(
        jobs,
        job_measures=("runtime", "cpu", "stage_in", "stage_out"),
        host_measures=("runtime", "stage_in", "stage_out"),
    )


def render_context_short(jobs: pd.DataFrame) -> list[str]:
    """Render runtime, CPU time and stage-in with ratios, and host evidence."""
    return _render_with_context(
        jobs,
        job_measures=("runtime", "cpu", "stage_in"),
        host_measures=("runtime", "stage_in"),
    )


def render_context_job(jobs: pd.DataFrame) -> list[str]:
    """Render the job's values with run ratios but no host evidence."""
    return _render_with_context(
        jobs,
        job_measures=("runtime", "cpu", "stage_in", "stage_out"),
        host_measures=(),
    )


# Host evidence of ``context_full``: groups of (text, feature column), one
# comma-separated item per group. The columns are the ones whose permutation
# lowered gradient boosting's average precision most on the validation runs
# of 1000genome, montage and predict_future_sales (`runs` split). They are
# the worst job of a host (``_max``), the host against the other containers
# of its machine (``_vs_node``, written ``node``) and the machine's container
# count.
_FULL_HOST_GROUPS = (
    (
        ("runtime", "host_runtime_median"),
        ("max", "host_runtime_max"),
        ("node", "host_runtime_vs_node"),
    ),
    (("stage in", "host_stage_in_median"), ("max", "host_stage_in_max")),
    (("share max", "host_cpu_share_max"), ("node", "host_cpu_share_vs_node")),
    (("queue max", "host_queue_max"),),
)
# The feature columns a ``context_full`` sentence shows, for tabular baselines
# that get the same information.
CONTEXT_FULL_COLUMNS = (
    "is_compute",
    "runtime_ratio",
    "cpu_ratio",
    "cpu_share_ratio",
    "stage_in_ratio",
    "stage_out_ratio",
    "host_jobs",
    "host_jobs_ratio",
    "node_hosts",
    *(column for group in _FULL_HOST_GROUPS for _, column in group),
    "host_runtime_share_high",
)


def render_context_full(jobs: pd.DataFrame) -> list[str]:
    """Render ``context`` with CPU share and more host and machine evidence.

    The job part adds its CPU share (CPU time over runtime) against the run
    median. The host part adds the machine's container count, the largest
    runtime, stage-in, CPU-share and queue ratios among the host's jobs, and
    the host's median runtime and CPU share over the machine's. It leaves out
    the host's stage-out ratio.
    """
    sentences = []
    for row in _context_records(jobs):
        job = _job_parts(row, ("runtime", "cpu"))
        job.append(f"share {_ratio_text(row['cpu_share_ratio'])}")
        job += _job_parts(row, ("stage_in", "stage_out"))

        host = [
            _host_jobs_text(row),
            f"node {format_number(row['node_hosts'], digits=2)} hosts",
        ]
        for group in _FULL_HOST_GROUPS:
            host.append(
                " ".join(f"{text} {_ratio_text(row[column])}" for text, column in group)
            )
        host += _slow_share_parts(row)

        sentences.append(_join_sentence(row, job, host))
    return sentences


def _percent_text(value: float) -> str:
    """Write a ratio as a whole percentage (1.3 -> ``130``), usually one word piece."""
    return "-" if math.isnan(value) else str(round(100 * value))


def _count_text(value: float) -> str:
    """Write a job count, or ``-`` when it is missing."""
    return "-" if math.isnan(value) else format_number(value, digits=2)


# Word, feature column and formatter of each value in ``context_terse``. The
# job's own ratios come first, then the host's job count and its evidence.
_TERSE_CONTEXT_VALUES = (
    ("run", "runtime_ratio", _percent_text),
    ("cpu", "cpu_ratio", _percent_text),
    ("in", "stage_in_ratio", _percent_text),
    ("out", "stage_out_ratio", _percent_text),
    ("host", "host_jobs", _count_text),
    ("run", "host_runtime_median", _percent_text),
    ("in", "host_stage_in_median", _percent_text),
    ("slow", "host_runtime_share_high", _percent_text),
)


def _terse_context_values(jobs: pd.DataFrame) -> list[tuple[str, list[tuple[str, str]]]]:
    """Return per job its transformation and the ``(word, value)`` pairs to write."""
    features = context_features(jobs)
    columns = [
        (word, features[column].to_numpy(float), write)
        for word, column, write in _TERSE_CONTEXT_VALUES
    ]
    rows = []
    for position, transformation in enumerate(jobs["transformation"].astype(str)):
        pairs = [(word, write(values[position])) for word, values, write in columns]
        rows.append((transformation, pairs))
    return rows


def render_context_terse(jobs: pd.DataFrame) -> list[str]:
    """Render run ratios and host evidence as ``<word> <percent>`` pairs.

    The sentence has no absolute values, units or job type. It starts with the
    transformation and the job's runtime, CPU time, stage-in and stage-out as a
    percentage of the run median. Then come the host's job count, the median
    runtime and stage-in percentages of its jobs, and its share of slow jobs.
    """
    return [
        " ".join([transformation, *(f"{name} {text}" for name, text in pairs)])
        for transformation, pairs in _terse_context_values(jobs)
    ]


def render_context_bare(jobs: pd.DataFrame) -> list[str]:
    """Render the values of ``context_terse`` without their words."""
    return [
        " ".join([transformation, *(text for _, text in pairs)])
        for transformation, pairs in _terse_context_values(jobs)
    ]


_CONTEXT_FIELDS = tuple(
    dict.fromkeys(
        [*REQUIRED_COLUMNS, "kickstart_executables_cpu_time", *PUBLISHED_FIELDS]
    )
)
for _name, _render in (
    ("context", render_context),
    ("context_short", render_context_short),
    ("context_job", render_context_job),
    ("context_terse", render_context_terse),
    ("context_bare", render_context_bare),
    ("context_full", render_context_full),
):
    register_template(
        Template(_name, _CONTEXT_FIELDS, _render, uses_run_context=True),
        overwrite=True,
    )
