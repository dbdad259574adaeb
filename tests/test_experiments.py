"""Tests of the experiment registry on small slices of the bundled runs.

Every experiment fine-tunes MiniLM for two steps on a few dozen jobs, so the
numbers mean nothing; the tests check the tables, files and invariants.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from flowad.cli import main
from flowad.data import load_jobs
from flowad.experiments import (
    EXPERIMENTS,
    balanced_sample,
    experiment_names,
    run_experiment,
    subsample_runs,
)
from flowad.finetune import FinetuneConfig
from flowad.online import STAGE_NAMES
from flowad.splits import make_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _slice(jobs: pd.DataFrame, count: int) -> pd.DataFrame:
    """Return a seeded slice of ``count`` jobs, up to a third anomalous, in order."""
    rng = np.random.default_rng(0)
    anomalous = np.flatnonzero(jobs["label"].to_numpy() == 1)
    normal = np.flatnonzero(jobs["label"].to_numpy() == 0)
    anomalous_count = min(count // 3, len(anomalous))
    chosen = np.concatenate(
        [
            rng.choice(anomalous, size=anomalous_count, replace=False),
            rng.choice(normal, size=count - anomalous_count, replace=False),
        ]
    )
    return jobs.iloc[np.sort(chosen)]


@pytest.fixture(scope="module")
def montage_jobs(fixtures_dir) -> pd.DataFrame:
    """120 jobs of the three bundled montage runs, a third anomalous."""
    return _slice(load_jobs(fixtures_dir / "montage-3runs.zip"), 120)


@pytest.fixture(scope="module")
def sales_jobs(fixtures_dir) -> pd.DataFrame:
    """120 jobs of the three bundled predict_future_sales runs (17 anomalous)."""
    return _slice(load_jobs(fixtures_dir / "predict_future_sales-3runs.zip"), 120)


@pytest.fixture(scope="module")
def tiny_config() -> FinetuneConfig:
    """Two training steps of batch 8 on 16 jobs; 16 validation jobs."""
    return FinetuneConfig(
        num_epochs=1,
        batch_size=8,
        eval_batch_size=64,
        max_length=40,
        max_train_jobs=16,
        max_validation_jobs=16,
        learning_rate=1e-4,
        show_progress_bar=False,
        num_threads=2,
    )


def _read_result(out) -> dict:
    return json.loads((out / "result.json").read_text())


class TestHelpers:
    def test_registry_names(self):
        assert experiment_names() == [
            "forgetting",
            "imbalance",
            "lora",
            "online",
            "transfer",
            "transfer-matrix",
            "types",
        ]
        assert EXPERIMENTS["transfer"].needs_target
        assert not EXPERIMENTS["online"].needs_target

    def test_balanced_sample_equal_classes(self, montage_jobs):
        balanced = balanced_sample(montage_jobs, seed=0)
        counts = balanced["label"].value_counts()
        assert counts[0] == counts[1]
        assert counts[0] == (montage_jobs["label"] == 0).sum()

    def test_balanced_sample_one_class_raises(self, montage_jobs):
        normal = montage_jobs[montage_jobs["label"] == 0]
        message = "balanced sampling needs both classes, got"
        with pytest.raises(ValueError, match=re.escape(message)):
            balanced_sample(normal)

    def test_subsample_runs_keeps_each_run_label(self, montage_jobs):
        kept = subsample_runs(montage_jobs, 0.01, seed=0)
        assert kept["run"].nunique() == 3
        assert set(kept["anomaly_type"]) == set(montage_jobs["anomaly_type"])

    def test_subsample_runs_invalid_fraction_raises(self, montage_jobs):
        with pytest.raises(
            ValueError, match=re.escape("fraction must be in (0, 1], got 0")
        ):
            subsample_runs(montage_jobs, 0)

    def test_run_experiment_unknown_name_raises(self, montage_jobs, tmp_path):
        with pytest.raises(ValueError, match=re.escape("unknown experiment 'speed'")):
            run_experiment("speed", montage_jobs, out=tmp_path)

    def test_transfer_without_target_raises(self, montage_jobs, tmp_path):
        message = "experiment 'transfer' needs a second workflow; pass target_jobs"
        with pytest.raises(ValueError, match=re.escape(message)):
            run_experiment("transfer", montage_jobs, out=tmp_path)


@pytest.mark.slow
class TestOnlineExperiment:
    def test_online_table_stages_and_files(self, montage_jobs, tiny_config, tmp_path):
        result = run_experiment(
            "online", montage_jobs, out=tmp_path, config=tiny_config, split="rows"
        )
        table = pd.read_csv(tmp_path / "table.csv")
        earliest = pd.read_csv(tmp_path / "table_earliest_stage.csv")
        split = make_split(montage_jobs, "rows", seed=0)
        test_anomalous = int(split.part(montage_jobs, "test")["label"].sum())

        assert list(result.table["method"].unique()) == [
            "full-record",
            "partial-records",
        ]
        assert list(table["stage"][:7]) == list(STAGE_NAMES)
        assert table["f1"].between(0, 1).all()
        per_method = earliest.groupby("method")["anomalous_jobs"].sum()
        assert (per_method == test_anomalous).all()
        assert list(earliest["stage"][:8]) == [*STAGE_NAMES, "never"]
        assert (tmp_path / "f1_per_stage.png").stat().st_size > 0
        assert (tmp_path / "earliest_stage.png").stat().st_size > 0
        assert "## time_gained" in (tmp_path / "table.md").read_text()
        document = _read_result(tmp_path)
        assert document["rows"][0]["split"] == "rows"
        assert set(document["rows"][0]) >= {
            "workflow",
            "split",
            "method",
            "template",
            "model",
            "seed",
            "metrics",
        }

    def test_online_run_context_template_raises(self, montage_jobs, tmp_path):
        from flowad.templates import PUBLISHED_FIELDS, Template, register_template

        register_template(
            Template(
                "test_experiments_context",
                PUBLISHED_FIELDS,
                lambda jobs: ["x"] * len(jobs),
                uses_run_context=True,
            ),
            overwrite=True,
        )
        config = FinetuneConfig(template="test_experiments_context")
        with pytest.raises(ValueError, match=re.escape("uses run context")):
            run_experiment("online", montage_jobs, out=tmp_path, config=config)


@pytest.mark.slow
class TestTypesExperiment:
    def test_types_confusion_matrix_counts_test_jobs(
        self, montage_jobs, tiny_config, tmp_path
    ):
        run_experiment(
            "types",
            montage_jobs,
            out=tmp_path,
            config=tiny_config,
            split="rows",
            options={"label_columns": ("anomaly_type",)},
        )
        matrix = pd.read_csv(
            tmp_path / "table_confusion_anomaly_type.csv", keep_default_na=False
        )
        table = pd.read_csv(tmp_path / "table.csv")

        assert list(matrix["true class"]) == ["None", "cpu_2", "hdd_5"]
        assert matrix.drop(columns="true class").to_numpy().sum() == 12
        assert "macro (classes in test)" in set(table["class"])
        assert (tmp_path / "confusion_anomaly_type.png").is_file()


@pytest.mark.slow
class TestTransferAndForgetting:
    def test_transfer_rows_per_fraction_and_start(
        self, montage_jobs, sales_jobs, tiny_config, tmp_path
    ):
        result = run_experiment(
            "transfer",
            montage_jobs,
            out=tmp_path,
            config=tiny_config,
            split="rows",
            target_jobs=sales_jobs,
            options={"fractions": (1.0,)},
        )
        table = result.table

        assert len(table) == 4
        assert table.iloc[0]["workflow"] == "montage -> predict-future-sales"
        assert set(table["start"][2:]) == {"pretrained", "montage"}
        assert (tmp_path / "source-model" / "model.safetensors").is_file()
        assert (tmp_path / "label_efficiency.png").is_file()

    def test_forgetting_before_after_rows(
        self, montage_jobs, sales_jobs, tiny_config, tmp_path
    ):
        result = run_experiment(
            "forgetting",
            montage_jobs,
            out=tmp_path,
            config=tiny_config,
            split="rows",
            target_jobs=sales_jobs,
            options={"freeze_layers": 1, "replay_fraction": 0.25},
        )
        table = result.table

        assert list(table["method"]) == [
            "montage model (before)",
            "plain",
            "freeze encoder (head only)",
            "freeze all but last 1 layers",
            "replay 25% of montage",
        ]
        assert table["f1_before"].nunique() == 1
        np.testing.assert_allclose(
            table["forgetting"], table["f1_before"] - table["f1_after"]
        )
        rows = _read_result(tmp_path)["rows"]
        assert rows[1]["metrics"]["forgetting"] == pytest.approx(table["forgetting"][1])


@pytest.mark.slow
class TestExperimentCli:
    def test_cli_experiment_imbalance_writes_table(
        self, fixtures_dir, tmp_path, capsys
    ):
        status = main(
            [
                "experiment",
                "imbalance",
                "--data",
                str(fixtures_dir / "montage-3runs.zip"),
                "--split",
                "rows",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--max-train-jobs",
                "16",
                "--max-validation-jobs",
                "16",
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )

        output = capsys.readouterr().out
        table = pd.read_csv(tmp_path / "table.csv").set_index("method")
        assert status == 0
        assert "# Experiment `imbalance`" in output
        assert "| method | train_anomalous_share |" in output
        assert list(table.index) == ["plain", "class-weighted", "balanced-sampling"]
        assert table.loc["balanced-sampling", "train_anomalous_share"] == 0.5
        assert table.loc["plain", "train_anomalous_share"] < 0.5
        assert table["pr_auc"].between(0, 1).all()
        assert (tmp_path / "precision_recall.png").is_file()

    def test_cli_transfer_without_target_fails(self, fixtures_dir, tmp_path, capsys):
        status = main(
            [
                "experiment",
                "transfer",
                "--data",
                str(fixtures_dir / "montage-3runs.zip"),
                "--out",
                str(tmp_path),
            ]
        )

        assert status == 2
        assert "needs a second workflow" in capsys.readouterr().err
