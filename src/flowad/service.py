"""Live scoring over HTTP: the app behind ``flowad serve``.

:func:`create_app` wraps a fitted detector in a FastAPI application with three
endpoints:

``GET /health``
    Status, flowad version, the model's template, threshold and label names,
    and notes on how the template uses run context.
``POST /score``
    Body ``{"jobs": [record, ...]}``: one anomaly score per job, in order.
``POST /events``
    Body ``{"record": {...}, "stage": "<lifecycle stage>"}``: the score of the
    job as known after that stage, from one :class:`flowad.online.StreamingDetector`
    shared by all requests. Events must arrive in event-time order.

A job record is a JSON object with the Flow-Bench job columns that
:func:`flowad.data.load_jobs` reads from a run file (``REQUIRED_COLUMNS``),
plus ``"run"`` (the run id, the file stem in Flow-Bench) and ``"job"`` (the job
name, column 0 of a run file). ``anomaly_type`` may be left out, and a record
posted to ``/events`` may leave out the columns not known yet at its stage.
A value is a number, a string or ``null``; ``null`` is an empty cell, which
numeric columns read as a missing value. Other keys are ignored. Records are
checked by :func:`flowad.data.read_run`, the reader of run files, so the same
rules apply: finite numbers, no negative durations, known labels, and each job
name once per run. An invalid record gives HTTP 422 naming the record index
(from 0, as in the ``jobs`` array) and the field.

Run-context templates (``uses_run_context``) compare a job with the other jobs
of its run. ``/score`` then treats the records of each run in one request as
the whole run, so post all jobs of a run together. ``/events`` compares a job
with the jobs of its run whose final stage it has seen.

The service has no authentication. It listens on 127.0.0.1 by default, so
only programs on the same machine can reach it.

Open tasks
----------
- The streaming state keeps every finished job record of every run for the
  life of the process. Add an endpoint that drops finished runs once
  operators need long-running servers.
- A request body is read and parsed before its job count is checked, and
  its size in bytes is not limited. Put a proxy with a body size limit in
  front of a server that other machines can reach.
"""

import csv
import io
import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from flowad import __version__
from flowad.data import REQUIRED_COLUMNS, RunFile, read_run
from flowad.exceptions import DataError, NotFittedError
from flowad.online import STAGE_NAMES, StreamingDetector, known_columns, unknown_columns
from flowad.templates import get_template

if TYPE_CHECKING:
    import fastapi

logger = logging.getLogger(__name__)

DEFAULT_MAX_JOBS = 10000
# Keys a record needs besides the job columns: the run file stem and column 0.
KEY_FIELDS = ("run", "job")
# The label is unknown while a job runs. A missing label reads as an empty
# cell, which is a normal job.
OPTIONAL_COLUMNS = frozenset({"anomaly_type"})
_CSV_COLUMNS = tuple(sorted(REQUIRED_COLUMNS))
# Shown as the ``source`` of posted jobs and kept free of ": " so that the
# location prefix of a DataError can be cut off reliably.
_SOURCE = "posted records"
_LINE_NUMBER = re.compile(r"\bline (\d+)\b")


class RecordError(DataError):
    """A posted job record is invalid.

    Parameters
    ----------
    reason
        What is wrong and how to fix it.
    index
        Position of the record in the request's ``jobs`` array, or ``None``
        for the single record of an ``/events`` request.
    field
        Key of the record involved, or ``None``.
    """

    def __init__(self, reason: str, *, index: int | None, field: str | None) -> None:
        self.reason = reason
        self.index = index
        where = "the job record" if index is None else f"job record {index}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}")
        # Set after DataError.__init__, which would put the field in the prefix too.
        self.field = field


def _cell(value: Any, *, index: int | None, field: str) -> str:
    """Write one JSON value as the CSV cell a run file would contain."""
    if value is None:
        return ""
    # bool is a subclass of int, and True would be written as a number.
    if isinstance(value, bool):
        raise RecordError(
            f"expected a number, a string or null, got {str(value).lower()}; "
            "send 1 or 0",
            index=index,
            field=field,
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr round-trips; nan and inf are written out so that the reader
        # rejects them as it rejects them in files.
        return repr(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise RecordError(
                "the text contains a NUL character; remove it",
                index=index,
                field=field,
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError(
                "the text contains an unpaired surrogate escape and is not valid "
                "Unicode; send UTF-8 text",
                index=index,
                field=field,
            ) from None
        return value
    raise RecordError(
        f"expected a number, a string or null, got a JSON {type(value).__name__}",
        index=index,
        field=field,
    )


def _record_row(
    record: Mapping[str, Any], *, index: int | None, optional: frozenset[str]
) -> tuple[str, list[str]]:
    """Check a record's keys and return its run and its CSV cells (job name first)."""
    needed = (set(REQUIRED_COLUMNS) - optional) | set(KEY_FIELDS)
    missing = sorted(needed - set(record))
    if missing:
        others = ", ".join(repr(name) for name in missing[1:6])
        if len(missing) > 6:
            others += f" and {len(missing) - 6} more"
        also = f" (so are {others})" if others else ""
        raise RecordError(
            f"missing{also}; a job record needs every Flow-Bench job column plus "
            "'run' and 'job', with null for an empty cell (GET /health lists them)",
            index=index,
            field=missing[0],
        )
    run = _cell(record["run"], index=index, field="run").strip()
    if not run:
        raise RecordError(
            "the run id is empty; send the run's id, e.g. the run file's stem",
            index=index,
            field="run",
        )
    cells = [_cell(record["job"], index=index, field="job")]
    cells += [
        _cell(record.get(column), index=index, field=column) for column in _CSV_COLUMNS
    ]
    return run, cells


def _strip_location(error: DataError) -> str:
    """Return the message of a DataError without its file and line prefix."""
    if error.path is None and error.row is None and error.field is None:
        return str(error)
    prefix = str(DataError("", path=error.path, row=error.row, field=error.field))
    return str(error).removeprefix(prefix)


def _read_posted_run(
    run: str, rows: list[list[str]], indices: list[int], *, single: bool
):
    """Validate one run's records with the run-file reader, as an in-memory CSV.

    Line numbers in the reader's errors are mapped back to record indices,
    so an error names the record a client sent, not a line it never saw.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["", *_CSV_COLUMNS])
    writer.writerows(rows)
    run_file = RunFile(_SOURCE, run, buffer.getvalue().encode("utf-8"))
    try:
        return read_run(run_file)
    except DataError as error:
        reason = _strip_location(error)
        # A reader message may cite a line after the value it shows, as the
        # duplicate-name message cites the first copy. Cite the record instead.
        lines = list(_LINE_NUMBER.finditer(reason))
        if lines and not single:
            index = _line_to_index(int(lines[-1].group(1)), indices)
            if index is not None:
                start, end = lines[-1].span()
                reason = f"{reason[:start]}job record {index}{reason[end:]}"
        index = None
        if error.row is not None and not single:
            index = _line_to_index(error.row, indices)
        raise RecordError(reason, index=index, field=error.field) from error


def _line_to_index(line: int, indices: list[int]) -> int | None:
    """Map a line of a posted run's CSV (header = line 1) to a record index."""
    position = line - 2
    return indices[position] if 0 <= position < len(indices) else None


def records_to_jobs(
    records: Sequence[Mapping[str, Any]],
    *,
    optional: frozenset[str] = OPTIONAL_COLUMNS,
    single: bool = False,
) -> pd.DataFrame:
    """Validate posted job records and return them as a job table.

    Parameters
    ----------
    records
        JSON objects with the Flow-Bench job columns plus ``run`` and ``job``.
    optional
        Job columns a record may leave out (default: ``anomaly_type``); a
        missing one reads as an empty cell.
    single
        True when ``records`` is the single record of an ``/events`` request,
        so errors name no index.

    Returns
    -------
    pandas.DataFrame
        One row per record, in input order, with the columns of
        :func:`flowad.data.load_jobs`.

    Raises
    ------
    RecordError
        For the first invalid record, naming its index and field.
    """
    runs: dict[str, tuple[list[list[str]], list[int]]] = {}
    ignored: set[str] = set()
    known = set(REQUIRED_COLUMNS) | set(KEY_FIELDS)
    for index, record in enumerate(records):
        shown_index = None if single else index
        run, cells = _record_row(record, index=shown_index, optional=optional)
        rows, indices = runs.setdefault(run, ([], []))
        rows.append(cells)
        indices.append(index)
        ignored.update(key for key in record if key not in known)
    if ignored:
        logger.debug("Ignored unknown job record keys %s", sorted(ignored)[:20])
    frames = []
    for run, (rows, indices) in runs.items():
        frame = _read_posted_run(run, rows, indices, single=single)
        frame.index = indices
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*_CSV_COLUMNS, "run", "job"])
    return pd.concat(frames).sort_index().reset_index(drop=True)


class JobScorer:
    """Score posted job records and job events with one fitted detector.

    This is the framework-free part of the service: :func:`create_app` only
    maps HTTP requests to these methods. A lock serializes model calls,
    because transformers sets truncation on the shared fast tokenizer at
    every call, and concurrent calls have been reported to fail with
    ``RuntimeError: Already borrowed``.

    Parameters
    ----------
    detector
        Fitted :class:`flowad.finetune.TextClassifierDetector` or
        :class:`flowad.lora.LoraDetector`.
    threshold
        Score at or above which a job is reported anomalous; ``None``
        (default) uses the detector's ``threshold_``, chosen on validation
        jobs for maximum F1.
    max_jobs
        Maximum jobs per :meth:`score` call (default 10000).

    Attributes
    ----------
    threshold_
        Threshold in use.
    stream_
        The :class:`flowad.online.StreamingDetector` fed by :meth:`process_event`.
    """

    def __init__(
        self,
        detector,
        *,
        threshold: float | None = None,
        max_jobs: int = DEFAULT_MAX_JOBS,
    ) -> None:
        if not hasattr(detector, "model_"):
            raise NotFittedError(
                "the detector is not fitted; train one with `flowad train` and load "
                "it with flowad.lora.load_detector(path)"
            )
        if threshold is not None and not (
            math.isfinite(threshold) and 0.0 <= threshold <= 1.0
        ):
            raise ValueError(
                f"threshold must be between 0 and 1, got {threshold!r}; leave it "
                "unset to use the model's validation threshold"
            )
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {max_jobs}")
        self.detector = detector
        self.threshold = threshold
        self.max_jobs = max_jobs
        self.threshold_ = float(detector.threshold_ if threshold is None else threshold)
        self.stream_ = StreamingDetector(detector, threshold=self.threshold_)
        self._lock = threading.Lock()

    @property
    def uses_run_context(self) -> bool:
        """Whether the model's template compares a job with its run."""
        return get_template(self.detector.template_).uses_run_context

    def notes(self) -> list[str]:
        """Return caveats on how scores depend on what is posted."""
        if not self.uses_run_context:
            return []
        return [
            f"The template {self.detector.template_!r} compares each job with the "
            "other jobs of its run: /score treats the records of each run in one "
            "request as the whole run, so post all jobs of a run together. /events "
            "compares a job with the jobs of its run whose final stage "
            f"({STAGE_NAMES[-1]}) was posted earlier."
        ]

    def health(self) -> dict:
        """Return the service status and the model's settings."""
        return {
            "status": "ok",
            "flowad_version": __version__,
            "template": self.detector.template_,
            "uses_run_context": self.uses_run_context,
            "threshold": self.threshold_,
            "label_names": [str(name) for name in self.detector.label_names_],
            "record_fields": [
                *KEY_FIELDS,
                *sorted(set(_CSV_COLUMNS) - OPTIONAL_COLUMNS),
            ],
            "optional_fields": sorted(OPTIONAL_COLUMNS),
            "stages": list(STAGE_NAMES),
            "max_jobs": self.max_jobs,
            "notes": self.notes(),
        }

    def check_size(self, count: int) -> None:
        """Raise ValueError when a request has more than ``max_jobs`` jobs."""
        if count > self.max_jobs:
            raise ValueError(
                f"the request has {count} jobs, more than the maximum of "
                f"{self.max_jobs} per request; split the jobs over several requests "
                "(with a run-context model, keep each run in one request) or start "
                "the server with a larger --max-jobs"
            )

    def score(self, records: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Return run, job, score and decision for each record, in order.

        Raises
        ------
        RecordError
            For the first invalid record.
        ValueError
            If there are more than ``max_jobs`` records.
        """
        self.check_size(len(records))
        jobs = records_to_jobs(records)
        if jobs.empty:
            return []
        start = time.perf_counter()
        with self._lock:
            scores = self.detector.predict_proba(jobs)
        logger.info(
            "Scored %d job(s) of %d run(s) in %.2f s",
            len(jobs),
            jobs["run"].nunique(),
            time.perf_counter() - start,
        )
        return [
            {
                "run": run,
                "job": job,
                "score": float(score),
                "anomalous": bool(score >= self.threshold_),
            }
            for run, job, score in zip(jobs["run"], jobs["job"], scores)
        ]

    def process_event(self, record: Mapping[str, Any], stage: str) -> dict:
        """Score one job event, then record it in the stream.

        Raises
        ------
        ValueError
            If ``stage`` is not a lifecycle stage. The message lists the stages.
        RecordError
            If the record is invalid. Columns not known yet at ``stage`` may
            be left out.
        """
        known_columns(stage)
        optional = OPTIONAL_COLUMNS | frozenset(unknown_columns(stage))
        jobs = records_to_jobs([record], optional=optional, single=True)
        row = jobs.iloc[0].to_dict()
        with self._lock:
            score = self.stream_.process_one(row, stage)
        alert = score >= self.threshold_
        logger.debug(
            "Event %s of job %r in run %r: score %.3f",
            stage,
            row["job"],
            row["run"],
            score,
        )
        return {
            "run": row["run"],
            "job": row["job"],
            "stage": stage,
            "score": float(score),
            "alert": bool(alert),
        }


def _import_fastapi():
    """Import FastAPI, naming the pip extra when it is missing."""
    try:
        import fastapi
        import pydantic
    except ImportError as error:
        raise ImportError(
            "the scoring service needs FastAPI; install it with "
            "pip install 'flowad[serve]'"
        ) from error
    return fastapi, pydantic


def _validation_error(loc: list, message: str) -> dict:
    """Build one entry of a 422 reply in FastAPI's own error format."""
    return {"type": "value_error", "loc": loc, "msg": message}


def create_app(
    detector,
    *,
    threshold: float | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> "fastapi.FastAPI":
    """Build the FastAPI application that scores job records.

    Parameters
    ----------
    detector
        Fitted detector; load a saved one with :func:`flowad.lora.load_detector`.
    threshold
        Score at or above which a job is anomalous; ``None`` (default) uses the
        detector's ``threshold_`` (maximum F1 on validation jobs).
    max_jobs
        Maximum jobs per ``/score`` request (default 10000); larger requests
        get HTTP 413.

    Returns
    -------
    fastapi.FastAPI
        The application; its :class:`JobScorer` is ``app.state.scorer``.

    Raises
    ------
    ImportError
        If FastAPI is not installed.
    NotFittedError
        If the detector is not fitted.
    ValueError
        If ``threshold`` is outside [0, 1] or ``max_jobs`` is below 1.
    """
    fastapi, pydantic = _import_fastapi()
    from fastapi.responses import JSONResponse

    scorer = JobScorer(detector, threshold=threshold, max_jobs=max_jobs)

    class ScoreRequest(pydantic.BaseModel):
        jobs: list[dict[str, Any]]

    class EventRequest(pydantic.BaseModel):
        record: dict[str, Any]
        stage: str

    app = fastapi.FastAPI(
        title="flowad",
        version=__version__,
        description="Anomaly scores of workflow jobs from a fine-tuned model.",
    )
    app.state.scorer = scorer
    logger.info(
        "Scoring service ready: template %r, threshold %.4f, max %d jobs per request",
        detector.template_,
        scorer.threshold_,
        max_jobs,
    )
    for note in scorer.notes():
        logger.info("%s", note)

    def reject(path: str, loc: list, error: Exception) -> JSONResponse:
        logger.warning("Rejected a %s request: %s", path, error)
        return JSONResponse(
            status_code=422, content={"detail": [_validation_error(loc, str(error))]}
        )

    @app.get("/health")
    def health() -> dict:
        return scorer.health()

    @app.post("/score")
    def score(request: ScoreRequest):
        try:
            scorer.check_size(len(request.jobs))
        except ValueError as error:
            logger.warning("Rejected a /score request: %s", error)
            return JSONResponse(status_code=413, content={"detail": str(error)})
        try:
            results = scorer.score(request.jobs)
        except RecordError as error:
            loc = ["body", "jobs"]
            if error.index is not None:
                loc.append(error.index)
            if error.field is not None:
                loc.append(error.field)
            return reject("/score", loc, error)
        return {"threshold": scorer.threshold_, "jobs": results}

    @app.post("/events")
    def events(request: EventRequest):
        try:
            known_columns(request.stage)
        except ValueError as error:
            return reject("/events", ["body", "stage"], error)
        try:
            return scorer.process_event(request.record, request.stage)
        except RecordError as error:
            loc = ["body", "record"] + ([error.field] if error.field else [])
            return reject("/events", loc, error)

    return app


def is_loopback(host: str) -> bool:
    """Return whether ``host`` names this machine only (a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(
    app: "fastapi.FastAPI", *, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Serve ``app`` with uvicorn until the process gets SIGINT or SIGTERM.

    Raises
    ------
    ImportError
        If uvicorn is not installed.
    """
    try:
        import uvicorn
    except ImportError as error:
        raise ImportError(
            "flowad serve needs uvicorn; install it with pip install 'flowad[serve]'"
        ) from error
    if not is_loopback(host):
        logger.warning(
            "Listening on %s: the model is reachable from the network without "
            "authentication",
            host,
        )
    uvicorn.run(app, host=host, port=port, workers=1)
