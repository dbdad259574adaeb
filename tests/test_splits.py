"""Tests for flowad.splits on the bundled 1000genome runs (351 runs, 48,087 jobs)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from flowad.data import load_jobs, read_text_split, run_labels
from flowad.exceptions import DataError
from flowad.splits import (
    PART_NAMES,
    make_split,
    split_by_rows,
    split_by_runs,
    write_text_split,
)
from flowad.templates import render_published

GENOME_RUNS = 351
GENOME_JOBS = 48_087


def _runs_of(jobs, split, part: str) -> set[str]:
    return set(split.part(jobs, part)["run"])


def _assert_partition(split, count: int) -> None:
    """Check that the three parts are disjoint and cover every job once."""
    positions = np.concatenate([getattr(split, part) for part in PART_NAMES])
    assert len(positions) == count
    assert len(np.unique(positions)) == count
    assert positions.min() == 0
    assert positions.max() == count - 1


@pytest.fixture(scope="module")
def paper_dir(repo_root):
    return repo_root / "data" / "paper_splits" / "1000genome"


@pytest.fixture(scope="module")
def runs_split(genome_jobs):
    return make_split(genome_jobs, "runs", seed=0)


@pytest.fixture(scope="module")
def paper_split(genome_jobs, paper_dir):
    return make_split(genome_jobs, "paper", paper_dir=paper_dir)


class TestSplitByRuns:
    def test_no_run_in_two_parts(self, genome_jobs, runs_split):
        train = _runs_of(genome_jobs, runs_split, "train")
        validation = _runs_of(genome_jobs, runs_split, "validation")
        test = _runs_of(genome_jobs, runs_split, "test")

        assert not train & validation
        assert not train & test
        assert not validation & test
        assert len(train | validation | test) == GENOME_RUNS

    def test_every_job_in_one_part(self, runs_split):
        _assert_partition(runs_split, GENOME_JOBS)

    def test_about_80_10_10_of_runs(self, genome_jobs, runs_split):
        shares = {
            part: len(_runs_of(genome_jobs, runs_split, part)) / GENOME_RUNS
            for part in PART_NAMES
        }

        assert shares["train"] == pytest.approx(0.8, abs=0.02)
        assert shares["validation"] == pytest.approx(0.1, abs=0.02)
        assert shares["test"] == pytest.approx(0.1, abs=0.02)

    def test_every_part_has_every_anomaly_type(self, genome_jobs, runs_split):
        all_types = set(run_labels(genome_jobs))

        for part in PART_NAMES:
            jobs = runs_split.part(genome_jobs, part)
            assert set(run_labels(jobs)) == all_types, part
            assert set(jobs["label"]) == {0, 1}, part

    def test_same_seed_same_parts(self, genome_jobs, runs_split):
        again = make_split(genome_jobs, "runs", seed=0)

        for part in PART_NAMES:
            assert np.array_equal(getattr(again, part), getattr(runs_split, part))

    def test_other_seed_other_parts(self, genome_jobs, runs_split):
        other = make_split(genome_jobs, "runs", seed=1)

        assert other.seed == 1
        assert _runs_of(genome_jobs, other, "test") != _runs_of(
            genome_jobs, runs_split, "test"
        )

    def test_part_keeps_original_index(self, genome_jobs, runs_split):
        test = runs_split.part(genome_jobs, "test")

        assert list(test.index) == list(runs_split.test)

    def test_unknown_part_raises(self, genome_jobs, runs_split):
        with pytest.raises(ValueError, match=re.escape("unknown part 'dev'")):
            runs_split.part(genome_jobs, "dev")

    def test_invalid_fractions_raise(self, genome_jobs):
        with pytest.raises(
            ValueError, match=re.escape("fractions must sum to 1, got (0.5, 0.5, 0.5)")
        ):
            split_by_runs(genome_jobs, fractions=(0.5, 0.5, 0.5))

    def test_negative_fraction_raises(self, genome_jobs):
        with pytest.raises(
            ValueError,
            match=re.escape(
                "expected three non-negative fractions, got (1.2, -0.1, -0.1)"
            ),
        ):
            split_by_rows(genome_jobs, fractions=(1.2, -0.1, -0.1))


class TestSplitByRows:
    def test_sizes(self, genome_jobs):
        split = make_split(genome_jobs, "rows", seed=0)

        # round(0.8 * 48087) = 38470 and round(0.9 * 48087) = 43278.
        assert split.sizes() == {"train": 38_470, "validation": 4_808, "test": 4_809}
        _assert_partition(split, GENOME_JOBS)

    def test_seeded(self, genome_jobs):
        first = make_split(genome_jobs, "rows", seed=7)
        again = make_split(genome_jobs, "rows", seed=7)
        other = make_split(genome_jobs, "rows", seed=8)

        assert np.array_equal(first.test, again.test)
        assert not np.array_equal(first.test, other.test)

    def test_runs_leak_across_parts(self, genome_jobs):
        split = make_split(genome_jobs, "rows", seed=0)

        shared = _runs_of(genome_jobs, split, "train") & _runs_of(
            genome_jobs, split, "test"
        )

        assert len(shared) > GENOME_RUNS // 2


class TestSplitPaper:
    def test_sizes(self, paper_split):
        assert paper_split.name == "paper"
        assert paper_split.seed is None
        assert paper_split.sizes() == {
            "train": 38_469,
            "validation": 4_809,
            "test": 4_809,
        }
        _assert_partition(paper_split, GENOME_JOBS)

    @pytest.mark.parametrize("part", ["test", "validation"])
    def test_parts_follow_published_rows(
        self, genome_jobs, paper_split, paper_dir, part
    ):
        published = read_text_split(paper_dir / f"{part}.csv")
        jobs = paper_split.part(genome_jobs, part)

        assert render_published(jobs) == list(published["text"])
        assert list(jobs["label"]) == list(published["label"])

    def test_written_files_byte_identical(
        self, genome_jobs, paper_split, paper_dir, tmp_path
    ):
        written = write_text_split(genome_jobs, paper_split, tmp_path)

        for part in ("test", "validation"):
            published = (paper_dir / f"{part}.csv").read_bytes()
            assert written[part].read_bytes() == published, part
        train = read_text_split(written["train"])
        assert len(train) == 38_469

    def test_other_workflow_raises(self, fixtures_dir, paper_dir):
        montage = load_jobs(fixtures_dir / "montage-3runs.zip")
        expected = (
            f"{paper_dir / 'test.csv'}, line 2, field 'text': row not found among "
            "the jobs read (or found fewer times than it appears); pass the zip of "
            "the same workflow"
        )

        with pytest.raises(DataError, match=re.escape(expected)) as info:
            make_split(montage, "paper", paper_dir=paper_dir)

        assert info.value.path == str(paper_dir / "test.csv")
        assert info.value.row == 2
        assert info.value.field == "text"

    def test_without_folder_raises(self, genome_jobs):
        with pytest.raises(
            ValueError,
            match=re.escape(
                "the 'paper' split needs the folder of the published files "
                "(validation.csv, test.csv); pass paper_dir / --paper-splits"
            ),
        ):
            make_split(genome_jobs, "paper")


class TestMakeSplit:
    def test_unknown_name_raises(self, genome_jobs):
        with pytest.raises(
            ValueError,
            match=re.escape(
                "unknown split 'random'; choose one of ('runs', 'rows', 'paper')"
            ),
        ):
            make_split(genome_jobs, "random")

    def test_default_is_runs(self, genome_jobs, runs_split):
        split = make_split(genome_jobs)

        assert split.name == "runs"
        assert np.array_equal(split.train, runs_split.train)
