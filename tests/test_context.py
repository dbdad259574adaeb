"""Tests for flowad.context: run-context features and templates.

Real runs come from the bundled three-run fixtures (one normal, one cpu_2 and
one hdd_5 run per workflow).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from flowad.context import (
    ATTACHED_COLUMNS,
    CONTEXT_FEATURE_COLUMNS,
    LABEL_COLUMNS,
    _median_of_others,
    attach_context,
    context_features,
    drop_attached_context,
)
from flowad.data import load_jobs
from flowad.templates import count_tokens, format_number, get_template

CONTEXT_TEMPLATES = ("context", "context_short", "context_job")


@pytest.fixture(scope="module")
def calling_jobs(fixtures_dir) -> pd.DataFrame:
    """Three variant_calling runs (371 jobs each): normal, cpu_2 and hdd_5."""
    return load_jobs(fixtures_dir / "variant_calling-3runs.zip")


@pytest.fixture(scope="module")
def calling_features(calling_jobs) -> pd.DataFrame:
    return context_features(calling_jobs)


@pytest.fixture(scope="module")
def attached(calling_jobs) -> pd.DataFrame:
    """The variant_calling runs with their context attached as columns."""
    return attach_context(calling_jobs)


def _auc(labels: pd.Series, scores: pd.Series) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores.fillna(1.0)))


class TestMedianOfOthers:
    def test_matches_brute_force(self):
        rng = np.random.default_rng(0)
        groups = rng.integers(0, 6, size=60)
        values = rng.normal(size=60).round(1)  # rounding creates ties
        expected = np.array(
            [
                np.median(np.delete(values, i)[np.delete(groups, i) == groups[i]])
                if (groups == groups[i]).sum() > 1
                else np.nan
                for i in range(len(values))
            ]
        )
        result = _median_of_others(groups, values)
        np.testing.assert_allclose(result, expected, equal_nan=True)

    def test_single_row_group_is_nan(self):
        result = _median_of_others(np.array([0, 1, 1]), np.array([5.0, 1.0, 3.0]))
        assert np.isnan(result[0])
        assert result[1] == 3.0
        assert result[2] == 1.0


class TestContextFeatures:
    def test_columns_and_index(self, calling_jobs, calling_features):
        assert list(calling_features.columns) == list(CONTEXT_FEATURE_COLUMNS)
        assert calling_features.index.equals(calling_jobs.index)
        assert all(dtype == np.float64 for dtype in calling_features.dtypes)

    def test_labels_do_not_change_features(self, calling_jobs, calling_features):
        changed = calling_jobs.copy()
        rng = np.random.default_rng(1)
        for column in LABEL_COLUMNS:
            changed[column] = rng.permutation(changed[column].to_numpy())
        changed["label"] = 1 - changed["label"]
        pd.testing.assert_frame_equal(context_features(changed), calling_features)

    def test_label_columns_not_needed(self, calling_jobs, calling_features):
        stripped = calling_jobs.drop(columns=list(LABEL_COLUMNS))
        pd.testing.assert_frame_equal(context_features(stripped), calling_features)

    def test_runs_are_independent(self, calling_jobs, calling_features):
        run = calling_jobs["run"].iloc[0]
        alone = calling_jobs[calling_jobs["run"] == run]
        pd.testing.assert_frame_equal(
            context_features(alone), calling_features.loc[alone.index]
        )

    def test_row_order_does_not_matter(self, calling_jobs, calling_features):
        shuffled = calling_jobs.sample(frac=1.0, random_state=0)
        features = context_features(shuffled)
        pd.testing.assert_frame_equal(
            features.loc[calling_jobs.index], calling_features
        )

    def test_ratio_of_typical_job_near_one(self, calling_jobs, calling_features):
        normal_run = calling_jobs["label"].groupby(calling_jobs["run"]).max() == 0
        rows = calling_jobs["run"].map(normal_run) & (calling_jobs["job_type"] == "compute")
        ratios = calling_features.loc[rows, "runtime_ratio"]
        assert 0.9 <= ratios.median() <= 1.1

    def test_affected_hosts_separate(self, calling_jobs, calling_features):
        compute = calling_jobs["job_type"] == "compute"
        labels = calling_jobs.loc[compute, "label"]
        # Affected hosts are slower and so run fewer jobs than their peers.
        assert _auc(labels, calling_features.loc[compute, "host_runtime_median"]) > 0.85
        assert _auc(labels, calling_features.loc[compute, "host_jobs_ratio"]) < 0.2

    def test_host_jobs_counts_jobs(self, calling_jobs, calling_features):
        first = calling_jobs.iloc[0]
        same = (calling_jobs["run"] == first["run"]) & (
            calling_jobs["host"] == first["host"]
        )
        assert calling_features["host_jobs"].iloc[0] == same.sum()

    def test_known_all_equals_default(self, calling_jobs, calling_features):
        known = np.ones(len(calling_jobs), dtype=bool)
        pd.testing.assert_frame_equal(
            context_features(calling_jobs, known=known), calling_features
        )

    def test_unknown_job_does_not_shape_others(self, calling_jobs):
        known = pd.Series(True, index=calling_jobs.index)
        target = calling_jobs.index[calling_jobs["job_type"] == "compute"][0]
        known[target] = False
        before = context_features(calling_jobs, known=known)
        changed = calling_jobs.copy()
        changed.loc[target, "runtime"] = changed.loc[target, "runtime"] * 50 + 1000
        after = context_features(changed, known=known)
        others = calling_jobs.index != target
        pd.testing.assert_frame_equal(after.loc[others], before.loc[others])
        assert after.loc[target, "runtime_ratio"] > before.loc[target, "runtime_ratio"]

    def test_known_job_shapes_host_statistics(self, calling_jobs, calling_features):
        target = calling_jobs.index[calling_jobs["job_type"] == "compute"][0]
        changed = calling_jobs.copy()
        changed.loc[target, "runtime"] = changed.loc[target, "runtime"] * 50 + 1000
        after = context_features(changed)
        assert (
            after.loc[target, "host_runtime_max"]
            > calling_features.loc[target, "host_runtime_max"]
        )

    def test_empty_table(self, calling_jobs):
        features = context_features(calling_jobs.iloc[:0])
        assert features.shape == (0, len(CONTEXT_FEATURE_COLUMNS))
        assert get_template("context")(calling_jobs.iloc[:0]) == []

    def test_missing_column_raises(self, calling_jobs):
        with pytest.raises(
            ValueError,
            match=re.escape("context features need the column(s) ['runtime']"),
        ):
            context_features(calling_jobs.drop(columns=["runtime"]))

    def test_known_wrong_length_raises(self, calling_jobs):
        with pytest.raises(
            ValueError,
            match=re.escape(f"known must have one entry per job ({len(calling_jobs)})"),
        ):
            context_features(calling_jobs, known=np.ones(3, dtype=bool))

    def test_known_not_boolean_raises(self, calling_jobs):
        with pytest.raises(
            TypeError, match=re.escape("known must be a boolean mask, got dtype int64")
        ):
            context_features(calling_jobs, known=np.ones(len(calling_jobs), dtype=int))

    def test_known_other_index_raises(self, calling_jobs):
        known = pd.Series(True, index=calling_jobs.index + 1)
        with pytest.raises(
            ValueError, match=re.escape("known must have the same index as jobs")
        ):
            context_features(calling_jobs, known=known)


class TestAttachContext:
    def test_adds_feature_columns(self, calling_jobs, calling_features, attached):
        assert list(attached.columns) == [*calling_jobs.columns, *ATTACHED_COLUMNS]
        stored = attached[list(ATTACHED_COLUMNS)].set_axis(
            list(CONTEXT_FEATURE_COLUMNS), axis=1
        )
        pd.testing.assert_frame_equal(stored, calling_features)

    def test_part_keeps_whole_run_statistics(self, calling_jobs, calling_features, attached):
        # Every second job, as a split by rows would leave in one part.
        part = attached.iloc[::2]

        pd.testing.assert_frame_equal(context_features(part), calling_features.iloc[::2])
        alone = context_features(calling_jobs.iloc[::2])
        assert not np.allclose(
            alone["host_jobs"].to_numpy(), calling_features["host_jobs"].iloc[::2].to_numpy()
        )

    def test_templates_use_attached_features(self, calling_jobs, attached):
        template = get_template("context")
        whole = template(calling_jobs)

        assert template(attached.iloc[::2]) == whole[::2]
        assert template(calling_jobs.iloc[::2]) != whole[::2]

    def test_known_mask_recomputes(self, calling_jobs, attached):
        known = np.zeros(len(attached), dtype=bool)
        known[: len(attached) // 2] = True

        expected = context_features(calling_jobs, known=known)
        pd.testing.assert_frame_equal(context_features(attached, known=known), expected)

    def test_attach_twice_replaces(self, attached):
        again = attach_context(attached)

        assert list(again.columns) == list(attached.columns)
        pd.testing.assert_frame_equal(again, attached)

    def test_drop_restores_columns(self, calling_jobs, attached):
        assert list(drop_attached_context(attached).columns) == list(calling_jobs.columns)
        assert drop_attached_context(calling_jobs) is calling_jobs


class TestContextTemplates:
    @pytest.mark.parametrize("name", CONTEXT_TEMPLATES)
    def test_one_sentence_per_job(self, name, calling_jobs):
        template = get_template(name)
        sentences = template(calling_jobs)
        assert template.uses_run_context
        assert len(sentences) == len(calling_jobs)
        assert sentences[0].startswith(
            f"{calling_jobs['transformation'].iloc[0]} {calling_jobs['job_type'].iloc[0]}: "
        )

    def test_context_sentence_shape(self, calling_jobs):
        compute = calling_jobs[calling_jobs["job_type"] == "compute"]
        sentence = get_template("context")(compute)[0]
        assert re.fullmatch(
            r"\S+ compute: runtime \S+ s \S+x, cpu \S+ s \S+x, stage in \S+ s \S+x, "
            r"stage out \S+ s \S+x; host \d+ jobs \S+x, runtime \S+x, "
            r"stage in \S+x, stage out \S+x, \d+% slow",
            sentence,
        ), sentence

    def test_host_evidence_only_in_host_templates(self, calling_jobs):
        assert "; host " in get_template("context_short")(calling_jobs)[0]
        assert "host" not in get_template("context_job")(calling_jobs)[0]

    def test_labels_do_not_change_sentences(self, calling_jobs):
        changed = calling_jobs.copy()
        changed["label"] = 1 - changed["label"]
        changed["anomaly_type"] = "cpu_2"
        template = get_template("context")
        assert template(changed) == template(calling_jobs)

    def test_fewer_tokens_than_published(self, calling_jobs, minilm_tokenizer):
        published = count_tokens(get_template("published")(calling_jobs), minilm_tokenizer)
        for name in CONTEXT_TEMPLATES:
            tokens = count_tokens(get_template(name)(calling_jobs), minilm_tokenizer)
            assert tokens.mean() < published.mean(), name
        short = count_tokens(get_template("context_short")(calling_jobs), minilm_tokenizer)
        assert short.max() < 64


class TestContextTerse:
    def test_sentence_writes_percentages(self, calling_jobs, calling_features):
        position = int(np.flatnonzero(calling_jobs["job_type"] == "compute")[0])
        row = calling_features.iloc[position]
        percent = {
            name: str(round(100 * row[column]))
            for name, column in (
                ("run", "runtime_ratio"),
                ("cpu", "cpu_ratio"),
                ("in", "stage_in_ratio"),
                ("out", "stage_out_ratio"),
                ("host run", "host_runtime_median"),
                ("host in", "host_stage_in_median"),
                ("slow", "host_runtime_share_high"),
            )
        }
        expected = (
            f"{calling_jobs['transformation'].iloc[position]} run {percent['run']} "
            f"cpu {percent['cpu']} in {percent['in']} out {percent['out']} "
            f"host {int(row['host_jobs'])} run {percent['host run']} "
            f"in {percent['host in']} slow {percent['slow']}"
        )
        assert get_template("context_terse")(calling_jobs)[position] == expected

    def test_missing_value_is_a_dash(self, calling_jobs):
        # Alone in its table, the job is its own run median (100 %). It staged
        # nothing in or out, so those ratios are missing.
        first = calling_jobs.iloc[:1]
        assert first["stage_in_delay"].isna().all()
        assert get_template("context_terse")(first) == [
            "pegasus::dirmanager run 100 cpu 100 in - out - host 1 run 100 in - slow 0"
        ]

    def test_fewer_tokens_than_terse(self, calling_jobs, minilm_tokenizer):
        terse = count_tokens(get_template("terse")(calling_jobs), minilm_tokenizer)
        short = count_tokens(get_template("context_terse")(calling_jobs), minilm_tokenizer)
        assert short.mean() < terse.mean()
        assert short.max() <= 40

    def test_bare_drops_the_words(self, calling_jobs):
        terse = get_template("context_terse")(calling_jobs)
        bare = get_template("context_bare")(calling_jobs)
        for with_words, without in zip(terse, bare):
            words = with_words.split(" ")
            assert without.split(" ") == [words[0], *words[2::2]]


class TestContextFull:
    def test_sentence_shape(self, calling_jobs):
        compute = calling_jobs[calling_jobs["job_type"] == "compute"]
        sentence = get_template("context_full")(compute)[0]
        assert re.fullmatch(
            r"\S+ compute: runtime \S+ s \S+x, cpu \S+ s \S+x, share \S+x, "
            r"stage in \S+ s \S+x, stage out \S+ s \S+x; host \d+ jobs \S+x, "
            r"node \d+ hosts, runtime \S+x max \S+x node \S+x, stage in \S+x max \S+x, "
            r"share max \S+x node \S+x, queue max \S+x, \d+% slow",
            sentence,
        ), sentence

    def test_writes_host_maxima(self, calling_jobs, calling_features):
        position = int(np.flatnonzero(calling_jobs["job_type"] == "compute")[0])
        row = calling_features.iloc[position]
        sentence = get_template("context_full")(calling_jobs)[position]
        runtime_max = format_number(row["host_runtime_max"], digits=2)
        assert f" max {runtime_max}x node " in sentence
        assert f"node {int(row['node_hosts'])} hosts" in sentence

    def test_labels_do_not_change_sentences(self, calling_jobs):
        changed = calling_jobs.copy()
        changed["label"] = 1 - changed["label"]
        changed["anomaly_type"] = "hdd_5"
        template = get_template("context_full")
        assert template.uses_run_context
        assert template(changed) == template(calling_jobs)

    def test_fits_minilm_length(self, calling_jobs, minilm_tokenizer):
        tokens = count_tokens(get_template("context_full")(calling_jobs), minilm_tokenizer)
        assert tokens.max() <= 128
