"""In-context learning (ICL): label jobs by prompting a generative language model.

:class:`FewShotDetector` writes each job into a prompt built from the
templates in :mod:`flowad.prompts`: the task, optionally the per-field mean
and standard deviation of normal and abnormal training jobs, optionally ``k``
labelled training jobs as examples, and the job to label. A backend from
:mod:`flowad.llm_backends` then decides:

``decision="score"``
    The log-probability of each label as the reply, from one forward pass per
    job. The score is the log-odds ``log p(Abnormal) - log p(Normal)`` minus a
    calibration offset, passed through a sigmoid.
``decision="generate"``
    The model writes a reply (with ``chain_of_thought``, its reasoning first)
    and :func:`parse_label` reads the final label from it. Replies that map to
    no label are handled by ``on_unmapped``, never guessed.

Open tasks:

- Nearest-neighbour examples use the job's numeric fields (and run-context
  features for run-context templates), never its text fields.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from flowad.exceptions import (
    BackendError,
    FlowadWarning,
    NotFittedError,
    UnmappedReplyError,
)
from flowad.prompts import (
    CONTENT_FREE_VALUE,
    LABEL_NAMES,
    Prompt,
    build_prompt,
    format_example,
    format_stats_block,
)
from flowad.templates import PUBLISHED_FIELDS, get_template

logger = logging.getLogger(__name__)

SELECTIONS = ("random", "balanced", "nearest")
DECISIONS = ("score", "generate")
CALIBRATIONS = ("validation", "platt", "content_free", "none")
UNMAPPED_POLICIES = ("raise", "anomalous", "skip")
ERROR_POLICIES = ("raise", "skip")
# Name under which the rendered template sentence appears in the job block.
MEASUREMENTS_FIELD = "measurements"
# A final "Label: X" line, allowing markdown emphasis and quotes around X.
_LABEL_LINE = re.compile(
    r"label\s*[:=]\s*[*_`'\"]*\s*(normal|abnormal|anomalous)\b", re.IGNORECASE
)
_BARE_LABEL = re.compile(
    r"^[\s*_`'\".]*(normal|abnormal|anomalous)[\s*_`'\".!]*$", re.I
)


class UnmappedReplyWarning(FlowadWarning):
    """Some replies mapped to no label and were skipped."""


def parse_label(reply: str) -> int | None:
    """Read the label from a generated reply.

    The last ``Label: <label>`` line wins, so reasoning that quotes a label
    earlier does not count. A reply that is only a label word (``Abnormal.``)
    is accepted too. Anything else returns ``None``: a reply such as "the job
    is not normal" is not guessed.

    Returns
    -------
    int or None
        1 for Abnormal (or Anomalous), 0 for Normal, ``None`` when unmapped.
    """
    matches = _LABEL_LINE.findall(reply)
    if matches:
        word = matches[-1]
    else:
        bare = _BARE_LABEL.match(reply)
        if bare is None:
            return None
        word = bare.group(1)
    return 0 if word.lower() == "normal" else 1


def class_statistics(
    jobs: pd.DataFrame, *, fields: Sequence[str] = PUBLISHED_FIELDS
) -> dict[int, dict]:
    """Compute the per-field mean and standard deviation of each class.

    Missing values are ignored. A class absent from ``jobs`` is left out.

    Returns
    -------
    dict
        ``{label: {"count": jobs, "fields": {field: (mean, std)}}}``.
    """
    stats = {}
    for label in (0, 1):
        part = jobs[jobs["label"] == label]
        if part.empty:
            continue
        values = part[list(fields)].astype(float)
        stats[label] = {
            "count": int(len(part)),
            "fields": {
                field: (
                    float(np.nan_to_num(values[field].mean())),
                    float(np.nan_to_num(values[field].std(ddof=0))),
                )
                for field in fields
            },
        }
    return stats


def stratified_sample(labels: Sequence[int], size: int, *, seed: int = 0) -> np.ndarray:
    """Return sorted positions of a seeded sample of ``size`` jobs.

    Each label keeps its share of the jobs, rounded by largest remainder, and
    at least one job when ``size`` allows. All positions are returned when
    there are at most ``size`` jobs.
    """
    labels = np.asarray(labels)
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if len(labels) <= size:
        return np.arange(len(labels))
    values, counts = np.unique(labels, return_counts=True)
    shares = size * counts / len(labels)
    allocated = np.minimum(np.maximum(np.floor(shares).astype(int), 1), counts)
    while allocated.sum() < size:
        allocated[
            np.argmax(np.where(allocated < counts, shares - allocated, -np.inf))
        ] += 1
    while allocated.sum() > size:
        allocated[np.argmax(allocated)] -= 1
    rng = np.random.default_rng(seed)
    chosen = []
    for value, count in zip(values, allocated):
        pool = np.flatnonzero(labels == value)
        chosen.extend(rng.choice(pool, size=count, replace=False))
    return np.sort(np.array(chosen, dtype=int))


NEIGHBOUR_FEATURES = ("fields", "ratios", "context")


def _neighbour_features(jobs: pd.DataFrame, kind: str) -> np.ndarray:
    """Return the numeric features that nearest-neighbour selection compares.

    ``fields`` are the published fields; ``ratios`` adds each run-context
    ratio against the same transformation on other hosts; ``context`` is every
    numeric run-context feature (:func:`flowad.context.context_features`).
    Durations, byte counts and ratios span orders of magnitude, so they are
    compared on a (signed) log scale; a missing field becomes -1, apart from
    every real value, and a missing context value 0.
    """
    if kind == "context":
        from flowad.context import context_features

        values = context_features(jobs).select_dtypes("number").to_numpy(float)
        values = np.where(np.isfinite(values), values, 0.0)
        return np.sign(values) * np.log1p(np.abs(values))
    values = jobs[list(PUBLISHED_FIELDS)].to_numpy(dtype=float)
    features = [np.where(np.isnan(values), -1.0, np.log1p(np.clip(values, 0, None)))]
    if kind == "ratios":
        from flowad.context import context_features

        ratios = context_features(jobs).filter(like="_ratio_others").to_numpy(float)
        features.append(
            np.where(np.isnan(ratios), 0.0, np.log(np.clip(ratios, 1e-3, None)))
        )
    return np.hstack(features)


def _platt_scaling(labels: np.ndarray, log_odds: np.ndarray) -> tuple[float, float]:
    """Fit ``P(anomalous) = sigmoid(slope * (x - offset))`` on validation jobs."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        raise ValueError(
            "calibration='platt' needs normal and anomalous validation jobs; the "
            "sample holds one class, so pass more validation jobs"
        )
    model = LogisticRegression(C=1e6).fit(log_odds.reshape(-1, 1), labels)
    slope = float(model.coef_[0, 0])
    if slope == 0.0:
        raise ValueError(
            "calibration='platt' found no relation between log-odds and labels on "
            "the validation jobs; use calibration='validation'"
        )
    logger.info("Platt scaling on %d validation jobs: slope %.3f", len(labels), slope)
    return slope, float(-model.intercept_[0] / slope)


def _positions(jobs: pd.DataFrame, positions: np.ndarray | None) -> np.ndarray:
    """Return ``positions`` as an integer array, or every row position."""
    if positions is None:
        return np.arange(len(jobs))
    positions = np.asarray(positions, dtype=int)
    if positions.size and (positions.min() < 0 or positions.max() >= len(jobs)):
        raise ValueError(
            f"positions must lie in [0, {len(jobs)}) for a table of {len(jobs)} "
            f"jobs, got values from {positions.min()} to {positions.max()}"
        )
    return positions


class FewShotDetector:
    """Label jobs Normal or Abnormal by prompting a language model.

    ``fit`` stores the training jobs used for examples and statistics and
    calibrates the score on validation jobs. It does not change the model's
    weights; for that, see :class:`flowad.finetune.TextClassifierDetector`.

    Parameters
    ----------
    backend
        A :class:`~flowad.llm_backends.LLMBackend`; ``None`` (default) uses
        :class:`~flowad.llm_backends.LocalCausalLM` with the packaged
        SmolLM2-135M-Instruct.
    template
        Sentence template that writes a job's fields (default ``"compact"``:
        rounded values with units, about a third of the tokens of
        ``"published"``). Run-context templates such as ``"context"`` compare a
        job with its run, so pass whole runs to every method.
    shots
        Labelled examples per prompt (default 0, zero-shot). More shots make
        the prompt longer and slower.
    selection : {"random", "balanced", "nearest"}
        How examples are chosen. ``random`` draws ``shots`` training jobs once.
        ``balanced`` (default) draws half normal and half abnormal jobs once.
        Both sets are shared by all jobs, so their key/value cache is reused.
        ``nearest`` picks, per job, the ``shots`` training jobs of the same
        transformation closest in numeric fields and puts the nearest last.
        These examples differ per job, so they are not part of the shared
        prefix and every job reads them.
    neighbours : {"fields", "ratios", "context"}, optional
        What ``nearest`` compares: the published fields (the default for
        templates without run context), those plus each run-context ratio to
        other hosts (``ratios``, the default for run-context templates), or
        every numeric run-context feature (``context``). Which is best depends
        on the workflow: choose on validation jobs.
    use_stats
        Include the class-statistics block computed on the training jobs
        (default True).
    chain_of_thought
        Ask for reasoning before the final label line; needs
        ``decision="generate"``. The reply is kept as the explanation.
    decision : {"score", "generate"}
        ``score`` (default) compares label log-probabilities; ``generate``
        parses a generated reply.
    calibration : {"validation", "platt", "content_free", "none"}
        How label log-odds ``x`` become a score ``sigmoid(slope_ * (x -
        offset_))`` with ``decision="score"``. ``validation`` (default) sets
        ``offset_`` to the log-odds threshold with the best F1 on validation
        jobs. ``platt`` fits a logistic regression of the validation labels on
        ``x`` (Platt scaling), so ``slope_`` may be negative when the model
        ranks jobs the wrong way round. ``content_free`` sets ``offset_`` to
        the log-odds of a query whose fields are all "N/A", and ``none`` to
        zero. The decision threshold on the score is always 0.5.
    on_unmapped : {"raise", "anomalous", "skip"}
        What a generated reply that maps to no label becomes: an
        :class:`~flowad.exceptions.UnmappedReplyError` (default), an
        anomalous prediction, or a skipped job (score NaN, with a warning).
    on_error : {"raise", "skip"}
        What a job whose backend request failed becomes: a
        :class:`~flowad.exceptions.BackendError` raised after all jobs ran
        (default), or a skipped job (score NaN, error kept per job).
    text_fields
        Job columns written as quoted text next to the template sentence
        (default ``("transformation",)``). Values are untrusted data.
    max_new_tokens
        Generation length; default 8, or 256 with ``chain_of_thought``.
    max_validation_jobs
        Validation jobs scored for calibration, a seeded sample stratified by
        label (default 200). More jobs give a steadier threshold and cost
        time.
    seed
        Seed for example draws and the validation sample (default 0).

    Attributes
    ----------
    offset_
        Calibration offset subtracted from the log-odds.
    slope_
        Factor applied to the offset log-odds; 1 unless ``calibration="platt"``.
    stats_block_
        The statistics text, or ``None``.
    shared_examples_
        Training positions of the examples shared by all jobs.
    """

    def __init__(
        self,
        backend=None,
        *,
        template: str = "compact",
        shots: int = 0,
        selection: str = "balanced",
        neighbours: str | None = None,
        use_stats: bool = True,
        chain_of_thought: bool = False,
        decision: str = "score",
        calibration: str = "validation",
        on_unmapped: str = "raise",
        on_error: str = "raise",
        text_fields: Sequence[str] = ("transformation",),
        max_new_tokens: int | None = None,
        max_validation_jobs: int = 200,
        seed: int = 0,
    ) -> None:
        self.backend = backend
        self.template = template
        self.shots = shots
        self.selection = selection
        self.neighbours = neighbours
        self.use_stats = use_stats
        self.chain_of_thought = chain_of_thought
        self.decision = decision
        self.calibration = calibration
        self.on_unmapped = on_unmapped
        self.on_error = on_error
        self.text_fields = text_fields
        self.max_new_tokens = max_new_tokens
        self.max_validation_jobs = max_validation_jobs
        self.seed = seed

    # ------------------------------------------------------------ checks

    def _check_params(self) -> None:
        for name, value, choices in (
            ("selection", self.selection, SELECTIONS),
            ("neighbours", self.neighbours, (None, *NEIGHBOUR_FEATURES)),
            ("decision", self.decision, DECISIONS),
            ("calibration", self.calibration, CALIBRATIONS),
            ("on_unmapped", self.on_unmapped, UNMAPPED_POLICIES),
            ("on_error", self.on_error, ERROR_POLICIES),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if not isinstance(self.shots, int) or self.shots < 0:
            raise ValueError(
                f"shots must be a non-negative integer, got {self.shots!r}"
            )
        if self.chain_of_thought and self.decision != "generate":
            raise ValueError(
                "chain_of_thought needs a generated reply; pass decision='generate'"
            )
        if self.decision == "score" and not self.backend_.supports_scoring:
            raise ValueError(
                f"{type(self.backend_).__name__} cannot score labels; pass "
                "decision='generate' or use the local backend"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "train_jobs_"):
            raise NotFittedError(
                "this FewShotDetector is not fitted yet; call fit(train_jobs, "
                "validation_jobs) first"
            )

    # ------------------------------------------------------------ fit

    def fit(
        self, train_jobs: pd.DataFrame, validation_jobs: pd.DataFrame | None = None
    ) -> FewShotDetector:
        """Store examples and statistics from training jobs and calibrate.

        Parameters
        ----------
        train_jobs
            Labelled jobs (whole runs for run-context templates) that provide
            examples and class statistics.
        validation_jobs
            Labelled jobs for ``calibration="validation"``; up to
            ``max_validation_jobs`` of them are scored.

        Returns
        -------
        FewShotDetector
            self.
        """
        from flowad.llm_backends import LocalCausalLM

        self.backend_ = self.backend if self.backend is not None else LocalCausalLM()
        self._check_params()
        self.template_ = get_template(self.template)
        self.neighbours_ = self.neighbours or (
            "ratios" if self.template_.uses_run_context else "fields"
        )
        if self.neighbours_ != "fields" and not self.template_.uses_run_context:
            raise ValueError(
                f"neighbours={self.neighbours_!r} compares run-context features; "
                "use a run-context template (for example 'context') or "
                "neighbours='fields'"
            )
        if (
            self.shots > 0
            and train_jobs["label"].nunique() < 2
            and self.selection == "balanced"
        ):
            raise ValueError(
                "balanced selection needs normal and abnormal training jobs; the "
                "training jobs hold only one class"
            )
        self.train_jobs_ = train_jobs
        self.train_labels_ = train_jobs["label"].to_numpy(dtype=int)
        self.train_fields_ = self._job_fields(train_jobs)
        self.stats_block_ = (
            format_stats_block(class_statistics(train_jobs)) if self.use_stats else None
        )
        rng = np.random.default_rng(self.seed)
        self.balanced_examples_ = self._draw_balanced(rng)
        self.shared_examples_ = np.array([], dtype=int)
        if self.shots and self.selection == "random":
            self.shared_examples_ = rng.choice(
                len(train_jobs), size=min(self.shots, len(train_jobs)), replace=False
            )
        elif self.shots and self.selection == "balanced":
            self.shared_examples_ = self.balanced_examples_
        if self.shots and self.selection == "nearest":
            self._fit_neighbours(train_jobs)
        self.offset_ = 0.0
        self.slope_ = 1.0
        if self.decision == "score":
            self.slope_, self.offset_ = self._calibrate(validation_jobs)
        logger.info(
            "ICL detector ready: %s, template %s, %d shots (%s), stats %s, %s, "
            "offset %.3f",
            self.backend_.model_name,
            self.template,
            self.shots,
            self.selection,
            self.use_stats,
            self.decision,
            self.offset_,
        )
        return self

    def _draw_balanced(self, rng: np.random.Generator) -> np.ndarray:
        """Draw ``shots`` training positions, half of each class, in random order."""
        shots = max(self.shots, 2)
        chosen = []
        for label, count in ((0, shots - shots // 2), (1, shots // 2)):
            pool = np.flatnonzero(self.train_labels_ == label)
            if len(pool):
                chosen.extend(
                    rng.choice(pool, size=min(count, len(pool)), replace=False)
                )
        chosen = np.array(chosen, dtype=int)
        rng.shuffle(chosen)
        return chosen[: self.shots] if self.shots else chosen

    def _fit_neighbours(self, train_jobs: pd.DataFrame) -> None:
        """Index training jobs per transformation for nearest-neighbour examples."""
        from sklearn.neighbors import NearestNeighbors

        features = _neighbour_features(train_jobs, self.neighbours_)
        self.feature_mean_ = features.mean(axis=0)
        self.feature_scale_ = features.std(axis=0) + 1e-9
        scaled = (features - self.feature_mean_) / self.feature_scale_
        groups = train_jobs["transformation"].astype(str).to_numpy()
        self.neighbour_index_ = {}
        for name in np.unique(groups):
            positions = np.flatnonzero(groups == name)
            if len(positions) >= self.shots:
                self.neighbour_index_[name] = (
                    positions,
                    NearestNeighbors(n_neighbors=self.shots).fit(scaled[positions]),
                )
        self.neighbour_index_[None] = (
            np.arange(len(scaled)),
            NearestNeighbors(n_neighbors=min(self.shots, len(scaled))).fit(scaled),
        )

    def _nearest_examples(
        self, jobs: pd.DataFrame, positions: np.ndarray
    ) -> list[np.ndarray]:
        """Return per selected job the training positions of its neighbours."""
        features = _neighbour_features(jobs, self.neighbours_)
        scaled = (features[positions] - self.feature_mean_) / self.feature_scale_
        groups = jobs["transformation"].astype(str).to_numpy()[positions]
        result: list[np.ndarray] = [np.array([], dtype=int)] * len(positions)
        for name in np.unique(groups):
            rows = np.flatnonzero(groups == name)
            positions, index = self.neighbour_index_.get(
                name, self.neighbour_index_[None]
            )
            _, neighbours = index.kneighbors(scaled[rows])
            for row, found in zip(rows, neighbours):
                # kneighbors sorts nearest first; the nearest goes last, right
                # before the query, where it weighs most.
                result[row] = positions[found[::-1]]
        return result

    def _calibrate(self, validation_jobs: pd.DataFrame | None) -> tuple[float, float]:
        """Return the slope and log-odds offset for the chosen calibration."""
        from flowad.evaluate import choose_threshold

        if self.calibration == "none":
            return 1.0, 0.0
        if self.calibration == "content_free":
            fields = {name: CONTENT_FREE_VALUE for name in self._field_names()}
            examples = [
                format_example(self.train_fields_[i], self.train_labels_[i])
                for i in (self.balanced_examples_ if self.shots else [])
            ]
            if self.selection == "nearest":
                prompt = self._prompt(fields, job_examples=examples)
            else:
                prompt = self._prompt(fields)
            return 1.0, float(self._log_odds([prompt])[0])
        if validation_jobs is None or validation_jobs.empty:
            raise ValueError(
                f"calibration={self.calibration!r} needs validation_jobs; pass them "
                "to fit or use calibration='content_free'"
            )
        positions = self._sample_validation(validation_jobs)
        log_odds = self._log_odds(
            self.build_prompts(validation_jobs, positions=positions)
        )
        labels = validation_jobs["label"].to_numpy()[positions]
        if self.calibration == "platt":
            return _platt_scaling(labels, log_odds)
        threshold = choose_threshold(labels, log_odds)
        logger.info(
            "calibrated on %d validation jobs: log-odds threshold %.3f",
            len(positions),
            threshold,
        )
        return 1.0, float(threshold)

    def _sample_validation(self, jobs: pd.DataFrame) -> np.ndarray:
        """Return positions of up to ``max_validation_jobs`` jobs, stratified."""
        return stratified_sample(
            jobs["label"].to_numpy(), self.max_validation_jobs, seed=self.seed
        )

    # ------------------------------------------------------------ prompts

    def _field_names(self) -> list[str]:
        return [*self.text_fields, MEASUREMENTS_FIELD]

    def _job_fields(
        self, jobs: pd.DataFrame, positions: np.ndarray | None = None
    ) -> list[dict]:
        """Return, per selected job, the field name to value mapping of its block.

        Sentences are rendered on the whole table first, so run-context
        templates see every job of a run even when few are selected.
        """
        missing = [name for name in self.text_fields if name not in jobs.columns]
        if missing:
            raise ValueError(
                f"text_fields {missing} are not job columns; choose from "
                f"{sorted(jobs.columns)}"
            )
        sentences = self.template_(jobs)
        if positions is None:
            positions = np.arange(len(jobs))
        text = {name: jobs[name].astype(str).to_numpy() for name in self.text_fields}
        return [
            {
                **{name: text[name][row] for name in self.text_fields},
                MEASUREMENTS_FIELD: sentences[row],
            }
            for row in positions
        ]

    def _prompt(self, fields: dict, *, job_examples: Sequence[str] = ()) -> Prompt:
        shared = [
            format_example(self.train_fields_[i], self.train_labels_[i])
            for i in self.shared_examples_
        ]
        return build_prompt(
            fields,
            stats_block=self.stats_block_,
            shared_examples=shared,
            job_examples=job_examples,
            chain_of_thought=self.chain_of_thought,
            start_reply=self.decision == "score"
            or getattr(self.backend_, "continues_reply", False),
        )

    def build_prompts(
        self, jobs: pd.DataFrame, *, positions: np.ndarray | None = None
    ) -> list[Prompt]:
        """Build the prompt of every job, or of the jobs at ``positions``, in order.

        Sentences and neighbour features are computed on the whole ``jobs``
        table, so pass whole runs for run-context templates and select jobs
        with ``positions``.
        """
        self._check_fitted()
        positions = _positions(jobs, positions)
        fields = self._job_fields(jobs, positions)
        neighbours = None
        if self.shots and self.selection == "nearest":
            neighbours = self._nearest_examples(jobs, positions)
        prompts = []
        for row, job in enumerate(fields):
            examples = ()
            if neighbours is not None:
                examples = [
                    format_example(self.train_fields_[i], self.train_labels_[i])
                    for i in neighbours[row]
                ]
            prompts.append(self._prompt(job, job_examples=examples))
        return prompts

    # ------------------------------------------------------------ decisions

    def _log_odds(self, prompts: Sequence[Prompt]) -> np.ndarray:
        scores = self.backend_.score_labels(prompts, LABEL_NAMES)
        return scores[:, 1] - scores[:, 0]

    def decision_function(
        self, jobs: pd.DataFrame, *, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """Return the label log-odds ``log p(Abnormal) - log p(Normal)`` per job.

        Only for ``decision="score"``; the calibration offset is not applied.
        ``positions`` selects jobs as in :meth:`build_prompts`.
        """
        self._check_fitted()
        if self.decision != "score":
            raise ValueError(
                "decision_function needs decision='score'; with 'generate' use "
                "predict_details"
            )
        return self._log_odds(self.build_prompts(jobs, positions=positions))

    def predict_details(
        self, jobs: pd.DataFrame, *, positions: np.ndarray | None = None
    ) -> pd.DataFrame:
        """Label every job and keep the reply, status and error per job.

        ``positions`` selects jobs as in :meth:`build_prompts`.

        Returns
        -------
        pandas.DataFrame
            One row per selected job, with its index from ``jobs``: ``score``
            (anomaly score in [0, 1], NaN for a skipped job), ``predicted``
            (1, 0, or <NA> when skipped), ``status`` (``ok``, ``unmapped`` or
            ``error``), ``explanation`` (the generated reply, empty with label
            scoring) and ``error`` (the backend error text or empty).

        Raises
        ------
        UnmappedReplyError
            With ``on_unmapped="raise"``, for the first reply that maps to no
            label.
        BackendError
            With ``on_error="raise"``, after all jobs ran, when any request
            failed.
        """
        self._check_fitted()
        positions = _positions(jobs, positions)
        count = len(positions)
        status = np.full(count, "ok", dtype=object)
        explanation = np.full(count, "", dtype=object)
        error = np.full(count, "", dtype=object)
        if self.decision == "score":
            log_odds = self.decision_function(jobs, positions=positions)
            logits = self.slope_ * (log_odds - self.offset_)
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            prompts = self.build_prompts(jobs, positions=positions)
            scores = self._generate_scores(prompts, status, explanation, error)
        predicted = pd.array(
            [pd.NA if math.isnan(s) else int(s >= 0.5) for s in scores], dtype="Int64"
        )
        return pd.DataFrame(
            {
                "score": scores,
                "predicted": predicted,
                "status": status,
                "explanation": explanation,
                "error": error,
            },
            index=jobs.index[positions],
        )

    def _generate_scores(
        self,
        prompts: list[Prompt],
        status: np.ndarray,
        explanation: np.ndarray,
        error: np.ndarray,
    ) -> np.ndarray:
        """Generate replies, parse labels and apply the unmapped and error policies."""
        max_new_tokens = self.max_new_tokens or (256 if self.chain_of_thought else 8)
        replies = self.backend_.generate(prompts, max_new_tokens=max_new_tokens)
        scores = np.full(len(prompts), np.nan)
        for row, reply in enumerate(replies):
            if isinstance(reply, BackendError):
                status[row] = "error"
                error[row] = str(reply)
                continue
            # The started reply ("Label:") belongs to the model output, so it is
            # joined to the generated text before parsing.
            if prompts[row].answer_prefix:
                reply = f"{prompts[row].answer_prefix} {reply}"
            explanation[row] = reply
            label = parse_label(reply)
            if label is not None:
                scores[row] = float(label)
                continue
            status[row] = "unmapped"
            if self.on_unmapped == "raise":
                raise UnmappedReplyError(
                    f"the reply for job {row} maps to no label: "
                    f"{reply[:200]!r}; pass on_unmapped='anomalous' or 'skip' to "
                    "continue past such replies"
                )
            if self.on_unmapped == "anomalous":
                scores[row] = 1.0
        failed = int((status == "error").sum())
        if failed and self.on_error == "raise":
            first = error[status == "error"][0]
            raise BackendError(
                f"{failed} of {len(prompts)} jobs got no reply (first: {first}); pass "
                "on_error='skip' to keep the others"
            )
        unmapped = int((status == "unmapped").sum())
        if unmapped and self.on_unmapped == "skip":
            warnings.warn(
                f"{unmapped} of {len(prompts)} replies mapped to no label and were "
                "skipped",
                UnmappedReplyWarning,
                stacklevel=3,
            )
        return scores

    def predict_proba(
        self, jobs: pd.DataFrame, *, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """Return the anomaly score per job in [0, 1], or NaN for a skipped job."""
        details = self.predict_details(jobs, positions=positions)
        return details["score"].to_numpy(dtype=float)

    def predict(
        self, jobs: pd.DataFrame, *, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """Return 1 (anomalous) or 0 per job, and -1 for skipped jobs."""
        predicted = self.predict_details(jobs, positions=positions)["predicted"]
        return predicted.fillna(-1).to_numpy(dtype=int)
