"""Tests for the ``flowad data describe`` and ``flowad data split`` commands."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from flowad.cli import main
from flowad.data import describe_jobs, load_jobs, read_text_split
from flowad.exceptions import BadRunsWarning

MONTAGE_ZIP = "montage-3runs.zip"
# 539 jobs per montage run.
MONTAGE_JOBS = 1_617


def _flowad_command() -> list[str]:
    """Return the installed ``flowad`` script, or the module when it is missing."""
    script = Path(sys.executable).with_name("flowad")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "flowad.cli"]


@pytest.fixture
def montage_folder_with_bad_run(tmp_path, fixtures_dir) -> Path:
    """The three montage runs as CSV files, one with an unknown label on line 15."""
    folder = tmp_path / "runs"
    folder.mkdir()
    with zipfile.ZipFile(fixtures_dir / MONTAGE_ZIP) as archive:
        for name in archive.namelist():
            content = archive.read(name)
            if name == "montage-run0747.csv":
                content = content.replace(b",hdd_5,", b",weird,", 1)
            (folder / name).write_bytes(content)
    return folder


class TestDataDescribe:
    def test_prints_counts_and_tables(self, fixtures_dir, capsys):
        path = fixtures_dir / MONTAGE_ZIP

        status = main(["data", "describe", "--data", str(path)])

        out = capsys.readouterr().out
        assert status == 0
        assert out.splitlines()[0] == f"{MONTAGE_JOBS} jobs in 3 runs"
        for table in describe_jobs(load_jobs(path)).values():
            assert table.to_string() in out
        assert "run_label" in out
        assert "job_type" in out

    def test_several_inputs(self, fixtures_dir, capsys):
        paths = [fixtures_dir / MONTAGE_ZIP, fixtures_dir / "casa_wind_full-3runs.zip"]

        status = main(["data", "describe", "--data", *map(str, paths)])

        assert status == 0
        # 162 jobs per casa-wind-full run.
        first_line = capsys.readouterr().out.splitlines()[0]
        assert first_line == f"{MONTAGE_JOBS + 3 * 162} jobs in 6 runs"

    def test_bad_run_fails_with_location(self, montage_folder_with_bad_run, capsys):
        bad_path = montage_folder_with_bad_run / "montage-run0747.csv"

        status = main(["data", "describe", "--data", str(montage_folder_with_bad_run)])

        captured = capsys.readouterr()
        assert status == 2
        assert captured.out == ""
        assert captured.err.startswith(
            f"error: {bad_path}, line 15, field 'anomaly_type': unknown label 'weird'"
        )

    def test_skip_bad_runs(self, montage_folder_with_bad_run, capsys):
        arguments = ["data", "describe", "--data", str(montage_folder_with_bad_run)]

        with pytest.warns(BadRunsWarning, match=re.escape("skipped 1 invalid run")):
            status = main([*arguments, "--skip-bad-runs"])

        assert status == 0
        assert capsys.readouterr().out.splitlines()[0] == "1078 jobs in 2 runs"

    def test_missing_file_fails(self, tmp_path, capsys):
        missing = tmp_path / "missing.zip"

        status = main(["data", "describe", "--data", str(missing)])

        assert status == 2
        assert capsys.readouterr().err == (
            f"error: {missing}: file or folder not found\n"
        )

    def test_without_data_exits(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["data", "describe"])

        assert info.value.code == 2
        assert "the following arguments are required: --data" in capsys.readouterr().err


class TestDataSplit:
    def test_paper_split_byte_identical(self, repo_root, tmp_path, capsys):
        paper_dir = repo_root / "data" / "paper_splits" / "1000genome"
        out = tmp_path / "splits"

        status = main(
            [
                "data",
                "split",
                "--data",
                str(repo_root / "data" / "1000genome.zip"),
                "--split",
                "paper",
                "--paper-splits",
                str(paper_dir),
                "--out",
                str(out),
            ]
        )

        assert status == 0
        for part in ("test", "validation"):
            written = (out / f"{part}.csv").read_bytes()
            assert written == (paper_dir / f"{part}.csv").read_bytes(), part
        assert len(read_text_split(out / "train.csv")) == 38_469
        assert capsys.readouterr().out.splitlines() == [
            f"train         38469 jobs  {out / 'train.csv'}",
            f"validation     4809 jobs  {out / 'validation.csv'}",
            f"test           4809 jobs  {out / 'test.csv'}",
        ]

    def test_rows_split_writes_every_job(self, fixtures_dir, tmp_path, capsys):
        out = tmp_path / "splits"
        arguments = ["data", "split", "--data", str(fixtures_dir / MONTAGE_ZIP)]

        status = main([*arguments, "--split", "rows", "--seed", "3", "--out", str(out)])

        assert status == 0
        parts = {
            part: read_text_split(out / f"{part}.csv")
            for part in ("train", "validation", "test")
        }
        # round(0.8 * 1617) = 1294 and round(0.9 * 1617) = 1455.
        assert {part: len(frame) for part, frame in parts.items()} == {
            "train": 1294,
            "validation": 161,
            "test": 162,
        }
        labels = sum(int(frame["label"].sum()) for frame in parts.values())
        assert labels == int(load_jobs(fixtures_dir / MONTAGE_ZIP)["label"].sum())
        assert "train          1294 jobs" in capsys.readouterr().out

    def test_paper_split_without_folder_fails(self, fixtures_dir, tmp_path, capsys):
        arguments = ["data", "split", "--data", str(fixtures_dir / MONTAGE_ZIP)]

        status = main([*arguments, "--split", "paper", "--out", str(tmp_path)])

        assert status == 2
        assert "pass paper_dir / --paper-splits" in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == []


class TestHelp:
    def test_help_subprocess(self):
        result = subprocess.run(
            [*_flowad_command(), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        assert result.returncode == 0
        assert result.stdout.startswith("usage: flowad")
        assert "data" in result.stdout

    def test_data_help_lists_commands(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["data", "--help"])

        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "describe" in out
        assert "split" in out
