"""Online (early) detection: score a job while its record is still filling in.

A Pegasus job passes through the lifecycle stages of ``LIFECYCLE_STAGES``:
ready, submitted (``wms_delay`` known), queued (``queue_delay``), stage-in,
running (``runtime``, CPU time), stage-out and post-script. At each stage
only the columns of that stage and the earlier ones are known.

Unknown values are written as missing values. :func:`partial_jobs` sets every
column that is not known yet to NaN, and a template renders it like a value
missing in the data (``nan`` in ``published``, ``none`` in ``compact``).
Training augmentation (:func:`augment_partial`) and scoring use the same
function, so a model learns one convention. A consequence is that "not
known yet" and "never recorded" (a job without stage-in) read the same.

Event times come from the stage's timestamp column. Flow-Bench records the
Pegasus-lite stage-in and stage-out inside the execution window (stage-in
often starts before ``execute_start``), so the times are made non-decreasing
along the lifecycle: a stage's event time is the latest timestamp seen up to
that stage, and a missing timestamp takes the previous stage's time.

In run-context mode (a template with ``uses_run_context``) a job is scored
with the jobs of its run whose last event came earlier in event order, plus
the job itself as known so far.

Open tasks
----------
- Text columns (host, transformation) are treated as known from the start,
  although a scheduler learns the host only when the job starts.
- Partial-record augmentation for run-context templates is not implemented:
  copies of a run would shape each other's run statistics.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from flowad.data import NUMERIC_COLUMNS
from flowad.exceptions import NotFittedError
from flowad.templates import get_template

logger = logging.getLogger(__name__)


class LifecycleStage(NamedTuple):
    """One stage of a job's life.

    Attributes
    ----------
    name
        Stage name used in tables and alerts.
    fields
        Columns that become known when the stage ends (earlier stages' columns
        stay known).
    timestamp
        Column whose value marks the end of the stage.
    """

    name: str
    fields: tuple[str, ...]
    timestamp: str


LIFECYCLE_STAGES = (
    LifecycleStage("ready", ("ready",), "ready"),
    LifecycleStage(
        "submitted",
        (
            "wms_delay",
            "submit",
            "pre_script_start",
            "pre_script_end",
            "pre_script_delay",
        ),
        "submit",
    ),
    LifecycleStage("queued", ("queue_delay", "execute_start"), "execute_start"),
    LifecycleStage(
        "stage_in",
        (
            "stage_in_delay",
            "stage_in_bytes",
            "stage_in_start",
            "stage_in_end",
            "stage_in_effective_bytes_per_sec",
        ),
        "stage_in_end",
    ),
    LifecycleStage(
        "running",
        (
            "runtime",
            "kickstart_executables_cpu_time",
            "execute_end",
            "kickstart_status",
            "kickstart_executables_exitcode",
            *(name for name in NUMERIC_COLUMNS if name.startswith("kickstart_online_")),
        ),
        "execute_end",
    ),
    LifecycleStage(
        "stage_out",
        (
            "stage_out_delay",
            "stage_out_bytes",
            "stage_out_start",
            "stage_out_end",
            "stage_out_effective_bytes_per_sec",
        ),
        "stage_out_end",
    ),
    LifecycleStage(
        "post_script",
        ("post_script_delay", "post_script_start", "post_script_end"),
        "post_script_end",
    ),
)
STAGE_NAMES = tuple(stage.name for stage in LIFECYCLE_STAGES)
FINAL_STAGE = STAGE_NAMES[-1]
_STAGE_INDEX = {name: index for index, name in enumerate(STAGE_NAMES)}
_LIFECYCLE_COLUMNS = tuple(
    column for stage in LIFECYCLE_STAGES for column in stage.fields
)


class Event(NamedTuple):
    """The end of one lifecycle stage of one job."""

    time: float
    run: str
    job: str
    stage: str
    position: int


class Alert(NamedTuple):
    """A job whose score reached the threshold at some stage.

    Attributes
    ----------
    time
        Event time (Unix seconds) of the stage.
    run, job
        Which job.
    stage
        Stage after which the score first reached the threshold.
    score
        Anomaly score in [0, 1].
    seconds_before_end
        Time left until the job's last event (the time gained by the alert).
    """

    time: float
    run: str
    job: str
    stage: str
    score: float
    seconds_before_end: float


def _check_stage(stage: str) -> int:
    """Return the position of a stage name in the lifecycle."""
    try:
        return _STAGE_INDEX[stage]
    except KeyError:
        raise ValueError(
            f"unknown lifecycle stage {stage!r}; choose one of {list(STAGE_NAMES)}"
        ) from None


def known_columns(stage: str) -> tuple[str, ...]:
    """Return the lifecycle columns known once ``stage`` has ended."""
    index = _check_stage(stage)
    return tuple(
        column for known in LIFECYCLE_STAGES[: index + 1] for column in known.fields
    )


def unknown_columns(stage: str) -> tuple[str, ...]:
    """Return the lifecycle columns not known yet when ``stage`` has ended."""
    known = set(known_columns(stage))
    return tuple(column for column in _LIFECYCLE_COLUMNS if column not in known)


def partial_jobs(jobs: pd.DataFrame, stage: str) -> pd.DataFrame:
    """Return a copy of the job table with the columns unknown at ``stage`` set to NaN.

    Parameters
    ----------
    jobs
        Job table from :func:`flowad.data.load_jobs`.
    stage
        Lifecycle stage, one of ``STAGE_NAMES``:
        {ready, submitted, queued, stage_in, running, stage_out, post_script}.

    Returns
    -------
    pandas.DataFrame
        Same rows and index; columns absent from ``jobs`` are skipped, and
        context columns attached by :func:`flowad.context.attach_context`
        (whole-run statistics) are removed.
    """
    from flowad.context import drop_attached_context

    columns = [column for column in unknown_columns(stage) if column in jobs.columns]
    # Context attached to the table describes whole runs, which are not known yet.
    partial = drop_attached_context(jobs).copy()
    if columns:
        partial[columns] = np.nan
    return partial


def event_times(jobs: pd.DataFrame) -> pd.DataFrame:
    """Return the event time of every lifecycle stage of every job.

    Times are non-decreasing along the lifecycle (see the module docstring).
    A job whose timestamps are all missing gets NaN everywhere.

    Returns
    -------
    pandas.DataFrame
        Index ``jobs.index``, one float column per stage in ``STAGE_NAMES``.
    """
    missing = [
        stage.timestamp for stage in LIFECYCLE_STAGES if stage.timestamp not in jobs
    ]
    if missing:
        raise ValueError(
            f"event times need the timestamp column(s) {missing}; load jobs with "
            "flowad.data.load_jobs"
        )
    raw = np.column_stack(
        [jobs[stage.timestamp].to_numpy(dtype=float) for stage in LIFECYCLE_STAGES]
    )
    # A missing timestamp takes the previous stage's time; leading gaps take the
    # first known one. fmax ignores NaN, so the running maximum skips gaps.
    times = pd.DataFrame(raw).ffill(axis=1).bfill(axis=1).to_numpy()
    times = np.fmax.accumulate(times, axis=1)
    return pd.DataFrame(times, index=jobs.index, columns=list(STAGE_NAMES))


def iter_events(jobs: pd.DataFrame) -> list[Event]:
    """Return every stage end of every job in event-time order.

    Ties are broken by lifecycle position, then by row position, so the order
    is deterministic. Jobs without any timestamp are left out with a warning.
    """
    times = event_times(jobs).to_numpy()
    runs = jobs["run"].astype(str).to_numpy()
    names = jobs["job"].astype(str).to_numpy()
    rows, stages = np.nonzero(~np.isnan(times))
    dropped = int(np.isnan(times[:, 0]).sum())
    if dropped:
        logger.warning("Left out %d job(s) without any timestamp", dropped)
    order = np.lexsort((rows, stages, times[rows, stages]))
    return [
        Event(
            float(times[rows[i], stages[i]]),
            runs[rows[i]],
            names[rows[i]],
            STAGE_NAMES[stages[i]],
            int(rows[i]),
        )
        for i in order
    ]


def augment_partial(
    jobs: pd.DataFrame,
    *,
    copies: int = 1,
    stages: tuple[str, ...] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Return partial copies of jobs at random lifecycle stages, for training.

    Each job appears ``copies`` times, each copy cut at a stage drawn
    uniformly from ``stages``. Labels are kept: a job cut at ``ready`` still
    carries its label, so a model learns how little an early record says.

    Parameters
    ----------
    jobs
        Job table. Run-context templates must not be rendered on the result
        (copies of one run would shape each other's run statistics).
    copies
        Copies per job (default 1, which keeps the training set size).
    stages
        Stages to draw from (default all of ``STAGE_NAMES``).
    seed
        Seed of the stage draw.

    Returns
    -------
    pandas.DataFrame
        ``len(jobs) * copies`` rows with a fresh index and an extra ``stage``
        column.
    """
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    stages = tuple(stages or STAGE_NAMES)
    for stage in stages:
        _check_stage(stage)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(len(stages), size=len(jobs) * copies)
    repeated = pd.concat([jobs] * copies, ignore_index=True)
    parts = []
    for index, stage in enumerate(stages):
        chosen = repeated.iloc[np.flatnonzero(drawn == index)]
        part = partial_jobs(chosen, stage)
        part["stage"] = stage
        parts.append(part)
    return pd.concat(parts).sort_index()


def _context_order(jobs: pd.DataFrame, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Return each job's event rank at ``stage`` and the rank of its last event."""
    events = iter_events(jobs)
    stage_rank = np.full(len(jobs), -1)
    final_rank = np.full(len(jobs), np.iinfo(np.int64).max)
    for rank, event in enumerate(events):
        if event.stage == stage:
            stage_rank[event.position] = rank
        if event.stage == FINAL_STAGE:
            final_rank[event.position] = rank
    return stage_rank, final_rank


def render_partial(jobs: pd.DataFrame, stage: str, *, template: str) -> list[str]:
    """Render every job as known at the end of ``stage``.

    Without run context this renders :func:`partial_jobs`. With a run-context
    template each job is rendered together with the jobs of its run whose last
    event came before this job's ``stage`` event, one render per job.
    """
    renderer = get_template(template)
    partial = partial_jobs(jobs, stage)
    if not renderer.uses_run_context:
        return renderer(partial)
    stage_rank, final_rank = _context_order(jobs, stage)
    runs = jobs["run"].astype(str).to_numpy()
    sentences = []
    for position in range(len(jobs)):
        same_run = runs == runs[position]
        finished = same_run & (final_rank < stage_rank[position])
        finished[position] = False
        context = pd.concat(
            [jobs.iloc[np.flatnonzero(finished)], partial.iloc[[position]]]
        )
        sentences.append(renderer(context)[-1])
    return sentences


def score_partial(detector, jobs: pd.DataFrame, stage: str) -> np.ndarray:
    """Return the anomaly score of every job as known at the end of ``stage``.

    This is the batch counterpart of :class:`StreamingDetector`: feeding a
    run's events one at a time gives the same scores.
    """
    sentences = render_partial(jobs, stage, template=detector.template_)
    return detector.score_sentences(sentences)


class StreamingDetector:
    """Score job events one at a time with a fitted text detector.

    Feed ``(record, stage)`` pairs in event-time order: :meth:`score_one`
    returns the anomaly score of the job as known after ``stage``, and
    :meth:`learn_one` records the event (a job whose final stage was seen
    joins its run's context). The underlying model never changes: "learning"
    here is bookkeeping of what is known, not training.

    Parameters
    ----------
    detector
        Fitted :class:`flowad.finetune.TextClassifierDetector` or subclass.
    threshold
        Alert threshold on the score; ``None`` (default) uses the detector's
        ``threshold_``, chosen on validation jobs.
    cache_size
        Sentences whose scores are kept (default 10000). Early-stage records
        of different jobs often render to the same sentence, so the cache
        saves most model calls there; 0 turns it off.

    Attributes
    ----------
    finished_
        Per run, the full records of jobs whose final stage was seen.
    stages_
        Last stage seen per ``(run, job)``.

    Examples
    --------
    >>> stream = StreamingDetector(detector)  # doctest: +SKIP
    >>> for event in iter_events(jobs):  # doctest: +SKIP
    ...     record = jobs.iloc[event.position].to_dict()
    ...     score = stream.score_one(record, event.stage)
    ...     stream.learn_one(record, event.stage)
    """

    def __init__(
        self, detector, *, threshold: float | None = None, cache_size: int = 10000
    ) -> None:
        self.detector = detector
        self.threshold = threshold
        self.cache_size = cache_size

    def _state(self) -> None:
        if not hasattr(self, "finished_"):
            if not hasattr(self.detector, "model_"):
                raise NotFittedError(
                    "the wrapped detector is not fitted; call fit(...) or load(...) "
                    "on it first"
                )
            if self.cache_size < 0:
                raise ValueError(f"cache_size must be 0 or more, got {self.cache_size}")
            self.finished_: dict[str, list[dict]] = {}
            self.stages_: dict[tuple[str, str], str] = {}
            self._cache: OrderedDict[str, float] = OrderedDict()

    @property
    def threshold_(self) -> float:
        """Alert threshold in use."""
        if self.threshold is not None:
            return float(self.threshold)
        return float(self.detector.threshold_)

    @staticmethod
    def _key(record: Mapping) -> tuple[str, str]:
        missing = [name for name in ("run", "job") if name not in record]
        if missing:
            raise ValueError(
                f"a job record needs the keys {missing}; pass a row of a job table "
                "from flowad.data.load_jobs, e.g. jobs.iloc[i].to_dict()"
            )
        return str(record["run"]), str(record["job"])

    def _sentence(self, record: Mapping, stage: str) -> str:
        renderer = get_template(self.detector.template_)
        table = partial_jobs(pd.DataFrame([dict(record)]), stage)
        if renderer.uses_run_context:
            context = self.finished_.get(str(record["run"]), [])
            table = pd.concat([pd.DataFrame(context), table], ignore_index=True)
        return renderer(table)[-1]

    def score_one(self, record: Mapping, stage: str) -> float:
        """Return the anomaly score of a job as known at the end of ``stage``.

        Columns of ``record`` that are not known at ``stage`` are ignored, so a
        full row may be passed. The detector state is not changed.
        """
        self._state()
        self._key(record)
        _check_stage(stage)
        sentence = self._sentence(record, stage)
        if sentence in self._cache:
            self._cache.move_to_end(sentence)
            return self._cache[sentence]
        score = float(self.detector.score_sentences([sentence])[0])
        if self.cache_size:
            self._cache[sentence] = score
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return score

    def learn_one(self, record: Mapping, stage: str) -> "StreamingDetector":
        """Record that ``stage`` of this job has ended; return ``self``."""
        self._state()
        key = self._key(record)
        _check_stage(stage)
        self.stages_[key] = stage
        if stage == FINAL_STAGE:
            self.finished_.setdefault(key[0], []).append(dict(record))
        return self

    def process_one(self, record: Mapping, stage: str) -> float:
        """Score one event, then learn it; return the score."""
        score = self.score_one(record, stage)
        self.learn_one(record, stage)
        return score


def replay_run(
    jobs: pd.DataFrame,
    detector,
    *,
    threshold: float | None = None,
    first_only: bool = True,
    cache_size: int = 10000,
) -> Iterator[Alert]:
    """Replay runs in event-time order and yield alerts as they would have happened.

    Parameters
    ----------
    jobs
        Job table of one or more runs (runs are replayed interleaved, by time).
    detector
        Fitted text detector, wrapped in a :class:`StreamingDetector`.
    threshold
        Alert threshold; ``None`` uses the detector's ``threshold_``.
    first_only
        Yield only the first alert per job (default True); False yields one
        per stage whose score reaches the threshold.
    cache_size
        Passed to :class:`StreamingDetector`.

    Yields
    ------
    Alert
        In event-time order.
    """
    stream = StreamingDetector(detector, threshold=threshold, cache_size=cache_size)
    end_times = event_times(jobs)[FINAL_STAGE].to_numpy()
    alerted: set[tuple[str, str]] = set()
    records = jobs.to_dict("records")
    for event in iter_events(jobs):
        record = records[event.position]
        score = stream.process_one(record, event.stage)
        key = (event.run, event.job)
        if score < stream.threshold_ or (first_only and key in alerted):
            continue
        alerted.add(key)
        yield Alert(
            event.time,
            event.run,
            event.job,
            event.stage,
            score,
            float(end_times[event.position] - event.time),
        )
