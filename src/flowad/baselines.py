"""Classical baselines trained on the same jobs and fields as the language models.

:class:`BaselineDetector` wraps four scikit-learn models behind the detector
contract of flowad (``fit`` / ``predict_proba`` / ``predict``, scores in
[0, 1], higher = more anomalous):

``lr``
    Logistic regression on signed-log, standardised features.
``rf``
    Random forest.
``gbdt``
    Histogram gradient boosting (``HistGradientBoostingClassifier``), which
    handles missing values natively.
``iforest``
    Isolation forest, unsupervised: it never reads the training labels.

Feature sets:

``published``
    The nine numeric fields of the published sentence
    (:data:`flowad.templates.PUBLISHED_FIELDS`), so a baseline reads exactly
    the values that the ``published`` and ``compact`` templates show a
    language model.
``context``
    The same nine fields plus the run-context columns of
    :func:`flowad.context.context_features`, computed per run from the job
    records of the table passed in (never from labels).
``context_full``
    The nine fields plus only the run-context columns that the
    ``context_full`` template writes
    (:data:`flowad.context.CONTEXT_FULL_COLUMNS`). The run context is then
    the same as a language model fine-tuned on that template reads. The job
    fields differ: the sentence writes four of the nine (runtime, CPU time,
    stage-in and stage-out delay) and the transformation name.

Missing values stay NaN for ``gbdt``. The other models get median imputation
plus one indicator column per field that had missing values in training.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from flowad.evaluate import choose_threshold
from flowad.exceptions import NotFittedError
from flowad.templates import PUBLISHED_FIELDS

logger = logging.getLogger(__name__)

MODEL_NAMES = ("lr", "rf", "gbdt", "iforest")
FEATURE_SETS = ("published", "context", "context_full")
SUPERVISED_MODELS = frozenset({"lr", "rf", "gbdt"})


def _signed_log(values: np.ndarray) -> np.ndarray:
    """Compress heavy tails (bytes, seconds) so a linear model is not dominated."""
    return np.sign(values) * np.log1p(np.abs(values))


def _context_module():
    """Import :mod:`flowad.context`, or raise ImportError naming the fix."""
    try:
        from flowad import context
    except ModuleNotFoundError as error:
        if error.name != "flowad.context":
            raise
        raise ImportError(
            "context features need the module flowad.context, which is not "
            "installed in this flowad version; use features='published'"
        ) from error
    return context


def build_features(jobs: pd.DataFrame, features: str = "published") -> pd.DataFrame:
    """Return the numeric feature table of a baseline, aligned with ``jobs``.

    Parameters
    ----------
    jobs
        Job table from :func:`flowad.data.load_jobs`. For the context sets it
        must contain whole runs, because context columns compare a job with the
        other jobs of its run.
    features
        {"published", "context", "context_full"}.

    Returns
    -------
    pandas.DataFrame
        Float columns, ``jobs``' index; infinite values are replaced by NaN.

    Raises
    ------
    ValueError
        If ``features`` is unknown or a published field is missing.
    ImportError
        If a context set is requested and :mod:`flowad.context` does not exist.
    """
    if features not in FEATURE_SETS:
        raise ValueError(
            f"unknown feature set {features!r}; choose one of {FEATURE_SETS}"
        )
    missing = [field for field in PUBLISHED_FIELDS if field not in jobs.columns]
    if missing:
        raise ValueError(
            f"the job table lacks the column(s) {missing}; load jobs with "
            "flowad.data.load_jobs"
        )
    table = jobs[list(PUBLISHED_FIELDS)].astype(float)
    if features in ("context", "context_full"):
        module = _context_module()
        context = module.context_features(jobs)
        if features == "context_full":
            context = context[list(module.CONTEXT_FULL_COLUMNS)]
        context = context.reindex(jobs.index).astype(float)
        duplicated = [name for name in context.columns if name in table.columns]
        table = pd.concat([table, context.drop(columns=duplicated)], axis=1)
    return table.replace([np.inf, -np.inf], np.nan)


def _build_estimator(model: str, *, seed: int, n_jobs: int, params: dict):
    """Return an unfitted scikit-learn estimator or pipeline for ``model``."""
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        IsolationForest,
        RandomForestClassifier,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if model == "gbdt":
        return HistGradientBoostingClassifier(random_state=seed, **params)
    imputer = SimpleImputer(strategy="median", add_indicator=True)
    if model == "lr":
        settings = {"max_iter": 2000, **params}
        return make_pipeline(
            FunctionTransformer(_signed_log),
            imputer,
            StandardScaler(),
            LogisticRegression(random_state=seed, **settings),
        )
    if model == "rf":
        settings = {"n_estimators": 100, "min_samples_leaf": 2, **params}
        return make_pipeline(
            imputer,
            RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **settings),
        )
    settings = {"n_estimators": 200, **params}
    return make_pipeline(
        imputer, IsolationForest(random_state=seed, n_jobs=n_jobs, **settings)
    )


class BaselineDetector:
    """Classical anomalous-job classifier on the numeric job fields.

    It does not read sentences or call any language model. It exists so that
    every language-model number can be compared with a classical model trained
    on the same split and the same fields.

    Parameters
    ----------
    model
        {"lr", "rf", "gbdt", "iforest"}, default "gbdt". ``iforest`` is
        unsupervised: it ignores training labels, so it needs no anomalous
        jobs in training but is usually weaker.
    features
        {"published", "context", "context_full"}, default "published".
        ``context`` adds every run-context column of :mod:`flowad.context`,
        ``context_full`` only those the ``context_full`` template writes. Pass
        whole runs to ``fit`` and ``predict_proba`` for those to be meaningful.
    seed
        Random state of the estimator.
    n_jobs
        Workers for ``rf`` and ``iforest`` (joblib) and OpenMP threads for
        ``gbdt`` (default 1). One thread keeps a shared machine responsive:
        OpenMP threads that compete with other processes for cores slow a fit
        down many times over.
    params
        Extra keyword arguments for the scikit-learn estimator, e.g.
        ``{"max_iter": 300}`` for ``gbdt``; default none.

    Attributes
    ----------
    estimator_
        The fitted scikit-learn estimator or pipeline.
    feature_names_
        Feature columns, in the order the estimator saw them.
    threshold_
        Score at or above which a job is predicted anomalous. It maximises F1
        on the validation jobs (:func:`flowad.evaluate.choose_threshold`);
        without validation jobs, or with one class only there, it is 0.5.
    reference_scores_
        ``iforest`` only: sorted raw anomaly scores of the training jobs. A
        job's probability is the fraction of training jobs scoring at or below
        it, so it lies in [0, 1].

    Examples
    --------
    >>> detector = BaselineDetector("gbdt").fit(train_jobs, validation_jobs)
    >>> scores = detector.predict_proba(test_jobs)
    """

    def __init__(
        self,
        model: str = "gbdt",
        *,
        features: str = "published",
        seed: int = 0,
        n_jobs: int = 1,
        params: dict | None = None,
    ) -> None:
        self.model = model
        self.features = features
        self.seed = seed
        self.n_jobs = n_jobs
        self.params = params

    def _check_arguments(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(
                f"unknown baseline model {self.model!r}; choose one of {MODEL_NAMES}"
            )
        if self.features not in FEATURE_SETS:
            raise ValueError(
                f"unknown feature set {self.features!r}; choose one of {FEATURE_SETS}"
            )
        if not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise ValueError(f"n_jobs must be a positive integer, got {self.n_jobs!r}")
        if self.params is not None and not isinstance(self.params, dict):
            raise TypeError(
                f"params must be a dict of estimator arguments, got "
                f"{type(self.params).__name__}"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise NotFittedError(
                "this BaselineDetector is not fitted yet; call fit(train_jobs, "
                "validation_jobs) first"
            )

    def _matrix(self, jobs: pd.DataFrame) -> pd.DataFrame:
        """Return the features of ``jobs`` in the column order seen in fit."""
        table = build_features(jobs, self.features)
        if hasattr(self, "feature_names_"):
            table = table.reindex(columns=self.feature_names_)
        return table

    def _thread_limit(self):
        """Return a context that caps the OpenMP and BLAS threads at ``n_jobs``."""
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=self.n_jobs)

    def _raw_scores(self, table: pd.DataFrame) -> np.ndarray:
        """Return P(anomalous), or the isolation forest's raw anomaly score."""
        with self._thread_limit():
            if self.model == "iforest":
                # score_samples is higher for normal points, so negate it.
                return -self.estimator_.score_samples(table)
            return self.estimator_.predict_proba(table)[:, 1]

    def fit(
        self, train_jobs: pd.DataFrame, validation_jobs: pd.DataFrame | None = None
    ) -> BaselineDetector:
        """Train on ``train_jobs`` and choose the threshold on ``validation_jobs``.

        Parameters
        ----------
        train_jobs
            Job table with ``label``; ``iforest`` ignores the labels.
        validation_jobs
            Jobs with ``label`` used only to choose ``threshold_``.

        Returns
        -------
        BaselineDetector
            self, fitted.

        Raises
        ------
        ValueError
            On an unknown model or feature set, an empty training table, or
            training labels of one class only for a supervised model.
        """
        self._check_arguments()
        if len(train_jobs) == 0:
            raise ValueError("train_jobs is empty; pass at least one job")
        table = self._matrix(train_jobs)
        labels = train_jobs["label"].to_numpy(dtype=int)
        if self.model in SUPERVISED_MODELS and len(np.unique(labels)) < 2:
            raise ValueError(
                f"model {self.model!r} needs normal and anomalous training jobs, "
                f"but every training label is {labels[0]}; add runs of the other "
                "class or use model='iforest'"
            )
        logger.info(
            "Fitting baseline %s on %d jobs (%d anomalous), %d %s features",
            self.model,
            len(table),
            int(labels.sum()),
            table.shape[1],
            self.features,
        )
        estimator = _build_estimator(
            self.model, seed=self.seed, n_jobs=self.n_jobs, params=self.params or {}
        )
        with self._thread_limit():
            if self.model == "iforest":
                estimator.fit(table)
            else:
                estimator.fit(table, labels)
        self.estimator_ = estimator
        self.feature_names_ = list(table.columns)
        if self.model == "iforest":
            self.reference_scores_ = np.sort(self._raw_scores(table))
        self.threshold_ = 0.5
        if validation_jobs is None or len(validation_jobs) == 0:
            logger.warning(
                "No validation jobs given; baseline %s keeps the threshold 0.5",
                self.model,
            )
        else:
            self.threshold_ = choose_threshold(
                validation_jobs["label"].to_numpy(dtype=int),
                self.predict_proba(validation_jobs),
            )
            logger.info("Threshold %.4f chosen on validation", self.threshold_)
        return self

    def predict_proba(self, jobs: pd.DataFrame) -> np.ndarray:
        """Return the anomaly score of each job, in [0, 1].

        For supervised models this is the predicted probability of the
        anomalous class. For ``iforest`` it is the rank of the job's anomaly
        score among the training jobs (see ``reference_scores_``).
        """
        self._check_fitted()
        raw = self._raw_scores(self._matrix(jobs))
        if self.model == "iforest":
            reference = self.reference_scores_
            return np.searchsorted(reference, raw, side="right") / len(reference)
        return np.clip(raw, 0.0, 1.0)

    def predict(self, jobs: pd.DataFrame) -> np.ndarray:
        """Return 1 for jobs scored at or above ``threshold_``, else 0."""
        return (self.predict_proba(jobs) >= self.threshold_).astype(int)
