"""Tests for flowad.templates: the published, compact and terse job sentences."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from flowad import templates
from flowad.data import read_text_split
from flowad.templates import (
    PUBLISHED_FIELDS,
    Template,
    count_tokens,
    format_bytes,
    format_number,
    format_published_value,
    get_template,
    register_template,
    render_compact,
    render_published,
    render_terse,
    template_names,
)

# Three real 1000genome jobs and their sentences. The published sentences are
# lines 2, 3 and 5 of data/paper_splits/1000genome/test.csv.
KNOWN_JOBS = {
    ("1000-genome-run0350", "individuals_ID0000100"): (
        "wms_delay is 6.0 queue_delay is 1006.0 runtime is 808.0 "
        "post_script_delay is 5.0 stage_in_delay is 15.0 stage_out_delay is 4.0 "
        "stage_in_bytes is 1014254291.0 stage_out_bytes is 401318.0 "
        "kickstart_executables_cpu_time is 771.8 ",
        "wms 6 s, queue 1006 s, runtime 808 s, post 5 s, stage in 15 s, "
        "stage out 4 s, in 1.01 GB, out 401 kB, cpu 772 s",
    ),
    ("1000-genome-run0009", "stage_out_local_condorpool_2_1"): (
        "wms_delay is 5.0 queue_delay is 0.0 runtime is 5.0 "
        "post_script_delay is 5.0 stage_in_delay is nan stage_out_delay is nan "
        "stage_in_bytes is nan stage_out_bytes is nan "
        "kickstart_executables_cpu_time is 1.8 ",
        "wms 5 s, queue 0 s, runtime 5 s, post 5 s, stage in none, "
        "stage out none, in none, out none, cpu 1.8 s",
    ),
    ("1000-genome-run0201", "sifting_ID0000104"): (
        "wms_delay is 6.0 queue_delay is 22.0 runtime is 2090.0 "
        "post_script_delay is 5.0 stage_in_delay is 1310.0 stage_out_delay is 4.0 "
        "stage_in_bytes is 2624773058.0 stage_out_bytes is 1055195.0 "
        "kickstart_executables_cpu_time is 6.4 ",
        "wms 6 s, queue 22 s, runtime 2090 s, post 5 s, stage in 1310 s, "
        "stage out 4 s, in 2.62 GB, out 1.06 MB, cpu 6.4 s",
    ),
}


@pytest.fixture(scope="module")
def known_jobs(genome_jobs) -> pd.DataFrame:
    """The rows of ``KNOWN_JOBS``, in that order."""
    keys = pd.MultiIndex.from_tuples(list(KNOWN_JOBS), names=["run", "job"])
    indexed = genome_jobs.set_index(["run", "job"])
    return indexed.loc[keys].reset_index()


@pytest.fixture(scope="module")
def first_runs(genome_jobs) -> pd.DataFrame:
    """All jobs of the first three 1000genome runs (411 jobs)."""
    runs = genome_jobs["run"].unique()[:3]
    return genome_jobs[genome_jobs["run"].isin(runs)]


class TestRenderPublished:
    def test_real_jobs_byte_exact(self, known_jobs):
        sentences = render_published(known_jobs)

        expected = [published for published, _ in KNOWN_JOBS.values()]
        assert sentences == expected

    def test_known_jobs_are_published_rows(self, known_jobs, repo_root):
        published = read_text_split(repo_root / "data/paper_splits/1000genome/test.csv")
        sentences = render_published(known_jobs)

        assert sentences[0] == published["text"].iloc[0]
        assert sentences[1] == published["text"].iloc[1]
        assert sentences[2] == published["text"].iloc[3]
        assert list(known_jobs["label"]) == list(published["label"].iloc[[0, 1, 3]])

    def test_rebuilt_rows_contain_published_files(self, genome_jobs, repo_root):
        rebuilt = Counter(zip(render_published(genome_jobs), genome_jobs["label"]))
        published = Counter()
        for part in ("test", "validation"):
            frame = read_text_split(
                repo_root / f"data/paper_splits/1000genome/{part}.csv"
            )
            published.update(zip(frame["text"], frame["label"]))

        assert rebuilt.total() == 48_087
        assert published.total() == 9_618
        # Multiset difference: rows published more often than rebuilt.
        assert published - rebuilt == Counter()

    def test_integer_columns_written_as_floats(self):
        jobs = pd.DataFrame({field: [5] for field in PUBLISHED_FIELDS})

        sentence = render_published(jobs)[0]

        assert sentence.startswith("wms_delay is 5.0 queue_delay is 5.0 ")
        assert sentence.endswith("kickstart_executables_cpu_time is 5.0 ")

    def test_empty_table_gives_no_sentences(self, genome_jobs):
        assert render_published(genome_jobs.iloc[:0]) == []


class TestFormatPublishedValue:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1014254291.0, "1014254291.0"),
            (771.8, "771.8"),
            (5, "5.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e16, "1e+16"),
            (float("nan"), "nan"),
            (np.float32(1.5), "1.5"),
        ],
    )
    def test_python_float_repr(self, value, expected):
        assert format_published_value(value) == expected


class TestRenderCompact:
    def test_real_jobs(self, known_jobs):
        sentences = render_compact(known_jobs)

        expected = [compact for _, compact in KNOWN_JOBS.values()]
        assert sentences == expected

    def test_fewer_tokens_than_published(self, first_runs, minilm_tokenizer):
        published = count_tokens(render_published(first_runs), minilm_tokenizer)
        compact = count_tokens(render_compact(first_runs), minilm_tokenizer)

        assert len(compact) == len(first_runs)
        assert (compact < published).all()
        # Measured: 92 and 45 word pieces on average.
        assert compact.mean() < 0.6 * published.mean()


class TestRenderTerse:
    def test_real_jobs(self, known_jobs):
        sentences = render_terse(known_jobs)

        assert sentences == [
            "wait 6 queue 1006 run 808 post 5 in 15 out 4 read 1014 write 0.401 cpu 772",
            "wait 5 queue 0 run 5 post 5 in - out - read - write - cpu 1.8",
            "wait 6 queue 22 run 2090 post 5 in 1310 out 4 read 2625 write 1.06 cpu 6.4",
        ]

    def test_fewer_tokens_than_compact(self, first_runs, minilm_tokenizer):
        compact = count_tokens(render_compact(first_runs), minilm_tokenizer)
        terse = count_tokens(render_terse(first_runs), minilm_tokenizer)

        assert (terse < compact).all()
        # Measured on 3,000 jobs of 1000genome: 25 word pieces against 45.
        assert terse.mean() < 0.65 * compact.mean()

    def test_registered(self):
        template = get_template("terse")

        assert template.render is render_terse
        assert template.fields == PUBLISHED_FIELDS
        assert not template.uses_run_context


class TestFormatNumber:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (0.0, "0"),
            (5.0, "5"),
            (771.8, "772"),
            (1.8, "1.8"),
            (0.000123456, "0.000123"),
            (0.9996, "1"),
            (12345.6, "12346"),
            (-2.345, "-2.35"),
            (float("nan"), "none"),
        ],
    )
    def test_three_significant_digits(self, value, expected):
        assert format_number(value) == expected

    def test_digits_argument(self):
        assert format_number(3.14159, digits=5) == "3.1416"


class TestFormatBytes:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (554.0, "554 B"),
            (401318.0, "401 kB"),
            (1055195.0, "1.06 MB"),
            (1014254291.0, "1.01 GB"),
            (2.5e12, "2.5 TB"),
            (float("nan"), "none"),
        ],
    )
    def test_decimal_prefixes(self, value, expected):
        assert format_bytes(value) == expected


class TestCountTokens:
    def test_counts_special_tokens(self, minilm_tokenizer):
        counts = count_tokens(["hello", "hello world"], minilm_tokenizer)

        # [CLS] and [SEP] around one and two word pieces.
        assert list(counts) == [3, 4]


class TestTemplateRegistry:
    @pytest.fixture
    def registry(self, monkeypatch) -> dict:
        """A copy of the registry, so that registered test templates vanish."""
        copy = dict(templates._REGISTRY)
        monkeypatch.setattr(templates, "_REGISTRY", copy)
        return copy

    def test_builtin_templates(self):
        assert get_template("published").render is render_published
        assert get_template("compact").render is render_compact
        assert {"published", "compact"} <= set(template_names())
        assert get_template("published").fields == PUBLISHED_FIELDS
        assert not get_template("published").uses_run_context

    def test_unknown_name_raises(self):
        with pytest.raises(
            ValueError, match=re.escape("unknown template 'fancy'; choose one of [")
        ) as info:
            get_template("fancy")

        assert "'published'" in str(info.value)

    def test_register_and_look_up(self, registry):
        upper = Template("upper", ("job",), lambda jobs: list(jobs["job"].str.upper()))

        register_template(upper)

        assert get_template("upper") is upper
        assert get_template("upper")(pd.DataFrame({"job": ["a", "b"]})) == ["A", "B"]

    def test_register_duplicate_raises(self, registry):
        with pytest.raises(
            ValueError,
            match=re.escape(
                "a template named 'compact' is already registered; pass "
                "overwrite=True to replace it"
            ),
        ):
            register_template(Template("compact", (), lambda jobs: []))

    def test_register_overwrite(self, registry):
        replacement = Template("compact", (), lambda jobs: ["x"] * len(jobs))

        register_template(replacement, overwrite=True)

        assert get_template("compact") is replacement

    def test_missing_column_raises(self):
        jobs = pd.DataFrame({"runtime": [1.0]})

        with pytest.raises(
            ValueError,
            match=re.escape(
                "template 'published' needs the column(s) ['wms_delay', "
                "'queue_delay', 'post_script_delay'"
            ),
        ):
            get_template("published")(jobs)
