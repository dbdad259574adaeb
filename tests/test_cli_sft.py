"""In-process tests of the train, evaluate, predict and demo commands."""

import json

import pandas as pd
import pytest

from flowad.cli import main
from flowad.data import load_jobs, run_labels

TINY_TRAINING = [
    "--epochs", "1", "--max-train-jobs", "150", "--max-validation-jobs", "150", "--threads", "1", "--no-progress"
]


@pytest.fixture(scope="module")
def trained_model(genome_small_zip, tmp_path_factory):
    """A model trained by `flowad train` on the 40-run zip (150 jobs, 1 epoch)."""
    out = tmp_path_factory.mktemp("cli") / "model"
    status = main(["train", "--data", str(genome_small_zip), "--split", "runs", *TINY_TRAINING, "--out", str(out)])
    assert status == 0
    return out


class TestSmallZip:
    def test_small_zip_has_every_run_label(self, genome_small_zip):
        labels = set(run_labels(load_jobs(genome_small_zip)))
        assert labels == {"None", "cpu_2", "cpu_3", "hdd_5", "hdd_10"}


class TestTrainCommand:
    def test_train_writes_model_folder(self, trained_model):
        assert (trained_model / "model.safetensors").is_file()
        document = json.loads((trained_model / "flowad.json").read_text())
        assert document["split"] == "runs"
        assert document["seed"] == 0
        assert document["template"] == "compact"
        assert document["train_jobs"] == 150
        assert document["config"]["num_threads"] == 1

    def test_train_unknown_template_fails(self, genome_small_zip, tmp_path, capsys):
        with pytest.raises(SystemExit) as raised:
            main(["train", "--data", str(genome_small_zip), "--template", "nope", "--out", str(tmp_path)])
        assert raised.value.code == 2
        error = capsys.readouterr().err
        assert "argument --template: unknown template 'nope'" in error
        assert "context_full" in error
        assert not any(tmp_path.iterdir())


class TestEvaluateCommand:
    def test_evaluate_writes_metrics(self, trained_model, genome_small_zip, tmp_path, capsys):
        out = tmp_path / "eval"
        status = main(["evaluate", "--model", str(trained_model), "--data", str(genome_small_zip), "--out", str(out)])
        assert status == 0
        metrics = json.loads((out / "metrics.json").read_text())
        for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"):
            assert 0 <= metrics[name] <= 1
        assert sum(map(sum, metrics["confusion_matrix"])) == metrics["jobs"]
        assert set(metrics["recall_per_type"]) <= {"cpu_2", "cpu_3", "hdd_5", "hdd_10"}
        assert metrics["meta"]["method"] == "sft"
        assert metrics["meta"]["part"] == "test"
        printed = capsys.readouterr().out
        assert "roc_auc" in printed
        assert "confusion matrix" in printed
        predictions = pd.read_csv(out / "predictions.csv")
        assert len(predictions) == metrics["jobs"]

    def test_evaluate_missing_model_fails(self, genome_small_zip, tmp_path, capsys):
        status = main(["evaluate", "--model", str(tmp_path), "--data", str(genome_small_zip), "--out", str(tmp_path / "e")])
        assert status == 2
        assert "flowad.json is missing" in capsys.readouterr().err


class TestPredictCommand:
    @pytest.mark.parametrize("suffix", [".csv", ".parquet"])
    def test_predict_writes_one_row_per_job(self, trained_model, fixtures_dir, tmp_path, suffix):
        data = fixtures_dir / "predict_future_sales-3runs.zip"
        out = tmp_path / f"predictions{suffix}"
        assert main(["predict", "--model", str(trained_model), "--data", str(data), "--out", str(out)]) == 0
        frame = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
        assert len(frame) == len(load_jobs(data))
        assert {"run", "job", "probability", "predicted"} <= set(frame.columns)
        assert frame["probability"].between(0, 1).all()


class TestDemoCommand:
    def test_demo_writes_everything(self, genome_small_zip, tmp_path, capsys):
        out = tmp_path / "demo"
        status = main(["demo", "--data", str(genome_small_zip), *TINY_TRAINING, "--out", str(out)])
        assert status == 0
        for path in ("model/model.safetensors", "evaluation/metrics.json", "evaluation/predictions.csv",
                     "baseline-gbdt/metrics.json", "report.html"):
            assert (out / path).is_file(), path
        printed = capsys.readouterr().out
        assert "test metrics" in printed
        assert "report:" in printed
