"""Tests for flowad.evaluate: threshold choice, metrics and the evaluation folder."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from flowad import __version__
from flowad.data import load_jobs
from flowad.evaluate import (
    build_predictions,
    choose_threshold,
    compute_metrics,
    format_metrics_table,
    write_evaluation,
    write_metrics,
    write_predictions,
)

# Eight jobs scored by hand. At threshold 0.5 one normal job (0.6) is a false
# alarm and one cpu_2 job (0.3) is missed: TP 3, FP 1, FN 1, TN 3.
LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
SCORES = [0.1, 0.4, 0.6, 0.2, 0.8, 0.3, 0.9, 0.55]
TYPES = ["None", "None", "None", "None", "cpu_2", "cpu_2", "hdd_5", "hdd_5"]

PREDICTION_COLUMNS = [
    "workflow",
    "run",
    "job",
    "job_type",
    "transformation",
    "host",
    "anomaly_type",
    "label",
    "ready",
    "submit",
    "execute_start",
    "execute_end",
    "score",
    "predicted",
]


@pytest.fixture(scope="module")
def sales_jobs(fixtures_dir) -> pd.DataFrame:
    """495 real jobs: one normal, one cpu_2 and one hdd_5 run."""
    return load_jobs(fixtures_dir / "predict_future_sales-3runs.zip")


class TestChooseThreshold:
    def test_maximises_f1(self):
        # F1 per threshold: 0.9 -> 0.5, 0.7 -> 0.8, 0.6 -> 0.67, 0.5 -> 0.86,
        # 0.2 -> 0.75, 0.1 -> 0.67.
        labels = [0, 0, 0, 1, 1, 1]
        scores = [0.1, 0.2, 0.6, 0.5, 0.7, 0.9]

        threshold = choose_threshold(labels, scores)

        assert threshold == 0.5
        best = compute_metrics(labels, scores, threshold=threshold)["f1"]
        for candidate in scores:
            assert compute_metrics(labels, scores, threshold=candidate)["f1"] <= best

    def test_tie_goes_to_highest_threshold(self):
        # Thresholds 0.9 (P 1, R 0.5) and 0.3 (P 0.5, R 1) both give F1 2/3.
        threshold = choose_threshold([1, 0, 0, 1], [0.9, 0.7, 0.5, 0.3])

        assert threshold == 0.9

    def test_one_class_gives_half(self):
        assert choose_threshold([0, 0, 0], [0.1, 0.7, 0.2]) == 0.5
        # All-anomalous labels once returned the lowest score (0.1).
        assert choose_threshold([1, 1], [0.1, 0.7]) == 0.5


class TestComputeMetrics:
    def test_matches_sklearn(self):
        metrics = compute_metrics(LABELS, SCORES, threshold=0.5)
        predicted = [int(score >= 0.5) for score in SCORES]

        assert metrics["accuracy"] == pytest.approx(accuracy_score(LABELS, predicted))
        assert metrics["precision"] == pytest.approx(precision_score(LABELS, predicted))
        assert metrics["recall"] == pytest.approx(recall_score(LABELS, predicted))
        assert metrics["f1"] == pytest.approx(f1_score(LABELS, predicted))
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(LABELS, SCORES))
        assert metrics["pr_auc"] == pytest.approx(
            average_precision_score(LABELS, SCORES)
        )

    def test_hand_computed_values(self):
        metrics = compute_metrics(LABELS, SCORES, threshold=0.5)

        assert metrics["jobs"] == 8
        assert metrics["anomalous"] == 4
        assert metrics["threshold"] == 0.5
        assert metrics["confusion_matrix"] == [[3, 1], [1, 3]]
        assert metrics["accuracy"] == 0.75
        assert metrics["f1"] == 0.75
        # 13 of the 16 (anomalous, normal) pairs are ranked correctly.
        assert metrics["roc_auc"] == pytest.approx(13 / 16)
        # Precision at each anomalous job in score order: 1, 1, 3/4, 4/6.
        assert metrics["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)

    def test_score_equal_to_threshold_is_anomalous(self):
        metrics = compute_metrics([0, 1], [0.2, 0.5], threshold=0.5)

        assert metrics["confusion_matrix"] == [[1, 0], [0, 1]]

    def test_recall_per_type(self):
        metrics = compute_metrics(LABELS, SCORES, threshold=0.5, anomaly_types=TYPES)

        assert metrics["recall_per_type"] == {"cpu_2": 0.5, "hdd_5": 1.0}
        assert metrics["support_per_type"] == {"cpu_2": 2, "hdd_5": 2}
        assert metrics["false_positive_rate"] == 0.25

    def test_without_types_no_per_type_keys(self):
        metrics = compute_metrics(LABELS, SCORES)

        assert "recall_per_type" not in metrics
        assert "false_positive_rate" not in metrics

    def test_one_class_has_no_auc(self):
        metrics = compute_metrics([0, 0, 0], [0.1, 0.6, 0.2], threshold=0.5)

        assert metrics["roc_auc"] is None
        assert metrics["pr_auc"] is None
        assert metrics["confusion_matrix"] == [[2, 1], [0, 0]]
        assert metrics["precision"] == 0.0

    def test_length_mismatch_raises(self):
        with pytest.raises(
            ValueError,
            match=re.escape("labels and scores differ in length: (3,) vs (2,)"),
        ):
            compute_metrics([0, 1, 1], [0.2, 0.9])

    def test_json_serialisable(self):
        metrics = compute_metrics(LABELS, SCORES, anomaly_types=TYPES)

        assert json.loads(json.dumps(metrics)) == metrics


class TestFormatMetricsTable:
    def test_lists_metrics_and_types(self):
        metrics = compute_metrics(LABELS, SCORES, threshold=0.5, anomaly_types=TYPES)

        table = format_metrics_table(metrics, title="test part")
        lines = table.splitlines()

        assert lines[0] == "test part"
        assert f"{'f1':<22}{'0.7500':>10}" in lines
        assert f"{'roc_auc':<22}{'0.8125':>10}" in lines
        assert f"{'jobs':<22}{'8':>10}" in lines
        assert f"{'cpu_2':<22}{'0.5000':>10}{2:>8}" in lines

    def test_missing_auc_shown_as_na(self):
        metrics = compute_metrics([0, 0], [0.1, 0.2])

        table = format_metrics_table(metrics)

        assert f"{'roc_auc':<22}{'n/a':>10}" in table.splitlines()


class TestWriteEvaluation:
    def test_writes_metrics_and_predictions(self, sales_jobs, tmp_path):
        scores = np.where(sales_jobs["label"] == 1, 0.9, 0.1)
        meta = {"data": "predict_future_sales-3runs.zip", "split": "runs", "seed": 0}

        metrics = write_evaluation(
            tmp_path / "eval", sales_jobs, scores, threshold=0.5, meta=meta
        )

        stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        assert stored == metrics
        assert stored["f1"] == 1.0
        assert stored["meta"] == {"flowad_version": __version__, **meta}
        assert stored["support_per_type"] == {
            "cpu_2": int((sales_jobs["anomaly_type"] == "cpu_2").sum()),
            "hdd_5": int((sales_jobs["anomaly_type"] == "hdd_5").sum()),
        }
        predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
        assert list(predictions.columns) == PREDICTION_COLUMNS
        assert len(predictions) == len(sales_jobs)
        assert list(predictions["job"]) == list(sales_jobs["job"])
        assert (predictions["predicted"] == predictions["label"]).all()

    def test_build_predictions_length_mismatch_raises(self, sales_jobs):
        with pytest.raises(
            ValueError,
            match=re.escape(
                f"got 3 scores for {len(sales_jobs)} jobs; pass one score per job"
            ),
        ):
            build_predictions(sales_jobs, [0.1, 0.2, 0.3], threshold=0.5)

    def test_build_predictions_resets_index(self, sales_jobs):
        part = sales_jobs.iloc[100:110]

        predictions = build_predictions(part, np.linspace(0, 1, 10), threshold=0.5)

        assert list(predictions.index) == list(range(10))
        assert list(predictions["predicted"]) == [0] * 5 + [1] * 5

    def test_write_predictions_parquet(self, sales_jobs, tmp_path):
        predictions = build_predictions(
            sales_jobs.iloc[:20], np.full(20, 0.3), threshold=0.5
        )

        path = write_predictions(predictions, tmp_path / "deep" / "predictions.parquet")

        assert pd.read_parquet(path).equals(predictions)

    def test_write_metrics_creates_folder(self, tmp_path):
        path = write_metrics({"f1": 0.5}, tmp_path / "a" / "b" / "metrics.json")

        assert json.loads(path.read_text()) == {"f1": 0.5}
