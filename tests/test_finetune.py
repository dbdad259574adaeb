"""Tests for supervised fine-tuning: configuration, fitting, saving and loading."""

import json
import re
import shutil

import numpy as np
import pytest

from flowad.exceptions import ModelFormatError, NotFittedError
from flowad.finetune import (
    FinetuneConfig,
    TextClassifierDetector,
    check_safe_model_folder,
)
from flowad.splits import make_split
from flowad.templates import get_template


@pytest.fixture(scope="module")
def genome_split(genome_jobs):
    """Runs split of the bundled 1000genome runs (seed 0)."""
    return make_split(genome_jobs, "runs", seed=0)


@pytest.fixture(scope="module")
def fitted(genome_jobs, genome_split, tmp_path_factory):
    """A detector fine-tuned briefly on 600 training jobs, and its saved folder."""
    config = FinetuneConfig(
        template="compact",
        num_epochs=2,
        max_train_jobs=600,
        max_validation_jobs=300,
        learning_rate=1e-4,
        seed=0,
        show_progress_bar=False,
    )
    detector = TextClassifierDetector(config).fit(
        genome_split.part(genome_jobs, "train"),
        genome_split.part(genome_jobs, "validation"),
    )
    folder = detector.save(tmp_path_factory.mktemp("model") / "model", extra={"split": "runs"})
    return detector, folder


@pytest.fixture(scope="module")
def held_out(genome_jobs, genome_split):
    """A seeded slice of 600 test jobs."""
    test = genome_split.part(genome_jobs, "test")
    rng = np.random.default_rng(0)
    return test.iloc[np.sort(rng.choice(len(test), 600, replace=False))]


class TestFinetuneConfig:
    def test_config_defaults_valid(self):
        config = FinetuneConfig()
        assert config.template == "compact"
        assert config.label_column == "label"

    def test_config_round_trip(self):
        config = FinetuneConfig(num_epochs=1, max_train_jobs=10, seed=3)
        assert FinetuneConfig.from_dict(config.to_dict()) == config

    def test_config_unknown_template_raises(self):
        with pytest.raises(ValueError, match=re.escape("unknown template 'nope'")):
            FinetuneConfig(template="nope")

    def test_config_bad_epochs_raises(self):
        with pytest.raises(ValueError, match=re.escape("num_epochs must be at least 1, got 0")):
            FinetuneConfig(num_epochs=0)

    def test_config_bad_freeze_raises(self):
        with pytest.raises(ValueError, match=re.escape("freeze must be None, 'encoder' or 'last-N'")):
            FinetuneConfig(freeze="middle")

    def test_config_bad_label_column_raises(self):
        with pytest.raises(ValueError, match=re.escape("label_column must be one of")):
            FinetuneConfig(label_column="host")


class TestTextClassifierDetector:
    def test_detector_unfitted_raises(self, held_out):
        with pytest.raises(NotFittedError, match=re.escape("not fitted yet")):
            TextClassifierDetector().predict_proba(held_out)

    def test_detector_one_class_raises(self, genome_jobs):
        normal = genome_jobs[genome_jobs["label"] == 0].iloc[:50]
        with pytest.raises(ValueError, match=re.escape("at least one anomaly class")):
            TextClassifierDetector(FinetuneConfig(show_progress_bar=False)).fit(normal, normal)

    def test_detector_scores_are_probabilities(self, fitted, held_out):
        detector, _ = fitted
        scores = detector.predict_proba(held_out)
        assert scores.shape == (len(held_out),)
        assert np.all((scores >= 0) & (scores <= 1))
        classes = detector.predict_classes(held_out)
        np.testing.assert_allclose(classes.sum(axis=1), 1.0, rtol=1e-5)

    def test_detector_beats_majority_class(self, fitted, held_out):
        detector, _ = fitted
        labels = held_out["label"].to_numpy()
        accuracy = float((detector.predict(held_out) == labels).mean())
        majority = max(labels.mean(), 1 - labels.mean())
        assert accuracy > majority

    def test_detector_threshold_from_validation(self, fitted):
        detector, _ = fitted
        assert 0 < detector.threshold_ < 1
        assert detector.metadata_["validation_jobs"] == 300
        assert detector.metadata_["train_jobs"] == 600
        assert detector.history_

    def test_save_writes_safetensors_and_metadata(self, fitted):
        _, folder = fitted
        assert (folder / "model.safetensors").is_file()
        document = json.loads((folder / "flowad.json").read_text())
        assert document["template"] == "compact"
        assert document["label_map"] == {"0": "0", "1": "1"}
        assert document["split"] == "runs"
        assert len(document["data_fingerprint"]) == 64
        assert document["fields"][0] == "wms_delay"
        assert "f1" in document["validation_metrics"]

    def test_load_gives_same_predictions(self, fitted, held_out):
        detector, folder = fitted
        loaded = TextClassifierDetector.load(folder)
        np.testing.assert_allclose(
            loaded.predict_proba(held_out), detector.predict_proba(held_out), atol=1e-6
        )
        assert loaded.threshold_ == detector.threshold_

    def test_load_restores_fitted_attributes(self, fitted):
        detector, folder = fitted
        loaded = TextClassifierDetector.load(folder)
        assert loaded.template_ == detector.template_
        assert loaded.label_names_ == detector.label_names_
        assert loaded.history_ == detector.history_
        assert loaded.metadata_["train_jobs"] == 600
        assert loaded.metadata_["split"] == "runs"
        assert "threshold" not in loaded.metadata_

    def test_save_of_loaded_detector_keeps_document(self, fitted, tmp_path):
        _, folder = fitted
        saved_again = TextClassifierDetector.load(folder).save(tmp_path / "again")
        original = json.loads((folder / "flowad.json").read_text())
        assert json.loads((saved_again / "flowad.json").read_text()) == original

    def test_load_rejects_pickled_weights(self, fitted, tmp_path):
        _, folder = fitted
        copy = tmp_path / "copy"
        shutil.copytree(folder, copy)
        (copy / "pytorch_model.bin").write_bytes(b"not loaded")
        with pytest.raises(ModelFormatError, match=re.escape("contains pickled weight files ['pytorch_model.bin']")):
            TextClassifierDetector.load(copy)

    def test_load_without_metadata_raises(self, tmp_path):
        with pytest.raises(ModelFormatError, match=re.escape("flowad.json is missing")):
            TextClassifierDetector.load(tmp_path)


class TestScoreSentences:
    def test_score_sentences_unfitted_raises(self):
        with pytest.raises(NotFittedError, match=re.escape("not fitted yet")):
            TextClassifierDetector().score_sentences(["wms_delay 1.0"])

    def test_score_sentences_empty_returns_empty(self, fitted):
        detector, _ = fitted
        scores = detector.score_sentences([])
        assert scores.shape == (0,)

    def test_score_sentences_equal_predict_proba(self, fitted, held_out):
        detector, _ = fitted
        jobs = held_out.iloc[:200]
        sentences = get_template(detector.template_)(jobs)
        scores = detector.score_sentences(sentences)
        assert scores.shape == (len(jobs),)
        assert np.all((scores >= 0) & (scores <= 1))
        np.testing.assert_allclose(scores, detector.predict_proba(jobs), atol=1e-6)

    def test_score_sentences_one_matches_batch(self, fitted, held_out):
        detector, _ = fitted
        sentences = get_template(detector.template_)(held_out.iloc[:5])
        batch = detector.score_sentences(sentences)
        single = [detector.score_sentences([sentence])[0] for sentence in sentences]
        np.testing.assert_allclose(single, batch, atol=1e-5)


class TestCheckSafeModelFolder:
    def test_folder_without_safetensors_raises(self, tmp_path):
        (tmp_path / "config.json").write_text("{}")
        with pytest.raises(ModelFormatError, match=re.escape("has no .safetensors weight file")):
            check_safe_model_folder(tmp_path)
