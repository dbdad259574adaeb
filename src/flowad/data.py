"""Readers for Flow-Bench job records and the published text splits.

A Flow-Bench run is one CSV file with one row per job: column 0 (empty header)
contains the job name and 44 named columns contain the label, timestamps, durations,
transfer volumes and the kickstart record (see ``REQUIRED_COLUMNS``). Runs are
read from zip archives (in memory, never extracted), folders searched
recursively, or single CSV files, and are concatenated into one
:class:`pandas.DataFrame` of jobs with these extra columns:

``workflow``, ``run``, ``job``, ``source``
    Workflow name, run id (file stem), job name and the file the row came from.
``job_type``, ``transformation``, ``host``
    Copies of ``type``, ``kickstart_transformations`` and
    ``kickstart_hostname`` under stable names.
``anomaly_type``, ``anomaly_kind``, ``anomaly_level``, ``label``
    ``"None"`` or ``cpu_K`` / ``hdd_K``; ``normal``, ``cpu`` or ``hdd``;
    ``K`` (0 for normal jobs); 0 for normal and 1 for anomalous jobs.

Every input column is kept, so no data is lost on the way in.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flowad.exceptions import BadRunsWarning, DataError

logger = logging.getLogger(__name__)

TIMESTAMP_COLUMNS = (
    "ready",
    "pre_script_start",
    "pre_script_end",
    "submit",
    "stage_in_start",
    "stage_in_end",
    "execute_start",
    "execute_end",
    "stage_out_start",
    "stage_out_end",
    "post_script_start",
    "post_script_end",
)
DURATION_COLUMNS = (
    "wms_delay",
    "pre_script_delay",
    "queue_delay",
    "runtime",
    "post_script_delay",
    "stage_in_delay",
    "stage_out_delay",
)
NUMERIC_COLUMNS = (
    "is_clustered",
    *TIMESTAMP_COLUMNS,
    "stage_in_effective_bytes_per_sec",
    "stage_out_effective_bytes_per_sec",
    *DURATION_COLUMNS,
    "stage_in_bytes",
    "stage_out_bytes",
    "kickstart_executables_cpu_time",
    "kickstart_status",
    "kickstart_executables_exitcode",
    "kickstart_online_iowait",
    "kickstart_online_bytes_read",
    "kickstart_online_bytes_written",
    "kickstart_online_read_system_calls",
    "kickstart_online_write_system_calls",
    "kickstart_online_utime",
    "kickstart_online_stime",
    "kickstart_online_bytes_read_per_second",
    "kickstart_online_bytes_written_per_second",
)
TEXT_COLUMNS = (
    "anomaly_type",
    "type",
    "kickstart_user",
    "kickstart_site",
    "kickstart_hostname",
    "kickstart_transformations",
    "kickstart_executables",
    "kickstart_executables_argv",
)
# The 44 named columns of a Flow-Bench run file. Column 0 has an empty header
# and contains the job name.
REQUIRED_COLUMNS = frozenset(NUMERIC_COLUMNS) | frozenset(TEXT_COLUMNS)
NORMAL_LABELS = frozenset({"", "None", "none", "nan", "NaN"})
LABEL_PATTERN = re.compile(r"^(cpu|hdd)_(\d+)$")
# Flow-Bench file names look like ``1000-genome-run0009.csv``.
RUN_NAME_PATTERN = re.compile(r"^(?P<workflow>.+?)-run(?P<number>\d+)$")
# A cell that spells a non-finite number, which the fast parser would accept.
_SPELLED_NON_FINITE = re.compile(
    r"(?:^|,)\s*[+-]?(?:nan|inf(?:inity)?)\s*(?:,|$)", re.IGNORECASE | re.MULTILINE
)
# The line number in a pandas tokenizer error ("Expected 45 fields in line 6").
_PARSER_LINE = re.compile(r"\bline (\d+)\b")
METADATA_COLUMNS = (
    "workflow",
    "run",
    "job",
    "source",
    "job_type",
    "transformation",
    "host",
    "anomaly_kind",
    "anomaly_level",
    "label",
)


@dataclass(frozen=True)
class RunFile:
    """One run CSV: where it comes from and its raw bytes.

    ``error`` is set instead of ``content`` when the file could not be read
    (a damaged zip member), so that ``skip_bad_runs`` can skip this run alone.
    """

    source: str
    name: str
    content: bytes
    error: DataError | None = None


def _iter_zip(path: Path) -> Iterator[RunFile]:
    """Yield the CSV members of a zip archive, read in memory."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(
            f"not a readable zip archive ({error}); re-download or re-create it",
            path=str(path),
        ) from error
    with archive:
        members = sorted(
            (
                info
                for info in archive.infolist()
            if not info.is_dir() and info.filename.lower().endswith(".csv")
            ),
            key=lambda info: info.filename,
        )
        if not members:
            raise DataError(
                "the zip archive contains no .csv run files", path=str(path)
            )
        for info in members:
            source = f"{path}::{info.filename}"
            name = Path(info.filename).stem
            try:
                content = archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
                damaged = DataError(
                    f"member cannot be read ({error}); the archive is damaged, "
                    "re-download or re-create it",
                    path=source,
                )
                damaged.__cause__ = error
                yield RunFile(source, name, b"", error=damaged)
                continue
            yield RunFile(source, name, content)


def _iter_run_files(paths: Iterable[str | Path]) -> Iterator[RunFile]:
    """Yield every run file found in zips, folders and CSV files."""
    for raw_path in paths:
        path = Path(raw_path)
        if not path.exists():
            raise DataError("file or folder not found", path=str(path))
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in {".csv", ".zip"}
            )
            if not found:
                raise DataError(
                    "the folder contains no .csv or .zip files", path=str(path)
                )
            yield from _iter_run_files(found)
        elif path.suffix.lower() == ".zip":
            yield from _iter_zip(path)
        else:
            yield RunFile(str(path), path.stem, path.read_bytes())


def _decode(run_file: RunFile) -> str:
    """Decode UTF-8 bytes, naming the line of the first invalid byte."""
    try:
        return run_file.content.decode("utf-8")
    except UnicodeDecodeError as error:
        line = run_file.content[: error.start].count(b"\n") + 1
        raise DataError(
            f"invalid UTF-8 byte 0x{run_file.content[error.start]:02x} at byte "
            f"offset {error.start}; save the file as UTF-8",
            path=run_file.source,
            row=line,
        ) from error


def _read_strings(text: str, source: str) -> pd.DataFrame:
    """Parse CSV text with every cell as a string."""
    try:
        return pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, index_col=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        reason = str(error).strip()
        # pandas numbers lines from 1 with the header as line 1, as DataError does.
        line = _PARSER_LINE.search(reason)
        raise DataError(
            f"not a valid CSV file ({reason}); check the quoting and the number "
            "of fields per line",
            path=source,
            row=int(line.group(1)) if line else None,
        ) from error


def _parse_csv(run_file: RunFile) -> pd.DataFrame:
    """Parse one run file, checking the header and the numeric cells.

    The fast path lets the C parser convert numbers. When it fails, or the text
    spells NaN/inf, the file is parsed again as strings to find the bad cell.
    """
    text = _decode(run_file)
    if not text.strip():
        raise DataError(
            "the file is empty; expected a header line and one row per job",
            path=run_file.source,
        )
    if "\x00" in text:
        raise DataError(
            "the file contains NUL bytes and is not a CSV text file",
            path=run_file.source,
        )
    header = _read_strings(text.split("\n", 1)[0] + "\n", run_file.source)
    missing = sorted(REQUIRED_COLUMNS - set(header.columns))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise DataError(
            f"missing {len(missing)} required column(s): {shown}; expected the "
            "45-column Flow-Bench schema with the job name in column 0",
            path=run_file.source,
            row=1,
        )
    frame = None
    if not _SPELLED_NON_FINITE.search(text):
        dtypes = {column: str for column in header.columns}
        dtypes.update({column: "float64" for column in NUMERIC_COLUMNS})
        try:
            frame = pd.read_csv(
                io.StringIO(text),
                dtype=dtypes,
                keep_default_na=False,
                na_values={column: [""] for column in NUMERIC_COLUMNS},
                index_col=False,
            )
        except (ValueError, pd.errors.ParserError):
            frame = None
    # A number too large for a double (1e400) parses to inf on the fast path.
    if frame is not None and np.isinf(frame[list(NUMERIC_COLUMNS)].to_numpy()).any():
        frame = None
    if frame is None:
        frame = _check_numeric(_read_strings(text, run_file.source), run_file.source)
    if frame.empty:
        raise DataError(
            "the file has a header but no job rows", path=run_file.source, row=2
        )
    _check_durations(frame, run_file.source)
    return frame


def _check_numeric(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Convert numeric columns, rejecting text and spelled-out NaN or inf.

    Empty cells are missing values (a job without stage-in has no stage-in
    columns) and become NaN. Any other cell must parse as a finite number.
    """
    converted = {}
    for column in NUMERIC_COLUMNS:
        raw = frame[column].str.strip()
        values = pd.to_numeric(raw, errors="coerce").astype(float)
        present = (raw != "").to_numpy()
        bad = present & ~np.isfinite(values.to_numpy())
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"expected a finite number or an empty cell, got "
                f"{frame[column].iloc[index]!r}",
                path=source,
                row=index + 2,
                field=column,
            )
        converted[column] = values
    return frame.assign(**converted)


def _check_durations(frame: pd.DataFrame, source: str) -> None:
    """Reject negative durations."""
    for column in DURATION_COLUMNS:
        negative = (frame[column] < 0).to_numpy()
        if negative.any():
            index = int(np.flatnonzero(negative)[0])
            raise DataError(
                "durations cannot be negative, got "
                f"{float(frame[column].iloc[index])!r}",
                path=source,
                row=index + 2,
                field=column,
            )


def _parse_labels(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Map ``anomaly_type`` to kind, level and binary label."""
    raw = frame["anomaly_type"].str.strip()
    normal = raw.isin(NORMAL_LABELS)
    parts = raw.str.extract(LABEL_PATTERN)
    unknown = ~normal & parts[0].isna()
    if unknown.any():
        index = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(
            f"unknown label {raw.iloc[index]!r}; expected 'None' (or empty) for "
            "a normal job, or cpu_K / hdd_K for an anomalous one",
            path=source,
            row=index + 2,
            field="anomaly_type",
        )
    return frame.assign(
        anomaly_type=raw.where(~normal, "None"),
        anomaly_kind=parts[0].where(~normal, "normal"),
        anomaly_level=pd.to_numeric(parts[1]).fillna(0).astype(int),
        label=(~normal).astype(int),
    )


def read_run(run_file: RunFile) -> pd.DataFrame:
    """Parse and validate one run file.

    Parameters
    ----------
    run_file
        The run's source name, stem and raw bytes.

    Returns
    -------
    pandas.DataFrame
        One row per job with the input columns and ``METADATA_COLUMNS``.

    Raises
    ------
    DataError
        If the file is not valid UTF-8 CSV in the Flow-Bench schema, or a
        job name repeats, a label is unknown, or a number is invalid.
    """
    if run_file.error is not None:
        raise run_file.error
    frame = _parse_csv(run_file)
    job_column = frame.columns[0]
    if job_column in REQUIRED_COLUMNS:
        raise DataError(
            "column 0 must hold the job name under an empty header, found "
            f"{job_column!r}",
            path=run_file.source,
            row=1,
        )
    jobs = frame[job_column].str.strip()
    empty = jobs == ""
    if empty.any():
        index = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(
            "the job name is empty", path=run_file.source, row=index + 2, field="job"
        )
    duplicated = jobs.duplicated(keep="first")
    if duplicated.any():
        index = int(np.flatnonzero(duplicated.to_numpy())[0])
        first = int(np.flatnonzero((jobs == jobs.iloc[index]).to_numpy())[0])
        raise DataError(
            f"duplicate job name {jobs.iloc[index]!r} (first on line {first + 2}); "
            "each job of a run must appear once",
            path=run_file.source,
            row=index + 2,
            field="job",
        )
    frame = _parse_labels(frame, run_file.source)
    hosts = frame["kickstart_hostname"].str.strip()
    _warn_missing_hosts(hosts, run_file.source)
    match = RUN_NAME_PATTERN.match(run_file.name)
    workflow = match.group("workflow") if match else run_file.name
    frame = frame.drop(columns=[job_column]).assign(
        workflow=workflow,
        run=run_file.name,
        job=jobs,
        source=run_file.source,
        job_type=frame["type"].str.strip(),
        transformation=frame["kickstart_transformations"].str.strip(),
        host=hosts,
    )
    return frame


def _warn_missing_hosts(hosts: pd.Series, source: str) -> None:
    """Log a warning when jobs of a run have an empty ``kickstart_hostname``.

    ``hosts`` is the stripped column, one entry per row of the run file. The
    jobs are kept. Run-context features group them as one host, so their host
    evidence describes all of them together.
    """
    missing = hosts.fillna("").eq("").to_numpy()
    if missing.any():
        logger.warning(
            "%s: %d job(s) have an empty kickstart_hostname (first on line %d); "
            "run-context features treat them as one host",
            source,
            int(missing.sum()),
            int(np.flatnonzero(missing)[0]) + 2,
        )


def load_jobs(
    paths: str | Path | Iterable[str | Path],
    *,
    skip_bad_runs: bool = False,
    max_runs: int | None = None,
) -> pd.DataFrame:
    """Read Flow-Bench runs into one job table.

    Parameters
    ----------
    paths
        Zip archives of run CSVs, folders (searched recursively for ``.csv``
        and ``.zip`` files) or single run CSV files.
    skip_bad_runs
        If False (default), the first invalid run file raises. If True,
        invalid runs are skipped, each with a logged warning, and a
        :class:`BadRunsWarning` gives the count.
    max_runs
        Read at most this many runs (in sorted file order); ``None`` reads all.

    Returns
    -------
    pandas.DataFrame
        One row per job, in file order, with a fresh ``RangeIndex``.

    Raises
    ------
    DataError
        On invalid input, naming the file, line and field.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise DataError("no input given; pass a zip, a folder or CSV files")
    frames = []
    seen_runs: dict[tuple[str, str], str] = {}
    skipped = []
    for run_file in _iter_run_files(paths):
        if max_runs is not None and len(frames) >= max_runs:
            break
        try:
            frame = read_run(run_file)
            key = (str(frame["workflow"].iloc[0]), run_file.name)
            if key in seen_runs:
                raise DataError(
                    f"run {run_file.name!r} was already read from "
                    f"{seen_runs[key]}; pass each run once",
                    path=run_file.source,
                )
            seen_runs[key] = run_file.source
        except DataError as error:
            if not skip_bad_runs:
                raise
            logger.warning("Skipping run file: %s", error)
            skipped.append(str(error))
            continue
        frames.append(frame)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} invalid run file(s); the first: {skipped[0]}",
            BadRunsWarning,
            stacklevel=2,
        )
    if not frames:
        raise DataError(
            "no valid run files were read from " + ", ".join(map(str, paths))
        )
    jobs = pd.concat(frames, ignore_index=True)
    logger.info(
        "Read %d jobs from %d runs (%d anomalous jobs)",
        len(jobs),
        len(frames),
        int(jobs["label"].sum()),
    )
    return jobs


def run_labels(jobs: pd.DataFrame) -> pd.Series:
    """Return each run's anomaly type (``"None"`` for a normal run)."""
    anomalous = jobs[jobs["label"] == 1]
    labels = anomalous.groupby("run", sort=False)["anomaly_type"].first()
    runs = pd.Index(jobs["run"].unique(), name="run")
    return labels.reindex(runs).fillna("None")


def describe_jobs(jobs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Count runs and jobs per label and jobs per job type.

    Returns
    -------
    dict
        ``"runs"``: runs per run label; ``"labels"``: jobs per
        ``anomaly_type``; ``"job_types"``: jobs and anomalous jobs per type.
    """
    by_run = run_labels(jobs).value_counts().rename("runs").to_frame()
    by_run.index.name = "run_label"
    by_label = jobs.groupby("anomaly_type").size().rename("jobs").to_frame()
    by_label["share"] = by_label["jobs"] / len(jobs)
    by_type = jobs.groupby("job_type").agg(
        jobs=("label", "size"), anomalous=("label", "sum")
    )
    return {"runs": by_run, "labels": by_label, "job_types": by_type}


def read_text_split(path: str | Path) -> pd.DataFrame:
    """Read a published ``text,label`` split file.

    Raises
    ------
    DataError
        If the file lacks the two columns or a label is not 0 or 1.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path))
    run_file = RunFile(str(path), path.stem, path.read_bytes())
    text = _decode(run_file)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"not a valid CSV file ({error})", path=str(path)) from error
    if list(frame.columns) != ["text", "label"]:
        raise DataError(
            f"expected the header 'text,label', got {','.join(frame.columns)!r}",
            path=str(path),
            row=1,
        )
    bad = ~frame["label"].isin(["0", "1"])
    if bad.any():
        index = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"expected label 0 or 1, got {frame['label'].iloc[index]!r}",
            path=str(path),
            row=index + 2,
            field="label",
        )
    return frame.assign(label=frame["label"].astype(int))

