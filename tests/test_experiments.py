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
        assert table["f1_after_own_threshold"][0] == table["f1_before"][0]
        assert table["f1_after_own_threshold"].between(0, 1).all()


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


TRANSFER_WORKFLOWS = ["montage", "predict-future-sales"]
MATRIX_FILES = (
    "zero_shot_source_threshold",
    "zero_shot_target_threshold",
    "fine_tuned",
)


@pytest.fixture(scope="module")
def two_workflow_jobs(fixtures_dir) -> pd.DataFrame:
    """Every job of the bundled montage and predict_future_sales runs."""
    return load_jobs(
        [
            fixtures_dir / "montage-3runs.zip",
            fixtures_dir / "predict_future_sales-3runs.zip",
        ]
    )


@pytest.fixture(scope="module")
def transfer_matrix_run(two_workflow_jobs, tmp_path_factory):
    """One transfer-matrix run: two models, one fine-tune (montage to sales).

    The bundled archives hold three runs per workflow, too few for a runs
    split of each workflow, so this uses the rows split.
    """
    config = FinetuneConfig(
        template="terse",
        num_epochs=1,
        batch_size=16,
        eval_batch_size=64,
        max_length=48,
        max_train_jobs=200,
        show_progress_bar=False,
        num_threads=1,
    )
    out = tmp_path_factory.mktemp("transfer-matrix")
    return run_experiment(
        "transfer-matrix",
        two_workflow_jobs,
        out=out,
        config=config,
        split="rows",
        options={"pairs": ["montage:predict-future-sales"], "max_test_jobs": 40},
    )


@pytest.mark.slow
class TestTransferMatrixExperiment:
    def test_matrices_shape_and_labels(self, transfer_matrix_run):
        out = transfer_matrix_run.out

        assert sorted(transfer_matrix_run.extra_tables) == sorted(MATRIX_FILES)
        for name in MATRIX_FILES:
            matrix = pd.read_csv(out / f"table_{name}.csv")
            assert list(matrix.columns) == ["source", *TRANSFER_WORKFLOWS]
            assert list(matrix["source"]) == TRANSFER_WORKFLOWS
            assert matrix.shape == (2, 3)

    def test_settings_per_cell(self, transfer_matrix_run):
        table = transfer_matrix_run.table
        settings = table.groupby(["source", "target"])["setting"].apply(list)
        zero_shot = ["zero-shot source threshold", "zero-shot target threshold"]

        assert settings["montage", "montage"] == [*zero_shot, "fine-tuned"]
        assert settings["montage", "predict-future-sales"] == [*zero_shot, "fine-tuned"]
        assert settings["predict-future-sales", "montage"] == zero_shot
        assert len(table) == 11
        assert table["f1"].between(0, 1).all()

    def test_diagonal_fine_tuned_is_own_model(self, transfer_matrix_run):
        table = transfer_matrix_run.table.set_index(["source", "target", "setting"])
        metrics = ["f1", "roc_auc", "pr_auc", "threshold"]

        for workflow in TRANSFER_WORKFLOWS:
            own = table.loc[(workflow, workflow, "zero-shot source threshold"), metrics]
            fine_tuned = table.loc[(workflow, workflow, "fine-tuned"), metrics]
            assert list(fine_tuned) == list(own)

    def test_source_threshold_shared_by_targets(self, transfer_matrix_run):
        table = transfer_matrix_run.table
        rows = table[table["setting"] == "zero-shot source threshold"]

        assert (rows.groupby("source")["threshold"].nunique() == 1).all()

    def test_target_threshold_best_on_validation(self, transfer_matrix_run):
        # The target threshold maximises F1 on the target's validation part,
        # so no other threshold (the source's included) scores higher there.
        table = transfer_matrix_run.table.set_index(["source", "target", "setting"])

        for source in TRANSFER_WORKFLOWS:
            for target in TRANSFER_WORKFLOWS:
                chosen = table.loc[
                    (source, target, "zero-shot target threshold"), "validation_f1"
                ]
                at_source_threshold = table.loc[
                    (source, target, "zero-shot source threshold"), "validation_f1"
                ]
                assert chosen >= at_source_threshold - 1e-12

    def test_pair_not_run_is_nan(self, transfer_matrix_run):
        out = transfer_matrix_run.out
        fine_tuned = pd.read_csv(out / "table_fine_tuned.csv").set_index("source")
        markdown = (out / "table.md").read_text()

        assert np.isnan(fine_tuned.loc["predict-future-sales", "montage"])
        assert not np.isnan(fine_tuned.loc["montage", "predict-future-sales"])
        assert fine_tuned.notna().sum().sum() == 3
        assert "| predict-future-sales | - |" in markdown

    def test_test_sizes_subsampled_and_recorded(
        self, transfer_matrix_run, two_workflow_jobs
    ):
        table = transfer_matrix_run.table
        meta = _read_result(transfer_matrix_run.out)["meta"]

        assert meta["max_test_jobs"] == 40
        assert meta["test_jobs"] == {workflow: 40 for workflow in TRANSFER_WORKFLOWS}
        assert (table["test_jobs"] == 40).all()
        assert (table["validation_jobs"] == 40).all()
        # Both classes stay in each subsample, so ROC-AUC is defined everywhere.
        assert table["roc_auc"].notna().all()

    def test_models_saved_per_workflow(self, transfer_matrix_run):
        models = transfer_matrix_run.out / "models"

        assert sorted(path.name for path in models.iterdir()) == TRANSFER_WORKFLOWS
        for workflow in TRANSFER_WORKFLOWS:
            assert (models / workflow / "model.safetensors").is_file()

    def test_heatmaps_are_images(self, transfer_matrix_run):
        from PIL import Image

        assert len(transfer_matrix_run.plots) == 3
        for name in MATRIX_FILES:
            path = transfer_matrix_run.out / f"transfer_{name}.png"
            with Image.open(path) as image:
                image.verify()
                assert image.format == "PNG"
                assert min(image.size) > 100


class TestTransferMatrixInputs:
    def test_one_workflow_raises(self, montage_jobs, tmp_path):
        message = (
            "transfer-matrix needs jobs of at least two workflows, found ['montage']"
        )
        with pytest.raises(ValueError, match=re.escape(message)):
            run_experiment("transfer-matrix", montage_jobs, out=tmp_path, split="rows")

    @pytest.mark.parametrize(
        ("pair", "message"),
        [
            (
                "montage:blast",
                "pair 'montage:blast' names workflow(s) ['blast'] that are not in "
                "the jobs",
            ),
            ("montage:montage", "pair 'montage:montage' fine-tunes a workflow on"),
            ("montage", "invalid pair 'montage': expected 'SOURCE:TARGET'"),
        ],
    )
    def test_invalid_pair_raises(self, two_workflow_jobs, tmp_path, pair, message):
        with pytest.raises(ValueError, match=re.escape(message)):
            run_experiment(
                "transfer-matrix",
                two_workflow_jobs,
                out=tmp_path,
                split="rows",
                options={"pairs": [pair]},
            )

    def test_pairs_accept_archive_spellings(self):
        from flowad.experiments import _parse_pairs

        workflows = ["1000-genome", "predict-future-sales"]

        assert _parse_pairs(["1000genome:predict_future_sales"], workflows) == [
            ("1000-genome", "predict-future-sales")
        ]

    def test_runs_split_of_three_runs_raises(self, two_workflow_jobs, tmp_path):
        message = "workflow 'montage' has no validation jobs under the 'runs' split"
        with pytest.raises(ValueError, match=re.escape(message)):
            run_experiment("transfer-matrix", two_workflow_jobs, out=tmp_path)

    def test_cli_one_workflow_fails(self, fixtures_dir, tmp_path, capsys):
        status = main(
            [
                "experiment",
                "transfer-matrix",
                "--data",
                str(fixtures_dir / "montage-3runs.zip"),
                "--split",
                "rows",
                "--pairs",
                "montage:montage",
                "--max-test-jobs",
                "10",
                "--out",
                str(tmp_path),
            ]
        )

        assert status == 2
        assert "needs jobs of at least two workflows" in capsys.readouterr().err

    def test_cli_options_reach_experiment(self, fixtures_dir, tmp_path, capsys):
        status = main(
            [
                "experiment",
                "transfer-matrix",
                "--data",
                str(fixtures_dir / "montage-3runs.zip"),
                str(fixtures_dir / "predict_future_sales-3runs.zip"),
                "--split",
                "rows",
                "--pairs",
                "predict_future_sales:variant_calling",
                "--max-test-jobs",
                "10",
                "--out",
                str(tmp_path),
            ]
        )

        assert status == 2
        # The archive spelling of predict-future-sales is accepted, so only
        # the workflow missing from the jobs is named.
        assert "names workflow(s) ['variant_calling']" in capsys.readouterr().err
