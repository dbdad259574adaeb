"""Benchmark supervised fine-tuning: quality per workflow and speed.

Quality: fine-tune the packaged MiniLM on the training part of the ``runs``
and ``paper`` splits and report F1 on the test part (the ``sft`` mode of
``run_context.py``, by default on the three workflows with published splits
and with the ``context`` template).

Speed: fine-tune and score with flowad and with the recipe of the SC'24
study of SFT and ICL for workflow anomaly detection (Jin et al.)
(``transformers.Trainer`` with default arguments, the published template and
``DataCollatorWithPadding``) on the same model and the same training
subsample. Each side runs in its own subprocess, so the peak resident memory
of one does not hide the other.

Every run writes one JSON file to ``benchmarks/results/``.

Usage::

    python benchmarks/run_sft.py quality --data-root ../shared/data
    python benchmarks/run_sft.py speed --data-root ../shared/data
    python benchmarks/run_sft.py summary
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    PAPER_WORKFLOWS,
    RESULTS_DIR,
    load_workflow,
    split_workflow,
    write_result,
)


def _load(data_root: Path, workflow: str, split_name: str, seed: int):
    return split_workflow(
        load_workflow(data_root, workflow), data_root, workflow, split_name, seed
    )


def run_quality(args: argparse.Namespace) -> None:
    """Fine-tune and evaluate on test for each workflow and split."""
    import run_context

    # run_context's sft mode loops over templates and seeds; this mode runs one of each.
    settings = argparse.Namespace(
        **vars(args), templates=[args.template], seeds=[args.seed], skip_existing=False
    )
    run_context.run_sft(settings)


def _side(args: argparse.Namespace) -> dict:
    """Run one side of the speed comparison in this process."""
    import torch

    from flowad.evaluate import choose_threshold, compute_metrics
    from flowad.finetune import FinetuneConfig, TextClassifierDetector, default_model_path
    from flowad.context import attach_context
    from flowad.templates import get_template, render_published

    if args.threads:
        torch.set_num_threads(args.threads)
    jobs, split = _load(args.data_root, args.workflow, "runs", args.seed)
    train = split.part(jobs, "train")
    validation = split.part(jobs, "validation")
    test = split.part(jobs, "test")
    run_context = args.side == "flowad" and get_template(args.template).uses_run_context
    if run_context:
        # Run context describes whole runs: compute it before sub-sampling.
        # For the test jobs it is computed again inside the inference timing.
        train, validation = attach_context(train), attach_context(validation)
    test_runs = test
    rng = np.random.default_rng(args.seed)
    train = train.iloc[np.sort(rng.choice(len(train), args.train_jobs, replace=False))]
    validation = validation.iloc[
        np.sort(rng.choice(len(validation), args.validation_jobs, replace=False))
    ]
    test_positions = np.sort(rng.choice(len(test), args.test_jobs, replace=False))
    test = test.iloc[test_positions]

    if args.side == "flowad":
        config = FinetuneConfig(
            template=args.template,
            num_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            show_progress_bar=False,
        )
        detector = TextClassifierDetector(config).fit(train, validation)
        train_seconds = detector.metadata_["train_seconds"]
        train_jobs_per_s = detector.metadata_["train_jobs_per_s"]
        # Sentences trained per CPU second, from the same training steps.
        train_jobs_per_cpu_s = (
            train_jobs_per_s
            * detector.metadata_["train_step_seconds"]
            / detector.metadata_["train_step_cpu_seconds"]
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        if run_context:
            test = attach_context(test_runs).iloc[test_positions]
        scores = detector.predict_proba(test)
        infer_seconds = time.perf_counter() - started
        infer_cpu_seconds = time.process_time() - cpu_started
        threshold = detector.threshold_
        validation_f1 = max(entry["validation_f1"] for entry in detector.history_)
        template = args.template
    else:
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            Trainer,
            TrainingArguments,
        )

        path = default_model_path()
        tokenizer = AutoTokenizer.from_pretrained(path)

        class Sentences(torch.utils.data.Dataset):
            def __init__(self, frame):
                self.encodings = tokenizer(render_published(frame), truncation=True)
                self.labels = frame["label"].to_numpy()

            def __len__(self):
                return len(self.labels)

            def __getitem__(self, index):
                item = {key: values[index] for key, values in self.encodings.items()}
                item["labels"] = int(self.labels[index])
                return item

        torch.manual_seed(args.seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        output_dir = Path(args.scratch) / "reference-trainer"
        training_arguments = TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=args.epochs,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            seed=args.seed,
        )
        trainer = Trainer(
            model=model,
            args=training_arguments,
            train_dataset=Sentences(train),
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.train()
        train_seconds = time.perf_counter() - started
        train_jobs_per_s = len(train) * args.epochs / train_seconds
        train_jobs_per_cpu_s = len(train) * args.epochs / (time.process_time() - cpu_started)

        def probabilities(frame):
            output = trainer.predict(Sentences(frame))
            logits = torch.from_numpy(output.predictions)
            return torch.softmax(logits, dim=-1)[:, 1].numpy()

        # The study's recipe has no validation threshold; for a fair F1 the
        # same validation rule as flowad is applied.
        validation_scores = probabilities(validation)
        threshold = choose_threshold(validation["label"].to_numpy(), validation_scores)
        validation_f1 = compute_metrics(
            validation["label"].to_numpy(), validation_scores, threshold=threshold
        )["f1"]
        started, cpu_started = time.perf_counter(), time.process_time()
        scores = probabilities(test)
        infer_seconds = time.perf_counter() - started
        infer_cpu_seconds = time.process_time() - cpu_started
        template = "published"

    metrics = compute_metrics(
        test["label"].to_numpy(),
        scores,
        threshold=threshold,
        anomaly_types=test["anomaly_type"].to_numpy(),
    )
    return {
        "side": args.side,
        "template": template,
        "train_seconds": train_seconds,
        "train_jobs_per_s": train_jobs_per_s,
        "infer_jobs_per_s": len(test) / infer_seconds,
        "train_jobs_per_cpu_s": train_jobs_per_cpu_s,
        "infer_jobs_per_cpu_s": len(test) / infer_cpu_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "validation_f1": validation_f1,
        "metrics": metrics,
    }


def run_speed(args: argparse.Namespace) -> None:
    """Run both sides in subprocesses and write one comparison."""
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for side in ("reference", "flowad"):
            command = [
                sys.executable,
                __file__,
                "side",
                "--side",
                side,
                "--data-root",
                str(args.data_root),
                "--workflow",
                args.workflow,
                "--template",
                args.template,
                "--epochs",
                str(args.epochs),
                "--train-jobs",
                str(args.train_jobs),
                "--validation-jobs",
                str(args.validation_jobs),
                "--test-jobs",
                str(args.test_jobs),
                "--seed",
                str(args.seed),
                "--batch-size",
                str(args.batch_size),
                "--learning-rate",
                str(args.learning_rate),
                "--scratch",
                scratch,
            ]
            if args.threads:
                command += ["--threads", str(args.threads)]
            completed = subprocess.run(
                command, check=True, capture_output=True, text=True
            )
            results[side] = json.loads(completed.stdout.strip().splitlines()[-1])
            print(
                f"{side:<10} train {results[side]['train_jobs_per_s']:.1f} jobs/s, "
                f"infer {results[side]['infer_jobs_per_s']:.1f} jobs/s, "
                f"F1 {results[side]['metrics']['f1']:.4f}, "
                f"peak {results[side]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    flowad, reference = results["flowad"], results["reference"]
    document = {
        "workflow": args.workflow,
        "split": "runs",
        "method": "sft",
        "template": args.template,
        "model": "all-MiniLM-L6-v2",
        "seed": args.seed,
        "settings": {
            "train_jobs": args.train_jobs,
            "validation_jobs": args.validation_jobs,
            "test_jobs": args.test_jobs,
            "epochs": args.epochs,
            "flowad_batch_size": args.batch_size,
            "flowad_learning_rate": args.learning_rate,
        },
        "metrics": flowad["metrics"],
        "train_jobs_per_s": flowad["train_jobs_per_s"],
        "infer_jobs_per_s": flowad["infer_jobs_per_s"],
        "peak_rss_mb": flowad["peak_rss_mb"],
        "validation_f1": flowad["validation_f1"],
        "reference_validation_f1": reference["validation_f1"],
        "reference_metrics": reference["metrics"],
        "reference_train_jobs_per_s": reference["train_jobs_per_s"],
        "reference_infer_jobs_per_s": reference["infer_jobs_per_s"],
        "reference_peak_rss_mb": reference["peak_rss_mb"],
        "train_speedup": flowad["train_jobs_per_s"] / reference["train_jobs_per_s"],
        "infer_speedup": flowad["infer_jobs_per_s"] / reference["infer_jobs_per_s"],
        # CPU seconds per job are less sensitive to other load on the machine
        # than wall-clock seconds.
        "train_speedup_cpu": flowad["train_jobs_per_cpu_s"]
        / reference["train_jobs_per_cpu_s"],
        "infer_speedup_cpu": flowad["infer_jobs_per_cpu_s"]
        / reference["infer_jobs_per_cpu_s"],
    }
    name = f"speed-{args.workflow}-{args.template}"
    if args.batch_size != 32:
        name += f"-batch{args.batch_size}"
    path = write_result(f"{name}-seed{args.seed}", document)
    print(
        f"speed-up: training {document['train_speedup']:.2f}x, inference "
        f"{document['infer_speedup']:.2f}x (CPU time: {document['train_speedup_cpu']:.2f}x, "
        f"{document['infer_speedup_cpu']:.2f}x); F1 {flowad['metrics']['f1']:.4f} vs "
        f"{reference['metrics']['f1']:.4f} -> {path.name}"
    )


def _best_baseline(workflow: str, split: str, seed: int) -> str:
    """Return the best baseline F1 on the same workflow, split and seed, if any."""
    best = None
    for path in RESULTS_DIR.glob(f"baseline-{workflow}-{split}-*-seed{seed}.json"):
        document = json.loads(path.read_text())
        if best is None or document["metrics"]["f1"] > best[0]:
            best = (document["metrics"]["f1"], document["model"], document["template"])
    return "n/a" if best is None else f"{best[0]:.4f} ({best[1]}, {best[2]})"


def run_summary(args: argparse.Namespace) -> None:
    """Print Markdown tables of the quality and speed results."""
    print("| workflow | split | template | train jobs | epochs | F1 | ROC-AUC | PR-AUC "
          "| best baseline F1 (same split, seed) | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(RESULTS_DIR.glob("context-sft-*.json")):
        document = json.loads(path.read_text())
        metrics = document["metrics"]
        print(
            f"| {document['workflow']} | {document['split']} | {document['template']} "
            f"| {document['train_jobs']} | {document['settings']['num_epochs']} "
            f"| {metrics['f1']:.4f} | {metrics['roc_auc']:.4f} | {metrics['pr_auc']:.4f} "
            f"| {_best_baseline(document['workflow'], document['split'], document['seed'])} "
            f"| {document['train_seconds']:.0f} |"
        )
    print()
    print("| workflow | template | seed | batch, lr | train jobs/s (flowad / reference) "
          "| speed-up (CPU time) | infer jobs/s (flowad / reference) | speed-up (CPU time) "
          "| validation F1 (flowad / reference) | test F1 (flowad / reference) "
          "| peak RSS MB (flowad / reference) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(RESULTS_DIR.glob("speed-*.json")):
        d = json.loads(path.read_text())
        settings = d["settings"]
        batch = settings.get("flowad_batch_size", 32)
        rate = settings.get("flowad_learning_rate", 5e-5)
        validation = "-"
        if "reference_validation_f1" in d:
            validation = f"{d['validation_f1']:.3f} / {d['reference_validation_f1']:.3f}"
        print(
            f"| {d['workflow']} | {d['template']} | {d['seed']} | {batch}, {rate:g} "
            f"| {d['train_jobs_per_s']:.1f} / {d['reference_train_jobs_per_s']:.1f} "
            f"| {d['train_speedup']:.2f}x ({d['train_speedup_cpu']:.2f}x) "
            f"| {d['infer_jobs_per_s']:.1f} / {d['reference_infer_jobs_per_s']:.1f} "
            f"| {d['infer_speedup']:.2f}x ({d['infer_speedup_cpu']:.2f}x) "
            f"| {validation} "
            f"| {d['metrics']['f1']:.3f} / {d['reference_metrics']['f1']:.3f} "
            f"| {d['peak_rss_mb']:.0f} / {d['reference_peak_rss_mb']:.0f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    quality = commands.add_parser("quality", help="F1 on test per workflow and split.")
    quality.add_argument("--data-root", type=Path, required=True)
    quality.add_argument("--workflows", nargs="+", default=list(PAPER_WORKFLOWS))
    quality.add_argument("--splits", nargs="+", default=["runs", "paper"])
    quality.add_argument("--template", default="context")
    quality.add_argument("--epochs", type=int, default=1)
    quality.add_argument("--max-train-jobs", type=int, default=6000)
    quality.add_argument("--max-validation-jobs", type=int, default=2000)
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    quality.add_argument("--batch-size", type=int, default=32)
    quality.add_argument("--learning-rate", type=float, default=5e-5)

    commands.add_parser("summary", help="Print Markdown tables of the results.")

    for name in ("speed", "side"):
        sub = commands.add_parser(name, help="Speed against the Trainer recipe.")
        sub.add_argument("--data-root", type=Path, required=True)
        sub.add_argument("--workflow", default="1000genome")
        sub.add_argument("--template", default="compact")
        sub.add_argument("--epochs", type=int, default=1)
        sub.add_argument("--train-jobs", type=int, default=2000)
        sub.add_argument("--validation-jobs", type=int, default=1000)
        sub.add_argument("--test-jobs", type=int, default=2000)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--threads", type=int)
        # The flowad side only; the reference keeps the Trainer defaults.
        sub.add_argument("--batch-size", type=int, default=32)
        sub.add_argument("--learning-rate", type=float, default=5e-5)
        if name == "side":
            sub.add_argument("--side", choices=("reference", "flowad"), required=True)
            sub.add_argument("--scratch", required=True)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "quality":
        run_quality(args)
    elif args.command == "summary":
        run_summary(args)
    elif args.command == "speed":
        run_speed(args)
    else:
        print(json.dumps(_side(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
