"""Command-line interface: ``flowad <command> ...``.

Each subcommand has an ``_add_<name>_parser`` function that declares its
options and a ``_cmd_<name>(args) -> int`` handler that calls the library.
Heavy imports (torch, transformers, plotting) happen inside the handlers so
that ``flowad --help`` stays fast. Only this module writes to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from flowad import __version__
from flowad.exceptions import FlowadError

logger = logging.getLogger("flowad")

# Template of the main job; run-context sentences carry the most signal.
DEMO_TEMPLATE = "context"


def _add_skip_bad_runs_argument(parser: argparse.ArgumentParser) -> None:
    """Add --skip-bad-runs, the policy for invalid run files."""
    parser.add_argument(
        "--skip-bad-runs",
        action="store_true",
        help="Skip invalid run files with a warning instead of stopping.",
    )


def _template_name(name: str) -> str:
    """Check a --template value while parsing, before any data is loaded."""
    from flowad.templates import get_template

    try:
        get_template(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return name


def _add_template_argument(parser: argparse.ArgumentParser) -> None:
    """Add --template, the name of the template that renders jobs as sentences."""
    parser.add_argument(
        "--template",
        type=_template_name,
        default="compact",
        help="Sentence template name, e.g. published, compact, context, "
        "context_full; see the README for all (default: %(default)s).",
    )


def _add_evaluation_out_argument(parser: argparse.ArgumentParser) -> None:
    """Add --out, the evaluation folder that write_evaluation fills."""
    parser.add_argument(
        "--out", required=True, help="Folder for metrics.json and predictions.csv."
    )


def _add_data_arguments(parser: argparse.ArgumentParser, *, split: bool = True) -> None:
    """Add --data, --skip-bad-runs and, optionally, the split options."""
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="Flow-Bench runs: zip archives, folders or run CSV files.",
    )
    _add_skip_bad_runs_argument(parser)
    if split:
        parser.add_argument(
            "--split",
            choices=("runs", "rows", "paper"),
            default="runs",
            help="How to split jobs into train/validation/test (default: runs).",
        )
        parser.add_argument(
            "--paper-splits",
            help="Folder with the published validation.csv and test.csv "
            "(needed for --split paper).",
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="Seed of the split (default: 0)."
        )


def _load(args: argparse.Namespace):
    """Read the jobs named by --data."""
    from flowad.data import load_jobs

    return load_jobs(args.data, skip_bad_runs=args.skip_bad_runs)


def _load_split(args: argparse.Namespace):
    """Read the jobs and build the split named by the arguments."""
    from flowad.splits import make_split

    jobs = _load(args)
    split = make_split(jobs, args.split, seed=args.seed, paper_dir=args.paper_splits)
    if args.split != "runs":
        # These splits share runs between parts: give each job the context of
        # its whole run, not of the share of it that landed in its part.
        from flowad.context import attach_context

        jobs = attach_context(jobs)
    return jobs, split


# ---------------------------------------------------------------- data


def _add_data_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="Inspect and split job records.")
    data_commands = parser.add_subparsers(dest="data_command", required=True)
    describe = data_commands.add_parser(
        "describe", help="Print runs and jobs per label and per job type."
    )
    _add_data_arguments(describe, split=False)
    describe.set_defaults(handler=_cmd_data_describe)
    split = data_commands.add_parser(
        "split", help="Write train/validation/test in the published text,label form."
    )
    _add_data_arguments(split)
    split.add_argument("--out", required=True, help="Output folder.")
    split.set_defaults(handler=_cmd_data_split)


def _cmd_data_describe(args: argparse.Namespace) -> int:
    from flowad.data import describe_jobs

    jobs = _load(args)
    tables = describe_jobs(jobs)
    print(f"{len(jobs)} jobs in {jobs['run'].nunique()} runs")
    for name, table in tables.items():
        print()
        print(table.to_string())
    return 0


def _cmd_data_split(args: argparse.Namespace) -> int:
    from flowad.splits import write_text_split

    jobs, split = _load_split(args)
    written = write_text_split(jobs, split, args.out)
    for part, path in written.items():
        print(f"{part:<11}{split.sizes()[part]:>8} jobs  {path}")
    return 0


# ---------------------------------------------------------------- baseline, report


def _add_baseline_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "baseline",
        help="Train a classical model on the same split and fields as the "
        "language models and evaluate it on test.",
    )
    _add_data_arguments(parser)
    parser.add_argument(
        "--model",
        choices=("lr", "rf", "gbdt", "iforest"),
        default="gbdt",
        help="Logistic regression, random forest, gradient boosting or "
        "isolation forest (default: gbdt).",
    )
    parser.add_argument(
        "--features",
        choices=("published", "context", "context_full"),
        default="published",
        help="The nine published fields, those plus every run-context column, "
        "or plus the columns the context_full template writes (default: published).",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="Workers for rf and iforest, threads for gbdt (default: 1).",
    )
    _add_evaluation_out_argument(parser)
    parser.set_defaults(handler=_cmd_baseline)


def _cmd_baseline(args: argparse.Namespace) -> int:
    from flowad.baselines import BaselineDetector
    from flowad.evaluate import format_metrics_table, write_evaluation

    jobs, split = _load_split(args)
    detector = BaselineDetector(
        args.model, features=args.features, seed=args.seed, n_jobs=args.jobs
    )
    detector.fit(split.part(jobs, "train"), split.part(jobs, "validation"))
    test_jobs = split.part(jobs, "test")
    metrics = write_evaluation(
        args.out,
        test_jobs,
        detector.predict_proba(test_jobs),
        threshold=detector.threshold_,
        meta={
            "data": args.data,
            "split": args.split,
            "seed": args.seed,
            "method": "baseline",
            "model": args.model,
            "features": args.features,
            "template": args.features,
        },
    )
    print(format_metrics_table(metrics, title=f"baseline {args.model}, test jobs"))
    print(f"\nwrote {Path(args.out) / 'metrics.json'} and predictions.csv")
    return 0


def _add_report_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="Write one self-contained HTML report of evaluation folders."
    )
    parser.add_argument(
        "results",
        nargs="+",
        help="Evaluation folders (metrics.json and predictions.csv).",
    )
    parser.add_argument("--out", required=True, help="HTML file to write.")
    parser.add_argument(
        "--title", default="flowad report", help="Heading of the report."
    )
    parser.add_argument(
        "--timeline-runs",
        type=int,
        default=4,
        help="Runs drawn as host timelines per folder (default: 4).",
    )
    parser.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from flowad.report import build_report

    path = build_report(
        args.results,
        args.out,
        title=args.title,
        max_timeline_runs=args.timeline_runs,
    )
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------- train, evaluate, predict, demo


def _add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fine-tuning hyperparameters of FinetuneConfig."""
    parser.add_argument(
        "--model",
        help="Pretrained model folder or hub id (default: packaged all-MiniLM-L6-v2).",
    )
    _add_template_argument(parser)
    parser.add_argument(
        "--epochs", type=int, default=3, help="Training epochs (default: %(default)s)."
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="Training batch size (default: %(default)s)."
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=5e-5,
        help="Peak learning rate of AdamW (default: %(default)s).",
    )
    parser.add_argument(
        "--max-train-jobs",
        type=int,
        help="Train on a seeded random subsample of this many jobs; unset uses all "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--max-validation-jobs",
        type=int,
        help="Validate on a seeded subsample of this many jobs; unset uses all "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--label-column",
        choices=("label", "anomaly_kind", "anomaly_type"),
        default="label",
        help="Classes to learn: binary label (default), normal/cpu/hdd, or each level.",
    )
    parser.add_argument(
        "--class-weight",
        choices=("balanced",),
        help="Weight the loss by inverse class frequency.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for PyTorch; unset keeps PyTorch's default.",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="Hide progress bars."
    )


def _finetune_config(args: argparse.Namespace):
    """Build a FinetuneConfig from parsed arguments."""
    from flowad.finetune import FinetuneConfig

    return FinetuneConfig(
        model=args.model,
        template=args.template,
        label_column=args.label_column,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_train_jobs=args.max_train_jobs,
        max_validation_jobs=args.max_validation_jobs,
        class_weight=args.class_weight,
        seed=args.seed,
        num_threads=args.threads,
        show_progress_bar=not args.no_progress,
    )


def _data_meta(args: argparse.Namespace) -> dict:
    """Return the provenance of the data and split named by the arguments."""
    return {
        "data": [str(path) for path in args.data],
        "split": args.split,
        "seed": args.seed,
        "paper_splits": args.paper_splits,
    }


def _add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="Fine-tune a language model on the training part of a split."
    )
    _add_data_arguments(parser)
    _add_finetune_arguments(parser)
    parser.add_argument("--out", required=True, help="Folder for the fine-tuned model.")
    parser.set_defaults(handler=_cmd_train)


def _train(args: argparse.Namespace, jobs, split):
    """Fit and save a detector on the split's training part."""
    from flowad.finetune import TextClassifierDetector

    detector = TextClassifierDetector(_finetune_config(args))
    detector.fit(split.part(jobs, "train"), split.part(jobs, "validation"))
    detector.save(args.out, extra=_data_meta(args))
    return detector


def _cmd_train(args: argparse.Namespace) -> int:
    from flowad.evaluate import format_metrics_table

    jobs, split = _load_split(args)
    detector = _train(args, jobs, split)
    print(
        format_metrics_table(
            detector.metadata_["validation_metrics"],
            title=f"validation metrics ({split.name} split, seed {args.seed})",
        )
    )
    print(f"\nmodel saved to {args.out}")
    return 0


def _add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Score one part of a split and write metrics.json."
    )
    parser.add_argument("--model", required=True, help="Folder written by `flowad train`.")
    _add_data_arguments(parser)
    parser.add_argument(
        "--part",
        choices=("test", "validation", "train"),
        default="test",
        help="Part of the split to evaluate (default: test).",
    )
    _add_evaluation_out_argument(parser)
    parser.set_defaults(handler=_cmd_evaluate)


def _evaluate(detector, jobs, split, args: argparse.Namespace, part: str) -> dict:
    """Score one part, write the evaluation folder and return its metrics."""
    from flowad.evaluate import write_evaluation

    selected = split.part(jobs, part)
    scores = detector.predict_proba(selected)
    meta = {
        **_data_meta(args),
        "part": part,
        "method": "sft",
        "model": str(args.model) if args.command == "evaluate" else args.out,
        "base_model": detector.metadata_.get("base_model"),
        "template": detector.template_,
    }
    return write_evaluation(
        args.eval_out, selected, scores, threshold=detector.threshold_, meta=meta
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flowad.evaluate import format_metrics_table
    from flowad.finetune import TextClassifierDetector

    detector = TextClassifierDetector.load(args.model)
    jobs, split = _load_split(args)
    args.eval_out = args.out
    metrics = _evaluate(detector, jobs, split, args, args.part)
    print(
        format_metrics_table(
            metrics, title=f"{args.part} metrics ({split.name} split, seed {args.seed})"
        )
    )
    print(f"\nmetrics written to {Path(args.out) / 'metrics.json'}")
    return 0


def _add_predict_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="Score every job of the given runs with a fine-tuned model."
    )
    parser.add_argument("--model", required=True, help="Folder written by `flowad train`.")
    _add_data_arguments(parser, split=False)
    parser.add_argument(
        "--out",
        required=True,
        help="Output file: .csv, or .parquet for Parquet.",
    )
    parser.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from flowad.evaluate import build_predictions, write_predictions
    from flowad.finetune import TextClassifierDetector

    detector = TextClassifierDetector.load(args.model)
    jobs = _load(args)
    scores = detector.predict_proba(jobs)
    predictions = build_predictions(jobs, scores, threshold=detector.threshold_)
    predictions = predictions.rename(columns={"score": "probability"})
    write_predictions(predictions, args.out)
    flagged = int(predictions["predicted"].sum())
    print(f"{len(predictions)} jobs scored, {flagged} flagged anomalous; written to {args.out}")
    return 0


def _add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Main job: fine-tune on the runs split, evaluate on test, write a report.",
    )
    _add_data_arguments(parser)
    _add_finetune_arguments(parser)
    parser.set_defaults(
        template=DEMO_TEMPLATE,
        epochs=2,
        max_train_jobs=6000,
        max_validation_jobs=2000,
    )
    parser.add_argument("--out", required=True, help="Output folder.")
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from flowad.evaluate import format_metrics_table

    started = time.perf_counter()
    out = Path(args.out)
    jobs, split = _load_split(args)
    sizes = split.sizes()
    print(
        f"{len(jobs)} jobs in {jobs['run'].nunique()} runs; {split.name} split "
        f"(seed {args.seed}): {sizes['train']} train / {sizes['validation']} "
        f"validation / {sizes['test']} test jobs"
    )
    args.out = str(out / "model")
    detector = _train(args, jobs, split)
    args.eval_out = str(out / "evaluation")
    metrics = _evaluate(detector, jobs, split, args, "test")
    print()
    print(format_metrics_table(metrics, title="test metrics (runs never seen in training)"))
    report = _write_demo_report(args, jobs, split, out)
    print()
    print(f"model:       {out / 'model'}")
    print(f"metrics:     {out / 'evaluation' / 'metrics.json'}")
    print(f"predictions: {out / 'evaluation' / 'predictions.csv'} (test runs)")
    if report is not None:
        print(f"report:      {report}")
    print(f"finished in {time.perf_counter() - started:.0f} s")
    return 0


def _write_demo_report(args: argparse.Namespace, jobs, split, out: Path):
    """Run the gradient-boosting baseline beside the model and build the report."""
    from flowad.baselines import BaselineDetector
    from flowad.evaluate import write_evaluation
    from flowad.report import build_report

    baseline = BaselineDetector("gbdt", features="published", seed=args.seed)
    baseline.fit(split.part(jobs, "train"), split.part(jobs, "validation"))
    test_jobs = split.part(jobs, "test")
    write_evaluation(
        out / "baseline-gbdt",
        test_jobs,
        baseline.predict_proba(test_jobs),
        threshold=baseline.threshold_,
        meta={
            **_data_meta(args),
            "part": "test",
            "method": "baseline",
            "model": "gbdt",
            "template": "published",
        },
    )
    return build_report([out / "evaluation", out / "baseline-gbdt"], out / "report.html")


# ---------------------------------------------------------------- replay, experiment


def _add_replay_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="Replay runs in event-time order and print alerts as they would have happened.",
    )
    parser.add_argument(
        "runs", nargs="+", help="Flow-Bench runs: run CSV files, zip archives or folders."
    )
    parser.add_argument(
        "--model",
        required=True,
        help="Folder of a saved detector (full model or LoRA adapters).",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="Alert threshold on the anomaly score (default: the model's threshold).",
    )
    parser.add_argument(
        "--every-stage",
        action="store_true",
        help="Print an alert at every stage whose score reaches the threshold, "
        "not only the first per job.",
    )
    _add_skip_bad_runs_argument(parser)
    parser.set_defaults(handler=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from flowad.data import load_jobs
    from flowad.lora import load_detector
    from flowad.online import iter_events, replay_run

    detector = load_detector(args.model)
    jobs = load_jobs(args.runs, skip_bad_runs=args.skip_bad_runs)
    alerts = 0
    for alert in replay_run(
        jobs, detector, threshold=args.threshold, first_only=not args.every_stage
    ):
        alerts += 1
        moment = datetime.fromtimestamp(alert.time, tz=timezone.utc)
        print(
            f"ALERT {moment:%Y-%m-%d %H:%M:%S}Z run {alert.run} job {alert.job} "
            f"stage {alert.stage} score {alert.score:.3f} "
            f"({alert.seconds_before_end:.0f} s before the job ended)"
        )
    threshold = detector.threshold_ if args.threshold is None else args.threshold
    print(
        f"{len(jobs)} job(s) replayed, {len(iter_events(jobs))} event(s), "
        f"{alerts} alert(s) at threshold {threshold:.3f}"
    )
    return 0


def _add_experiment_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="Run an analysis (online, types, imbalance, lora, transfer, "
        "transfer-matrix, forgetting) and write tables and plots.",
    )
    parser.add_argument(
        "name",
        choices=(
            "online",
            "types",
            "imbalance",
            "lora",
            "transfer",
            "transfer-matrix",
            "forgetting",
        ),
        help="Experiment to run.",
    )
    _add_data_arguments(parser)
    _add_finetune_arguments(parser)
    parser.add_argument(
        "--target-data",
        nargs="+",
        help="Runs of the second workflow (B), needed by transfer and forgetting.",
    )
    parser.add_argument("--out", required=True, help="Folder for tables and plots.")
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="online: partial copies per training job (default: 1).",
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.01, 0.05, 0.2, 1.0],
        help="transfer: fractions of B's training runs (default: 0.01 0.05 0.2 1).",
    )
    parser.add_argument(
        "--pairs",
        nargs="+",
        metavar="A:B",
        help="transfer-matrix: fine-tune only these source:target workflow pairs "
        "(default: every ordered pair).",
    )
    parser.add_argument(
        "--max-test-jobs",
        type=int,
        help="transfer-matrix: score at most this many jobs of each workflow's "
        "validation and test parts, label-stratified (default: all).",
    )
    parser.add_argument(
        "--freeze-layers",
        type=int,
        default=2,
        help="forgetting: train only the last N encoder layers in the freeze "
        "mitigation (default: 2).",
    )
    parser.add_argument(
        "--replay-fraction",
        type=float,
        default=0.1,
        help="forgetting: share of A's training jobs replayed while training on B "
        "(default: 0.1).",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=("full", "lora-encoder", "lora-smollm2"),
        help="lora: methods to compare (default: full lora-encoder).",
    )
    parser.add_argument(
        "--rank", type=int, default=8, help="lora: adapter rank (default: 8)."
    )
    parser.add_argument(
        "--lora-learning-rate",
        type=float,
        default=5e-4,
        help="lora: learning rate of the adapters (default: 5e-4).",
    )
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="lora: fit in this process (faster start, but peak memory is the "
        "process peak so far, not per method).",
    )
    parser.set_defaults(handler=_cmd_experiment)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from flowad.data import load_jobs
    from flowad.experiments import run_experiment

    jobs = _load(args)
    target_jobs = None
    if args.target_data:
        target_jobs = load_jobs(args.target_data, skip_bad_runs=args.skip_bad_runs)
    options = {
        "copies": args.copies,
        "fractions": tuple(args.fractions),
        "freeze_layers": args.freeze_layers,
        "replay_fraction": args.replay_fraction,
        "methods": tuple(args.methods) if args.methods else None,
        "rank": args.rank,
        "lora_learning_rate": args.lora_learning_rate,
        "isolate": not args.no_isolate,
        "pairs": args.pairs,
        "max_test_jobs": args.max_test_jobs,
    }
    meta = {"data": [str(path) for path in args.data]}
    if args.target_data:
        meta["target_data"] = [str(path) for path in args.target_data]
    result = run_experiment(
        args.name,
        jobs,
        out=args.out,
        config=_finetune_config(args),
        split=args.split,
        seed=args.seed,
        paper_dir=args.paper_splits,
        target_jobs=target_jobs,
        options=options,
        meta=meta,
    )
    print((result.out / "table.md").read_text())
    print(f"tables and {len(result.plots)} plot(s) written to {result.out}")
    return 0


# ---------------------------------------------------------------- icl


def _add_icl_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "icl", help="Label jobs by prompting a language model (in-context learning)."
    )
    _add_data_arguments(parser)
    parser.add_argument(
        "--backend",
        choices=("local", "openai"),
        default="local",
        help="Run a model with transformers here, or call an OpenAI-compatible "
        "server (default: local).",
    )
    parser.add_argument(
        "--model",
        help="Local: model folder, .gguf file, hub id, or qwen2.5-coder-0.5b for "
        "Qwen2.5-Coder-0.5B-Instruct from the optional qwen extra (default: the "
        "packaged SmolLM2-135M-Instruct). OpenAI: the model name, required.",
    )
    parser.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000/v1",
        help="OpenAI-compatible server URL up to /v1 (default: %(default)s).",
    )
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="Environment variable holding the server's API key (default: "
        "%(default)s; unset means no key).",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=4, help="Requests in flight (default: 4)."
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="Seconds per request (default: 60)."
    )
    parser.add_argument(
        "--max-retries", type=int, default=3, help="Retries per request (default: 3)."
    )
    _add_template_argument(parser)
    parser.add_argument(
        "--text-fields",
        nargs="*",
        default=["transformation"],
        help="Job columns quoted as text in each job block (default: transformation).",
    )
    parser.add_argument(
        "--shots", type=int, default=0, help="Labelled examples per prompt (default: 0)."
    )
    parser.add_argument(
        "--selection",
        choices=("random", "balanced", "nearest"),
        default="balanced",
        help="How examples are chosen (default: balanced).",
    )
    parser.add_argument(
        "--neighbours",
        choices=("fields", "ratios", "context"),
        default=None,
        help="What --selection nearest compares: published fields, those plus "
        "run-context ratios, or every run-context feature (default: ratios with "
        "a run-context template, fields otherwise).",
    )
    parser.add_argument(
        "--stats",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Include per-class field means and standard deviations (default: on).",
    )
    parser.add_argument(
        "--cot",
        action="store_true",
        help="Ask for step-by-step reasoning and keep it as the explanation.",
    )
    parser.add_argument(
        "--decision",
        choices=("score", "generate"),
        help="Score label log-probabilities or parse generated text (default: "
        "generate with --cot or --backend openai, else score).",
    )
    parser.add_argument(
        "--calibration",
        choices=("validation", "platt", "content_free", "none"),
        default="validation",
        help="How label log-odds become scores (default: validation).",
    )
    parser.add_argument(
        "--on-unmapped",
        choices=("raise", "anomalous", "skip"),
        default="raise",
        help="What a reply that maps to no label becomes (default: raise).",
    )
    parser.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="What a job whose request failed becomes (default: raise).",
    )
    parser.add_argument(
        "--part",
        choices=("test", "validation"),
        default="test",
        help="Part of the split to label (default: test).",
    )
    parser.add_argument(
        "--max-jobs",
        type=int,
        help="Label a seeded sample of this many jobs, stratified by label "
        "(default: all).",
    )
    parser.add_argument(
        "--max-validation-jobs",
        type=int,
        default=200,
        help="Validation jobs scored for calibration (default: 200).",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="Jobs per forward pass (default: 8)."
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="Generated tokens per reply (default: 8, or 256 with --cot).",
    )
    _add_evaluation_out_argument(parser)
    parser.set_defaults(handler=_cmd_icl)


def _icl_backend(args: argparse.Namespace):
    """Build the LLM backend named by the arguments."""
    from flowad.llm_backends import LocalCausalLM, OpenAICompatibleBackend

    if args.backend == "local":
        return LocalCausalLM(args.model, batch_size=args.batch_size)
    if not args.model:
        raise ValueError("--backend openai needs --model, the name the server expects")
    return OpenAICompatibleBackend(
        args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        max_concurrency=args.max_concurrency,
        timeout=args.timeout,
        max_retries=args.max_retries,
    )


def _cmd_icl(args: argparse.Namespace) -> int:
    import numpy as np

    from flowad.evaluate import (
        build_predictions,
        format_metrics_table,
        write_evaluation,
        write_predictions,
    )
    from flowad.icl import FewShotDetector, stratified_sample

    decision = args.decision
    if decision is None:
        decision = "generate" if args.cot or args.backend == "openai" else "score"
    detector = FewShotDetector(
        _icl_backend(args),
        template=args.template,
        shots=args.shots,
        selection=args.selection,
        neighbours=args.neighbours,
        use_stats=args.stats,
        chain_of_thought=args.cot,
        decision=decision,
        calibration=args.calibration,
        on_unmapped=args.on_unmapped,
        on_error=args.on_error,
        text_fields=tuple(args.text_fields),
        max_new_tokens=args.max_new_tokens,
        max_validation_jobs=args.max_validation_jobs,
        seed=args.seed,
    )
    jobs, split = _load_split(args)
    detector.fit(split.part(jobs, "train"), split.part(jobs, "validation"))
    part = split.part(jobs, args.part)
    positions = np.arange(len(part))
    if args.max_jobs is not None:
        positions = stratified_sample(part["label"].to_numpy(), args.max_jobs, seed=args.seed)
    details = detector.predict_details(part, positions=positions)
    selected = part.iloc[positions]
    scored = details["score"].notna().to_numpy()
    meta = {
        **_data_meta(args),
        "part": args.part,
        "method": "icl",
        "backend": args.backend,
        "model": detector.backend_.model_name,
        "template": args.template,
        "shots": args.shots,
        "selection": args.selection,
        "neighbours": detector.neighbours_ if args.selection == "nearest" else None,
        "stats": args.stats,
        "chain_of_thought": args.cot,
        "decision": decision,
        "calibration": args.calibration,
        "calibration_offset": detector.offset_,
        "labelled_jobs": int(len(positions)),
        "unmapped_replies": int((details["status"] == "unmapped").sum()),
        "failed_jobs": int((details["status"] == "error").sum()),
        "skipped_jobs": int((~scored).sum()),
    }
    metrics = write_evaluation(
        args.out,
        selected[scored],
        details["score"].to_numpy()[scored],
        threshold=0.5,
        meta=meta,
    )
    # write_evaluation keeps only scored jobs; the full table also lists
    # skipped ones, with their status, reply and error.
    predictions = build_predictions(selected, details["score"].fillna(-1.0), threshold=0.5)
    predictions["score"] = details["score"].to_numpy()
    predictions["predicted"] = details["predicted"].to_numpy()
    for column in ("status", "explanation", "error"):
        predictions[column] = details[column].to_numpy()
    write_predictions(predictions, Path(args.out) / "predictions.csv")
    print(
        format_metrics_table(
            metrics,
            title=f"{args.part} metrics, ICL ({split.name} split, seed {args.seed})",
        )
    )
    if meta["skipped_jobs"]:
        print(
            f"\n{meta['skipped_jobs']} of {len(positions)} jobs skipped "
            f"({meta['unmapped_replies']} unmapped replies, {meta['failed_jobs']} "
            "failed requests); see predictions.csv"
        )
    print(f"\nmetrics written to {Path(args.out) / 'metrics.json'}")
    return 0


# ---------------------------------------------------------------- serve


def _add_serve_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="Score job records posted over HTTP with a trained model."
    )
    parser.add_argument(
        "--model", required=True, help="Folder written by `flowad train` (or LoRA)."
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address to listen on (default: %(default)s, this machine only). "
        "Any other address, such as 0.0.0.0, exposes the model to the network "
        "without authentication.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="TCP port; 0 picks a free one (default: %(default)s).",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="Score at or above which a job is anomalous, in [0, 1] (default: the "
        "model's validation threshold).",
    )
    parser.add_argument(
        "--max-jobs",
        type=int,
        default=10000,
        help="Maximum jobs per /score request; larger requests get HTTP 413 "
        "(default: %(default)s).",
    )
    parser.set_defaults(handler=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from flowad.lora import load_detector
    from flowad.service import create_app, run_server

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    detector = load_detector(args.model)
    app = create_app(detector, threshold=args.threshold, max_jobs=args.max_jobs)
    try:
        run_server(app, host=args.host, port=args.port)
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl+C, then raises SIGINT again.
        logger.info("Server stopped")
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flowad",
        description="Find anomalous jobs in workflow executions with language models.",
    )
    parser.add_argument("--version", action="version", version=f"flowad {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="More log output (-vv: debug)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_parser in _PARSERS:
        add_parser(subparsers)
    return parser


_PARSERS = [
    _add_data_parser,
    _add_train_parser,
    _add_evaluate_parser,
    _add_predict_parser,
    _add_demo_parser,
    _add_baseline_parser,
    _add_report_parser,
    _add_replay_parser,
    _add_experiment_parser,
    _add_icl_parser,
    _add_serve_parser,
]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except FlowadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
