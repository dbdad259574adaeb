"""Score the best classical baseline on the exact job samples of the ICL and
analysis benchmarks, so that every language-model number in RESULTS.md has a
baseline beside it on the same jobs.

Usage::

    python benchmarks/baseline_on_samples.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowad.baselines import BaselineDetector
from flowad.data import load_jobs
from flowad.evaluate import compute_metrics
from flowad.experiments import subsample_runs
from flowad.icl import stratified_sample
from flowad.splits import make_split


def _scores(train, validation, test, model: str, features: str, seed: int) -> float:
    detector = BaselineDetector(model, features=features, seed=seed)
    detector.fit(train, validation)
    metrics = compute_metrics(
        test["label"].to_numpy(), detector.predict_proba(test), threshold=detector.threshold_
    )
    return metrics["f1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    samples = {"1000genome": (60, 20), "montage": (40,), "predict_future_sales": (40,)}
    print("| sample | jobs | gbdt published F1 | gbdt context F1 | rf published F1 |")
    print("|---|---|---|---|---|")
    for workflow, sizes in samples.items():
        jobs = load_jobs(args.data_root / "flowbench" / f"{workflow}.zip")
        split = make_split(jobs, "runs", seed=args.seed)
        train, validation, test = (split.part(jobs, p) for p in ("train", "validation", "test"))
        for size in sizes:
            sample = test.iloc[stratified_sample(test["label"].to_numpy(), size, seed=args.seed)]
            # Context features of the sampled jobs come from their whole runs.
            context_test = test[test["run"].isin(sample["run"])]
            row = [
                _scores(train, validation, sample, "gbdt", "published", args.seed),
                _context_f1(train, validation, context_test, sample, args.seed),
                _scores(train, validation, sample, "rf", "published", args.seed),
            ]
            print(f"| ICL {workflow} test sample | {size} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    jobs = subsample_runs(load_jobs(args.data_root / "flowbench" / "1000genome.zip"), 0.05, seed=args.seed)
    jobs = jobs.reset_index(drop=True)
    split = make_split(jobs, "runs", seed=args.seed)
    train, validation, test = (split.part(jobs, p) for p in ("train", "validation", "test"))
    row = [
        _scores(train, validation, test, "gbdt", "published", args.seed),
        _scores(train, validation, test, "gbdt", "context", args.seed),
        _scores(train, validation, test, "rf", "published", args.seed),
    ]
    print(f"| analyses 1000genome 5 % of runs, test runs | {len(test)} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return 0


def _context_f1(train, validation, context_test, sample, seed: int) -> float:
    """F1 of gbdt with context features on the sample, context from whole runs."""
    detector = BaselineDetector("gbdt", features="context", seed=seed)
    detector.fit(train, validation)
    scores = detector.predict_proba(context_test)
    keep = context_test.index.isin(sample.index)
    metrics = compute_metrics(
        context_test["label"].to_numpy()[keep], scores[keep], threshold=detector.threshold_
    )
    return metrics["f1"]


if __name__ == "__main__":
    sys.exit(main())
