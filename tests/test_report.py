"""Tests for the HTML report and the ``flowad report`` command."""

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from flowad import __version__
from flowad.cli import main
from flowad.evaluate import write_evaluation
from flowad.exceptions import FlowadWarning
from flowad.report import build_report, read_evaluation, select_timeline_runs

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "montage-3runs.zip"
CHROMIUM = Path("/usr/bin/chromium")
SCRIPT = "<script>alert(1)</script>"
EXPLANATION = '<img src=x onerror="alert(2)"> runtime is 3x the run median'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_SOURCE = re.compile(r'<img src="([^"]*)"')
# Records, once the page has loaded, how many images decoded and which errors
# fired. The listener runs in the capture phase, so it also receives failed
# image loads.
CHECK_SCRIPT = """<script>
window.flowadErrors = [];
window.addEventListener("error", function (event) {
  window.flowadErrors.push(String(event.message || "resource failed to load"));
}, true);
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var result = document.createElement("pre");
  result.id = "flowad-check";
  result.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter(function (image) {
      return image.complete && image.naturalWidth > 0;
    }).length,
    errors: window.flowadErrors
  });
  document.body.appendChild(result);
});
</script>"""


def _run_cli(arguments: list[str]) -> None:
    assert main(arguments) == 0


def _add_stand_in_model(baseline_dir: Path, out_dir: Path) -> Path:
    """Write a non-baseline folder with untrusted names, online and ICL files.

    Its scores are the gbdt baseline's, relabelled as an ICL run, so that the
    metrics table has a language-model row to compare with the baselines.
    """
    predictions = pd.read_csv(baseline_dir / "predictions.csv")
    metrics = json.loads((baseline_dir / "metrics.json").read_text())
    meta = metrics["meta"]
    predictions.loc[predictions.index[0], "job"] = SCRIPT
    predictions.loc[predictions.index[0], "host"] = "$x^{$ host"
    anomalous_run = predictions.loc[predictions["label"] == 1, "run"].iloc[0]
    predictions.loc[predictions["run"] == anomalous_run, "run"] = SCRIPT
    write_evaluation(
        out_dir,
        predictions,
        predictions["score"],
        threshold=metrics["threshold"],
        meta={
            "data": meta["data"],
            "split": meta["split"],
            "seed": meta["seed"],
            "method": "icl",
            "model": "stand-in",
            "template": "<b>compact</b>",
        },
    )
    pd.DataFrame(
        {
            "stage": [0.25, 0.5, 0.75, 1.0],
            "f1": [0.2, 0.4, 0.6, 0.7],
            "recall": [0.3, 0.5, 0.7, 0.8],
        }
    ).to_csv(out_dir / "online.csv", index=False)
    pd.DataFrame(
        {
            "run": ["montage-run0587", "montage-run0536"],
            "job": [SCRIPT, "mProject_ID0000001"],
            "label": [1, 0],
            "predicted": [1, 0],
            "explanation": [EXPLANATION, "all fields typical"],
        }
    ).to_csv(out_dir / "explanations.csv", index=False)
    return out_dir


@pytest.fixture(scope="module")
def result_dirs(tmp_path_factory):
    """Two baselines through the CLI plus one stand-in model folder."""
    root = tmp_path_factory.mktemp("evaluations")
    common = ["--data", str(FIXTURE), "--split", "rows", "--seed", "0"]
    _run_cli(["baseline", *common, "--model", "gbdt", "--out", str(root / "gbdt")])
    _run_cli(["baseline", *common, "--model", "lr", "--out", str(root / "lr")])
    stand_in = _add_stand_in_model(root / "gbdt", root / "icl")
    return [stand_in, root / "gbdt", root / "lr"]


@pytest.fixture(scope="module")
def report(result_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    _run_cli(["report", *map(str, result_dirs), "--out", str(path)])
    return path


@pytest.fixture(scope="module")
def report_html(report):
    return report.read_text(encoding="utf-8")


def _chromium(arguments: list[str], user_data: Path) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.skip(
            "chromium is not installed at /usr/bin/chromium; install the Debian "
            "package 'chromium' (make test does) to run the browser check"
        )
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data}",
        *arguments,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False
    )


class TestReadEvaluation:
    def test_reads_meta_and_predictions(self, result_dirs):
        evaluation = read_evaluation(result_dirs[1])
        assert evaluation.is_baseline
        assert evaluation.meta["model"] == "gbdt"
        assert "meta" not in evaluation.metrics
        assert len(evaluation.predictions) == evaluation.metrics["jobs"]
        assert evaluation.online is None

    def test_normal_type_not_missing(self, result_dirs):
        predictions = read_evaluation(result_dirs[1]).predictions
        assert predictions["anomaly_type"].notna().all()
        normal = predictions[predictions["label"] == 0]
        assert (normal["anomaly_type"] == "None").all()

    def test_missing_metrics_raises(self, tmp_path):
        message = f"{tmp_path / 'metrics.json'} not found"
        with pytest.raises(FileNotFoundError, match=re.escape(message)):
            read_evaluation(tmp_path)

    def test_online_without_f1_warns(self, result_dirs, tmp_path):
        folder = tmp_path / "copy"
        shutil.copytree(result_dirs[1], folder)
        pd.DataFrame({"stage": [1], "recall": [0.5]}).to_csv(
            folder / "online.csv", index=False
        )
        with pytest.warns(FlowadWarning, match=re.escape("missing column(s) ['f1']")):
            evaluation = read_evaluation(folder)
        assert evaluation.online is None


class TestSelectTimelineRuns:
    def test_most_anomalous_then_normal(self):
        predictions = pd.DataFrame(
            {
                "run": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3,
                "label": [1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0],
            }
        )
        assert select_timeline_runs(predictions, max_runs=3) == ["b", "d", "c"]

    def test_cap_respected(self):
        predictions = pd.DataFrame({"run": list("abcdef"), "label": [1, 1, 1, 1, 1, 0]})
        assert len(select_timeline_runs(predictions, max_runs=2)) == 2

    def test_single_run_is_most_anomalous(self):
        predictions = pd.DataFrame({"run": ["a", "b", "b"], "label": [0, 1, 1]})
        assert select_timeline_runs(predictions, max_runs=1) == ["b"]

    def test_only_normal_runs(self):
        predictions = pd.DataFrame({"run": ["x", "y"], "label": [0, 0]})
        assert select_timeline_runs(predictions, max_runs=4) == ["x"]


class TestBuildReport:
    def test_no_folders_raises(self, tmp_path):
        with pytest.raises(ValueError, match=re.escape("no evaluation folder given")):
            build_report([], tmp_path / "report.html")

    def test_header_names_provenance(self, report_html):
        assert f"flowad {__version__}" in report_html
        for text in ("montage-3runs.zip", "rows", "gbdt", "lr", "stand-in", "icl"):
            assert text in report_html
        assert "<th>split</th>" in report_html
        assert "<th>seed</th>" in report_html

    def test_untrusted_text_escaped(self, report_html):
        assert SCRIPT not in report_html
        assert html.escape(SCRIPT) in report_html
        assert "<b>compact</b>" not in report_html
        assert html.escape("<b>compact</b>") in report_html
        assert html.escape(EXPLANATION) in report_html
        assert "<script" not in report_html.lower()

    def test_self_contained(self, report_html):
        assert "http://" not in report_html
        assert "https://" not in report_html
        sources = IMAGE_SOURCE.findall(report_html)
        assert sources
        for source in sources:
            assert source.startswith("data:image/png;base64,")
            data = base64.b64decode(source.split(",", 1)[1])
            assert data.startswith(PNG_SIGNATURE)

    def test_all_sections_present(self, report_html):
        for caption in (
            "Confusion matrix",
            "ROC and precision-recall curves, all folders",
            "Recall per anomaly type",
            "Score distributions",
            "Online detection per stage",
            "Run timelines",
            "Explanations",
        ):
            assert caption in report_html
        # The test part contains jobs of all three runs, and each folder draws them.
        assert report_html.count("<figcaption>Timeline of run") == 9

    def test_best_baseline_beside_model(self, report_html, result_dirs):
        gbdt = json.loads((result_dirs[1] / "metrics.json").read_text())
        lr = json.loads((result_dirs[2] / "metrics.json").read_text())
        best = "gbdt" if gbdt["f1"] >= lr["f1"] else "lr"
        best_f1 = max(gbdt["f1"], lr["f1"])
        assert report_html.count('class="best-baseline"') == 1
        assert f"{best_f1:.4f} ({best})" in report_html

    def test_groups_without_baseline_noted(self, result_dirs, tmp_path):
        path = build_report(
            [result_dirs[0]], tmp_path / "alone.html", max_timeline_runs=0
        )
        assert "no baseline on the same data, split and seed" in path.read_text()


class TestReportCommand:
    def test_missing_folder_exits_with_error(self, tmp_path, capsys):
        status = main(
            ["report", str(tmp_path / "absent"), "--out", str(tmp_path / "r.html")]
        )
        assert status == 2
        assert "metrics.json not found" in capsys.readouterr().err
        assert not (tmp_path / "r.html").exists()


class TestReportInBrowser:
    def test_renders_and_loads_images(self, report, tmp_path):
        page = tmp_path / "checked.html"
        page.write_text(
            report.read_text(encoding="utf-8").replace(
                "</head>", CHECK_SCRIPT + "</head>", 1
            ),
            encoding="utf-8",
        )
        result = _chromium(
            ["--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            tmp_path / "profile",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        match = re.search(
            r'<pre id="flowad-check">(.*?)</pre>', result.stdout, re.DOTALL
        )
        assert match, result.stdout[-2000:]
        check = json.loads(html.unescape(match.group(1)))
        expected = len(IMAGE_SOURCE.findall(report.read_text(encoding="utf-8")))
        assert check["images"] == expected
        assert check["loaded"] == expected
        assert check["errors"] == []

    def test_screenshot_not_blank(self, report, tmp_path):
        import matplotlib.image

        screenshot = tmp_path / "report.png"
        result = _chromium(
            [
                "--hide-scrollbars",
                "--window-size=1280,2000",
                f"--screenshot={screenshot}",
                report.as_uri(),
            ],
            tmp_path / "profile",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        pixels = matplotlib.image.imread(screenshot)
        assert pixels.shape[:2] == (2000, 1280)
        assert pixels.std() > 0.05
