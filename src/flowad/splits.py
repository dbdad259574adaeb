"""Train, validation and test splits of a job table.

``runs`` (default)
    80/10/10 of the runs, seeded, stratified by the run's anomaly type. Every
    job of a run lands in the same part, so no run leaks across parts.
``rows``
    A seeded random 80/10/10 of jobs, as the SC'24 study did. Jobs of one
    run appear in all three parts, which leaks run conditions into test.
``paper``
    Test and validation are the study's published ``text,label`` files; train
    is every other job (multiset difference on sentence and label).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flowad.data import DataError, read_text_split, run_labels
from flowad.templates import render_published

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("runs", "rows", "paper")
PART_NAMES = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class Split:
    """Row positions of a job table for each part.

    Attributes
    ----------
    name
        ``runs``, ``rows`` or ``paper``.
    seed
        Seed of the shuffle (``None`` for ``paper``).
    train, validation, test
        Integer positions into the job table.
    """

    name: str
    seed: int | None
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def part(self, jobs: pd.DataFrame, part: str) -> pd.DataFrame:
        """Return the jobs of one part, keeping the original index."""
        if part not in PART_NAMES:
            raise ValueError(f"unknown part {part!r}; choose one of {PART_NAMES}")
        return jobs.iloc[getattr(self, part)]

    def sizes(self) -> dict[str, int]:
        """Return the number of jobs per part."""
        return {part: len(getattr(self, part)) for part in PART_NAMES}


def _cut(count: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Return the end positions of train and validation for ``count`` items."""
    train_end = int(round(count * fractions[0]))
    validation_end = int(round(count * (fractions[0] + fractions[1])))
    return train_end, validation_end


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ValueError(f"expected three non-negative fractions, got {fractions}")
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must sum to 1, got {fractions}")


def split_by_runs(
    jobs: pd.DataFrame,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Split:
    """Split whole runs 80/10/10, stratified by the run's anomaly type.

    Within each anomaly type the runs are shuffled with ``seed`` and cut by
    position, so every part sees every anomaly type when there are enough runs.
    """
    _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    labels = run_labels(jobs)
    parts: dict[str, list[str]] = defaultdict(list)
    for _, group in sorted(labels.groupby(labels), key=lambda item: item[0]):
        runs = np.array(sorted(group.index))
        rng.shuffle(runs)
        train_end, validation_end = _cut(len(runs), fractions)
        parts["train"].extend(runs[:train_end])
        parts["validation"].extend(runs[train_end:validation_end])
        parts["test"].extend(runs[validation_end:])
    positions = {
        part: np.flatnonzero(jobs["run"].isin(parts[part]).to_numpy())
        for part in PART_NAMES
    }
    return Split("runs", seed, **positions)


def split_by_rows(
    jobs: pd.DataFrame,
    *,
    seed: int = 42,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Split:
    """Shuffle jobs with pandas ``sample(frac=1, random_state=seed)``, cut 80/10/10.

    This is the study's procedure; runs leak across parts.
    """
    _check_fractions(fractions)
    order = (
        pd.Series(np.arange(len(jobs)))
        .sample(frac=1, random_state=seed)
        .to_numpy()
    )
    train_end, validation_end = _cut(len(order), fractions)
    return Split(
        "rows",
        seed,
        train=order[:train_end],
        validation=order[train_end:validation_end],
        test=order[validation_end:],
    )


def match_text_rows(
    sentences: pd.Series,
    labels: pd.Series,
    published: pd.DataFrame,
    available: dict[tuple[str, int], list[int]],
    *,
    source: str,
) -> np.ndarray:
    """Take one job position per published row, consuming ``available``.

    Raises
    ------
    DataError
        If a published row has no unused job with the same text and label.
    """
    positions = np.empty(len(published), dtype=int)
    for row, (text, label) in enumerate(
        zip(published["text"], published["label"])
    ):
        candidates = available.get((text, int(label)))
        if not candidates:
            raise DataError(
                "row not found among the jobs read (or found fewer times than "
                "it appears); pass the zip of the same workflow",
                path=source,
                row=row + 2,
                field="text",
            )
        positions[row] = candidates.pop()
    return positions


def split_paper(jobs: pd.DataFrame, paper_dir: str | Path) -> Split:
    """Use the published validation and test files; train is the rest.

    Parameters
    ----------
    jobs
        All jobs of the workflow the files were made from.
    paper_dir
        Folder with ``validation.csv`` and ``test.csv`` in ``text,label`` form.
    """
    paper_dir = Path(paper_dir)
    sentences = pd.Series(render_published(jobs))
    available: dict[tuple[str, int], list[int]] = defaultdict(list)
    # Pop from the end so that duplicates are consumed in reverse file order.
    for position, key in enumerate(zip(sentences, jobs["label"].astype(int))):
        available[key].append(position)
    for candidates in available.values():
        candidates.reverse()
    result = {}
    for part in ("test", "validation"):
        path = paper_dir / f"{part}.csv"
        published = read_text_split(path)
        result[part] = match_text_rows(
            sentences, jobs["label"], published, available, source=str(path)
        )
    used = np.zeros(len(jobs), dtype=bool)
    used[result["test"]] = True
    used[result["validation"]] = True
    return Split(
        "paper",
        None,
        train=np.flatnonzero(~used),
        validation=result["validation"],
        test=result["test"],
    )


def make_split(
    jobs: pd.DataFrame,
    name: str = "runs",
    *,
    seed: int = 0,
    paper_dir: str | Path | None = None,
) -> Split:
    """Build a split by name ({"runs", "rows", "paper"}).

    Raises
    ------
    ValueError
        If the name is unknown, or ``paper`` is requested without a folder.
    """
    if name == "runs":
        split = split_by_runs(jobs, seed=seed)
    elif name == "rows":
        split = split_by_rows(jobs, seed=seed)
    elif name == "paper":
        if paper_dir is None:
            raise ValueError(
                "the 'paper' split needs the folder of the published files "
                "(validation.csv, test.csv); pass paper_dir / --paper-splits"
            )
        split = split_paper(jobs, paper_dir)
    else:
        raise ValueError(f"unknown split {name!r}; choose one of {SPLIT_NAMES}")
    logger.info("Split %r (seed %s): %s", name, split.seed, split.sizes())
    return split


def write_text_split(
    jobs: pd.DataFrame, split: Split, out_dir: str | Path
) -> dict[str, Path]:
    """Write train/validation/test as published-template ``text,label`` CSVs.

    For the ``paper`` split, test and validation keep the published row order,
    so the files are byte-identical to the published ones.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for part in PART_NAMES:
        selected = split.part(jobs, part)
        frame = pd.DataFrame(
            {"text": render_published(selected), "label": selected["label"].to_numpy()}
        )
        path = out_dir / f"{part}.csv"
        frame.to_csv(path, index=False, lineterminator="\n")
        written[part] = path
    return written
