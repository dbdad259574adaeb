"""Tests for flowad.data: reading Flow-Bench runs and the published text splits.

Bad inputs are made from a real run file of the bundled fixtures, corrupted in
``tmp_path``.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest

from flowad.data import (
    METADATA_COLUMNS,
    REQUIRED_COLUMNS,
    describe_jobs,
    load_jobs,
    read_text_split,
    run_labels,
)
from flowad.exceptions import BadRunsWarning, DataError

SALES_ZIP = "predict_future_sales-3runs.zip"
SALES_RUNS = (
    "predict-future-sales-run0001",
    "predict-future-sales-run0051",
    "predict-future-sales-run0075",
)
# The run corrupted by the validation tests: 165 jobs, 11 of them cpu_2.
BAD_RUN = "predict-future-sales-run0051"
JOBS_PER_SALES_RUN = 165


def _read_member(archive_path: Path, run: str) -> bytes:
    with zipfile.ZipFile(archive_path) as archive:
        return archive.read(f"{run}.csv")


def _set_cell(content: bytes, *, line: int, column: str, value: bytes) -> bytes:
    """Replace one cell, addressed by 1-based line number and column name.

    Splitting on commas is safe here because the columns changed by the tests
    come before the only quoted fields (the kickstart command lines).
    """
    lines = content.split(b"\n")
    index = lines[0].split(b",").index(column.encode())
    cells = lines[line - 1].split(b",")
    cells[index] = value
    lines[line - 1] = b",".join(cells)
    return b"\n".join(lines)


def _drop_column(content: bytes, column: str) -> bytes:
    lines = content.split(b"\n")
    index = lines[0].split(b",").index(column.encode())
    kept = []
    for line in lines:
        cells = line.split(b",")
        kept.append(b",".join(cells[:index] + cells[index + 1 :]))
    return b"\n".join(kept)


def _damage_member(archive_bytes: bytes, member: str) -> bytes:
    """Overwrite the start of a member's deflate stream with an invalid block."""
    info = zipfile.ZipFile(io.BytesIO(archive_bytes)).getinfo(member)
    # The local header is 30 bytes plus the name, as this archive has no extra field.
    start = info.header_offset + 30 + len(info.filename)
    damaged = bytearray(archive_bytes)
    damaged[start : start + 64] = b"\xff" * 64
    return bytes(damaged)


@pytest.fixture(scope="module")
def sales_zip(fixtures_dir: Path) -> Path:
    return fixtures_dir / SALES_ZIP


@pytest.fixture(scope="module")
def good_run(sales_zip: Path) -> bytes:
    """Raw bytes of a real run CSV with normal and cpu_2 jobs."""
    return _read_member(sales_zip, BAD_RUN)


@pytest.fixture(scope="module")
def fixture_jobs(fixtures_dir: Path):
    """Jobs of all five fixture archives: 15 runs, one normal, cpu, hdd each."""
    return load_jobs(sorted(fixtures_dir.glob("*.zip")))


def _write_run(folder: Path, content: bytes, run: str = BAD_RUN) -> Path:
    path = folder / f"{run}.csv"
    path.write_bytes(content)
    return path


class TestLoadJobs:
    def test_zip_reads_every_run(self, sales_zip):
        jobs = load_jobs(sales_zip)

        assert list(jobs["run"].unique()) == list(SALES_RUNS)
        assert len(jobs) == 3 * JOBS_PER_SALES_RUN
        assert set(jobs["workflow"]) == {"predict-future-sales"}
        assert jobs["source"].iloc[0] == f"{sales_zip}::{SALES_RUNS[0]}.csv"
        assert list(jobs.index) == list(range(len(jobs)))

    def test_zip_keeps_columns_and_metadata(self, sales_zip):
        jobs = load_jobs(sales_zip)

        assert REQUIRED_COLUMNS <= set(jobs.columns)
        assert set(METADATA_COLUMNS) <= set(jobs.columns)
        assert len(jobs.columns) == len(REQUIRED_COLUMNS) + len(METADATA_COLUMNS)
        assert (jobs["job_type"] == jobs["type"]).all()
        assert (jobs["transformation"] == jobs["kickstart_transformations"]).all()
        assert (jobs["host"] == jobs["kickstart_hostname"]).all()

    def test_zip_rows_match_raw_csv(self, sales_zip, good_run):
        jobs = load_jobs(sales_zip)
        run = jobs[jobs["run"] == BAD_RUN].reset_index(drop=True)
        raw = list(csv.reader(io.StringIO(good_run.decode())))
        header, rows = raw[0], raw[1:]

        assert list(run["job"]) == [row[0] for row in rows]
        runtime = header.index("runtime")
        assert list(run["runtime"]) == [float(row[runtime]) for row in rows]
        labels = [row[header.index("anomaly_type")] for row in rows]
        assert list(run["anomaly_type"]) == labels

    def test_labels_split_kind_and_level(self, fixture_jobs):
        anomalous = fixture_jobs[fixture_jobs["label"] == 1]
        normal = fixture_jobs[fixture_jobs["label"] == 0]

        assert set(anomalous["anomaly_type"]) == {"cpu_2", "hdd_5"}
        cpu = anomalous[anomalous["anomaly_type"] == "cpu_2"]
        assert set(cpu["anomaly_kind"]) == {"cpu"}
        assert set(cpu["anomaly_level"]) == {2}
        hdd = anomalous[anomalous["anomaly_type"] == "hdd_5"]
        assert set(hdd["anomaly_kind"]) == {"hdd"}
        assert set(hdd["anomaly_level"]) == {5}
        assert set(normal["anomaly_type"]) == {"None"}
        assert set(normal["anomaly_kind"]) == {"normal"}
        assert set(normal["anomaly_level"]) == {0}

    def test_empty_label_is_normal(self, tmp_path, good_run):
        # Line 2 is a normal job labelled "None"; an empty cell means the same.
        path = _write_run(
            tmp_path, _set_cell(good_run, line=2, column="anomaly_type", value=b"")
        )
        jobs = load_jobs(path)

        assert jobs["anomaly_type"].iloc[0] == "None"
        assert jobs["label"].iloc[0] == 0

    def test_genome_zip_counts(self, genome_jobs):
        assert len(genome_jobs) == 48_087
        assert genome_jobs["run"].nunique() == 351
        assert set(genome_jobs["workflow"]) == {"1000-genome"}
        assert genome_jobs["run"].str.fullmatch(r"1000-genome-run\d{4}").all()
        assert not genome_jobs.duplicated(["run", "job"]).any()

    def test_zip_is_read_in_memory(self, tmp_path, sales_zip, monkeypatch):
        def fail_on_extract(*args, **kwargs):
            raise AssertionError("load_jobs extracted a zip member to disk")

        monkeypatch.setattr(zipfile.ZipFile, "extract", fail_on_extract)
        monkeypatch.setattr(zipfile.ZipFile, "extractall", fail_on_extract)
        copied = tmp_path / SALES_ZIP
        shutil.copy(sales_zip, copied)

        jobs = load_jobs(copied)

        assert len(jobs) == 3 * JOBS_PER_SALES_RUN
        assert list(tmp_path.iterdir()) == [copied]

    def test_folder_with_label_subfolders(self, tmp_path, sales_zip):
        # <label>/<workflow>-runNNNN.csv, one level deeper for the hdd run.
        folders = [tmp_path / "normal", tmp_path / "cpu", tmp_path / "hdd" / "5"]
        for folder, run in zip(folders, SALES_RUNS):
            folder.mkdir(parents=True)
            _write_run(folder, _read_member(sales_zip, run), run)

        from_folder = load_jobs(tmp_path)
        from_zip = load_jobs(sales_zip)

        # Files are read in sorted path order: cpu/, hdd/5/, normal/.
        assert list(from_folder["run"].unique()) == [
            SALES_RUNS[1],
            SALES_RUNS[2],
            SALES_RUNS[0],
        ]
        sources = from_folder.groupby("run")["source"].first()
        assert sources[SALES_RUNS[2]] == str(folders[2] / f"{SALES_RUNS[2]}.csv")
        left = from_folder.drop(columns="source").sort_values(["run", "job"])
        right = from_zip.drop(columns="source").sort_values(["run", "job"])
        assert left.reset_index(drop=True).equals(right.reset_index(drop=True))

    def test_zip_with_label_folders(self, tmp_path, sales_zip):
        archive = tmp_path / "labelled.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as writer:
            writer.writestr("README.txt", "not a run")
            writer.writestr("normal/", "")
            for label, run in zip(("normal", "cpu", "hdd"), SALES_RUNS):
                writer.writestr(f"{label}/{run}.csv", _read_member(sales_zip, run))

        jobs = load_jobs(archive)

        assert sorted(jobs["run"].unique()) == list(SALES_RUNS)
        assert len(jobs) == 3 * JOBS_PER_SALES_RUN
        assert jobs["source"].iloc[0] == f"{archive}::cpu/{SALES_RUNS[1]}.csv"

    def test_zip_and_csv_mixed(self, tmp_path, fixtures_dir, sales_zip):
        csv_path = _write_run(tmp_path, _read_member(sales_zip, BAD_RUN))

        jobs = load_jobs([fixtures_dir / "montage-3runs.zip", csv_path])

        assert jobs["run"].nunique() == 4
        assert set(jobs["workflow"]) == {"montage", "predict-future-sales"}
        assert jobs["source"].iloc[-1] == str(csv_path)

    def test_folder_holding_zip_and_csv(self, tmp_path, fixtures_dir, sales_zip):
        shutil.copy(fixtures_dir / "montage-3runs.zip", tmp_path)
        _write_run(tmp_path, _read_member(sales_zip, BAD_RUN))

        jobs = load_jobs(tmp_path)

        assert jobs["run"].nunique() == 4

    def test_single_csv_path_as_string(self, tmp_path, good_run):
        path = _write_run(tmp_path, good_run)

        jobs = load_jobs(str(path))

        assert len(jobs) == JOBS_PER_SALES_RUN
        assert set(jobs["run"]) == {BAD_RUN}
        assert int(jobs["label"].sum()) == 11

    @pytest.mark.parametrize(
        "rewrite",
        [
            pytest.param(lambda content: b"\xef\xbb\xbf" + content, id="utf8-bom"),
            pytest.param(lambda content: content.replace(b"\n", b"\r\n"), id="crlf"),
            pytest.param(lambda content: content.rstrip(b"\n"), id="no-final-newline"),
        ],
    )
    def test_text_variants_read_alike(self, tmp_path, sales_zip, good_run, rewrite):
        path = _write_run(tmp_path, rewrite(good_run))
        from_zip = load_jobs(sales_zip)
        expected = from_zip[from_zip["run"] == BAD_RUN].reset_index(drop=True)

        jobs = load_jobs(path)

        assert jobs.drop(columns="source").equals(expected.drop(columns="source"))

    def test_max_runs_reads_first_runs(self, sales_zip):
        jobs = load_jobs(sales_zip, max_runs=2)

        assert list(jobs["run"].unique()) == list(SALES_RUNS[:2])

    def test_same_run_twice_raises(self, tmp_path, sales_zip, good_run):
        csv_path = _write_run(tmp_path, good_run)
        expected = (
            f"{csv_path}: run {BAD_RUN!r} was already read from "
            f"{sales_zip}::{BAD_RUN}.csv; pass each run once"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs([sales_zip, csv_path])

        assert info.value.path == str(csv_path)

    def test_missing_path_raises(self, tmp_path):
        missing = tmp_path / "nowhere.zip"

        with pytest.raises(
            DataError, match=re.escape(f"{missing}: file or folder not found")
        ) as info:
            load_jobs(missing)

        assert info.value.path == str(missing)

    def test_folder_without_runs_raises(self, tmp_path):
        (tmp_path / "notes.txt").write_text("no runs here\n")

        with pytest.raises(
            DataError,
            match=re.escape(f"{tmp_path}: the folder contains no .csv or .zip files"),
        ):
            load_jobs(tmp_path)

    def test_empty_input_list_raises(self):
        with pytest.raises(DataError, match=re.escape("no input given")):
            load_jobs([])

    def test_zip_without_csv_raises(self, tmp_path):
        archive = tmp_path / "readme.zip"
        with zipfile.ZipFile(archive, "w") as writer:
            writer.writestr("README.md", "no runs")

        with pytest.raises(
            DataError,
            match=re.escape(f"{archive}: the zip archive contains no .csv run files"),
        ):
            load_jobs(archive)


class TestRunValidation:
    """Each bad input raises a DataError naming file, line and field."""

    def test_missing_column_raises(self, tmp_path, good_run):
        path = _write_run(tmp_path, _drop_column(good_run, "runtime"))
        expected = (
            f"{path}, line 1: missing 1 required column(s): runtime; expected the "
            "45-column Flow-Bench schema with the job name in column 0"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.path == str(path)
        assert info.value.row == 1
        assert info.value.field is None

    def test_missing_job_name_column_raises(self, tmp_path, good_run):
        path = _write_run(tmp_path, _drop_column(good_run, ""))
        expected = (
            f"{path}, line 1: column 0 must hold the job name under an empty "
            "header, found 'anomaly_type'"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == 1

    def test_empty_file_raises(self, tmp_path):
        path = _write_run(tmp_path, b"")
        expected = (
            f"{path}: the file is empty; expected a header line and one row per job"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.path == str(path)
        assert info.value.row is None
        assert info.value.field is None

    def test_header_without_rows_raises(self, tmp_path, good_run):
        path = _write_run(tmp_path, good_run.split(b"\n")[0] + b"\n")
        expected = f"{path}, line 2: the file has a header but no job rows"

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == 2

    def test_binary_file_raises(self, tmp_path, good_run):
        # A gzip-compressed run saved under a .csv name.
        path = _write_run(tmp_path, gzip.compress(good_run, mtime=0))
        expected = (
            f"{path}, line 1: invalid UTF-8 byte 0x8b at byte offset 1; save the "
            "file as UTF-8"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == 1
        assert info.value.field is None

    def test_nul_bytes_raise(self, tmp_path, good_run):
        path = _write_run(tmp_path, good_run[:200] + b"\x00\x00" + good_run[200:])
        expected = f"{path}: the file contains NUL bytes and is not a CSV text file"

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.path == str(path)

    def test_extra_field_raises(self, tmp_path, good_run):
        path = _write_run(
            tmp_path, _set_cell(good_run, line=6, column="runtime", value=b"1,2")
        )
        expected = (
            f"{path}, line 6: not a valid CSV file (Error tokenizing data. C error: "
            "Expected 45 fields in line 6, saw 46); check the quoting and the "
            "number of fields per line"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == 6
        assert info.value.field is None

    def test_latin1_byte_raises(self, tmp_path, good_run):
        lines = good_run.split(b"\n")
        lines[7] = "é".encode("latin-1") + lines[7]
        content = b"\n".join(lines)
        path = _write_run(tmp_path, content)
        offset = content.index(b"\xe9")
        expected = (
            f"{path}, line 8: invalid UTF-8 byte 0xe9 at byte offset {offset}; "
            "save the file as UTF-8"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.path == str(path)
        assert info.value.row == 8

    def test_duplicate_job_raises(self, tmp_path, good_run):
        lines = good_run.rstrip(b"\n").split(b"\n")
        path = _write_run(tmp_path, b"\n".join([*lines, lines[5]]) + b"\n")
        duplicated_line = len(lines) + 1
        expected = (
            f"{path}, line {duplicated_line}, field 'job': duplicate job name "
            "'stage_in_local_condorpool_3_0' (first on line 6); each job of a "
            "run must appear once"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == duplicated_line
        assert info.value.field == "job"

    def test_empty_job_name_raises(self, tmp_path, good_run):
        path = _write_run(tmp_path, _set_cell(good_run, line=4, column="", value=b""))

        expected = f"{path}, line 4, field 'job': the job name is empty"

        with pytest.raises(DataError, match=re.escape(expected)):
            load_jobs(path)

    @pytest.mark.parametrize("label", ["cpu_x", "weird", "CPU_2", "hdd_"])
    def test_unknown_label_raises(self, tmp_path, good_run, label):
        path = _write_run(
            tmp_path,
            _set_cell(good_run, line=5, column="anomaly_type", value=label.encode()),
        )
        expected = (
            f"{path}, line 5, field 'anomaly_type': unknown label {label!r}; "
            "expected 'None' (or empty) for a normal job, or cpu_K / hdd_K for an "
            "anomalous one"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == 5
        assert info.value.field == "anomaly_type"

    @pytest.mark.parametrize("cell", ["inf", "-inf", "nan", "NaN", "Infinity", "1e400"])
    def test_non_finite_duration_raises(self, tmp_path, good_run, cell):
        # "1e400" overflows to inf; the fast parser once let it through.
        path = _write_run(
            tmp_path, _set_cell(good_run, line=6, column="runtime", value=cell.encode())
        )
        expected = (
            f"{path}, line 6, field 'runtime': expected a finite number or an empty "
            f"cell, got {cell!r}"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == 6
        assert info.value.field == "runtime"

    def test_negative_duration_raises(self, tmp_path, good_run):
        path = _write_run(
            tmp_path, _set_cell(good_run, line=6, column="runtime", value=b"-5")
        )
        expected = (
            f"{path}, line 6, field 'runtime': durations cannot be negative, got -5.0"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == 6
        assert info.value.field == "runtime"

    def test_text_in_numeric_cell_raises(self, tmp_path, good_run):
        path = _write_run(
            tmp_path,
            _set_cell(good_run, line=9, column="stage_in_bytes", value=b"12 MB"),
        )
        expected = (
            f"{path}, line 9, field 'stage_in_bytes': expected a finite number or an "
            "empty cell, got '12 MB'"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.row == 9
        assert info.value.field == "stage_in_bytes"

    def test_empty_host_kept_with_warning(self, tmp_path, good_run, caplog):
        content = _set_cell(good_run, line=6, column="kickstart_hostname", value=b"")
        path = _write_run(tmp_path, content)
        caplog.set_level(logging.WARNING, logger="flowad.data")

        jobs = load_jobs(path)

        assert len(jobs) == good_run.count(b"\n") - 1
        assert "1 job(s) have an empty kickstart_hostname (first on line 6)" in caplog.text
        assert str(path) in caplog.text

    def test_empty_numeric_cell_is_missing(self, tmp_path, good_run):
        path = _write_run(
            tmp_path, _set_cell(good_run, line=6, column="runtime", value=b"")
        )

        jobs = load_jobs(path)

        assert jobs["runtime"].isna().sum() == 1
        assert jobs["runtime"].isna().iloc[4]

    def test_truncated_zip_raises(self, tmp_path, sales_zip):
        path = tmp_path / SALES_ZIP
        path.write_bytes(sales_zip.read_bytes()[:20_000])
        expected = (
            f"{path}: not a readable zip archive (File is not a zip file); "
            "re-download or re-create it"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.path == str(path)
        assert info.value.row is None

    def test_damaged_zip_member_raises(self, tmp_path, sales_zip):
        # A damaged deflate stream once escaped as a bare zlib.error.
        path = tmp_path / SALES_ZIP
        path.write_bytes(_damage_member(sales_zip.read_bytes(), f"{BAD_RUN}.csv"))
        expected = (
            f"{path}::{BAD_RUN}.csv: member cannot be read (Error -3 while "
            "decompressing data: invalid block type); the archive is damaged, "
            "re-download or re-create it"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.path == f"{path}::{BAD_RUN}.csv"

    def test_zip_member_bad_checksum_raises(self, tmp_path, good_run):
        path = tmp_path / "stored.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as writer:
            writer.writestr(f"{BAD_RUN}.csv", good_run)
        content = bytearray(path.read_bytes())
        # Stored data starts after the 30-byte local header and the name.
        content[30 + len(f"{BAD_RUN}.csv") + 1000] ^= 0x01
        path.write_bytes(bytes(content))
        expected = (
            f"{path}::{BAD_RUN}.csv: member cannot be read (Bad CRC-32 for file "
            f"'{BAD_RUN}.csv'); the archive is damaged"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            load_jobs(path)

        assert info.value.path == f"{path}::{BAD_RUN}.csv"


class TestSkipBadRuns:
    @pytest.fixture
    def folder_with_bad_run(self, tmp_path, sales_zip) -> Path:
        """Two valid runs and one with a negative runtime on line 6."""
        for run in SALES_RUNS:
            content = _read_member(sales_zip, run)
            if run == BAD_RUN:
                content = _set_cell(content, line=6, column="runtime", value=b"-5")
            _write_run(tmp_path, content, run)
        return tmp_path

    def test_bad_run_raises_by_default(self, folder_with_bad_run):
        bad_path = folder_with_bad_run / f"{BAD_RUN}.csv"

        with pytest.raises(
            DataError, match=re.escape(f"{bad_path}, line 6, field 'runtime'")
        ) as info:
            load_jobs(folder_with_bad_run)

        assert info.value.path == str(bad_path)

    def test_bad_run_skipped_with_warning(self, folder_with_bad_run, caplog):
        bad_path = folder_with_bad_run / f"{BAD_RUN}.csv"
        caplog.set_level(logging.WARNING, logger="flowad.data")

        with pytest.warns(
            BadRunsWarning,
            match=re.escape(
                f"skipped 1 invalid run file(s); the first: {bad_path}, line 6"
            ),
        ):
            jobs = load_jobs(folder_with_bad_run, skip_bad_runs=True)

        assert list(jobs["run"].unique()) == [SALES_RUNS[0], SALES_RUNS[2]]
        assert len(jobs) == 2 * JOBS_PER_SALES_RUN
        skipped = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(skipped) == 1
        assert str(bad_path) in skipped[0].getMessage()

    def test_damaged_member_skipped(self, tmp_path, sales_zip):
        # A damaged member once stopped the whole archive even when skipping.
        path = tmp_path / SALES_ZIP
        path.write_bytes(_damage_member(sales_zip.read_bytes(), f"{BAD_RUN}.csv"))

        with pytest.warns(BadRunsWarning, match=re.escape("skipped 1 invalid run")):
            jobs = load_jobs(path, skip_bad_runs=True)

        assert list(jobs["run"].unique()) == [SALES_RUNS[0], SALES_RUNS[2]]

    def test_valid_runs_give_no_warning(self, sales_zip):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jobs = load_jobs(sales_zip, skip_bad_runs=True)

        assert len(jobs) == 3 * JOBS_PER_SALES_RUN
        assert not [w for w in caught if issubclass(w.category, BadRunsWarning)]

    def test_only_bad_runs_raises(self, tmp_path, good_run):
        path = _write_run(tmp_path, b"")

        with pytest.warns(BadRunsWarning):
            with pytest.raises(
                DataError,
                match=re.escape(f"no valid run files were read from {path}"),
            ):
                load_jobs(path, skip_bad_runs=True)


class TestRunLabels:
    def test_one_label_per_run(self, fixture_jobs):
        labels = run_labels(fixture_jobs)

        assert len(labels) == 15
        assert labels.value_counts().to_dict() == {"None": 5, "cpu_2": 5, "hdd_5": 5}
        assert labels["montage-run0587"] == "cpu_2"
        assert labels["montage-run0536"] == "None"


class TestDescribeJobs:
    def test_counts_add_up(self, fixture_jobs):
        tables = describe_jobs(fixture_jobs)

        assert tables["runs"]["runs"].to_dict() == {"None": 5, "cpu_2": 5, "hdd_5": 5}
        assert tables["labels"]["jobs"].sum() == len(fixture_jobs)
        assert tables["labels"]["share"].sum() == pytest.approx(1.0)
        anomalous = int(fixture_jobs["label"].sum())
        assert tables["job_types"]["anomalous"].sum() == anomalous
        assert tables["job_types"]["jobs"].sum() == len(fixture_jobs)

    def test_genome_counts(self, genome_jobs):
        tables = describe_jobs(genome_jobs)

        assert tables["runs"]["runs"].sum() == 351
        run_types = {"None", "cpu_2", "cpu_3", "hdd_5", "hdd_10"}
        assert set(tables["runs"].index) == run_types
        assert set(tables["job_types"].index) == {"auxiliary", "compute", "transfer"}
        # Anomalies were injected into compute jobs only.
        assert tables["job_types"].loc["auxiliary", "anomalous"] == 0
        assert tables["job_types"].loc["transfer", "anomalous"] == 0


class TestReadTextSplit:
    def test_reads_published_file(self, repo_root):
        frame = read_text_split(repo_root / "data/paper_splits/1000genome/test.csv")

        assert list(frame.columns) == ["text", "label"]
        assert len(frame) == 4_809
        assert set(frame["label"]) == {0, 1}
        assert frame["text"].str.startswith("wms_delay is ").all()

    def test_wrong_header_raises(self, tmp_path):
        path = tmp_path / "test.csv"
        path.write_text("sentence,label\nwms_delay is 1.0 ,0\n")

        expected = (
            f"{path}, line 1: expected the header 'text,label', got " "'sentence,label'"
        )

        with pytest.raises(DataError, match=re.escape(expected)):
            read_text_split(path)

    def test_bad_label_raises(self, tmp_path):
        path = tmp_path / "test.csv"
        path.write_text("text,label\nwms_delay is 1.0 ,0\nwms_delay is 2.0 ,2\n")

        expected = f"{path}, line 3, field 'label': expected label 0 or 1, got '2'"

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            read_text_split(path)

        assert info.value.row == 3
        assert info.value.field == "label"

    def test_missing_file_raises(self, tmp_path):
        path = tmp_path / "test.csv"

        with pytest.raises(DataError, match=re.escape(f"{path}: file not found")):
            read_text_split(path)
