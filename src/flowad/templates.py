"""Sentence templates that turn job records into text.

A template maps a job table (see :func:`flowad.data.load_jobs`) to one
sentence per job. Templates are looked up by name with :func:`get_template`,
and the name is stored in a model's ``flowad.json`` so that scoring uses the
sentences the model was trained on.

``published``
    The SC'24 study's sentence, byte for byte: the nine fields of
    ``PUBLISHED_FIELDS``, each written ``"<name> is <value> "`` with the value
    as Python's float repr and ``nan`` for a missing value.
``compact``
    The same nine fields with short names, units and three significant
    digits (integer parts are kept whole). On the first three 1000genome runs
    a published sentence costs 92 MiniLM word pieces on average, because long
    numbers split into many pieces, and a compact one 45.
``terse``
    The nine fields as ``<word> <number>`` pairs without units or commas:
    seconds for delays, runtime and CPU time, megabytes for the bytes staged
    in (``read``) and out (``write``), ``-`` for a missing value. The fastest
    to score: about 25 MiniLM word pieces per 1000genome job.

Further templates are added with :func:`register_template`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

PUBLISHED_FIELDS = (
    "wms_delay",
    "queue_delay",
    "runtime",
    "post_script_delay",
    "stage_in_delay",
    "stage_out_delay",
    "stage_in_bytes",
    "stage_out_bytes",
    "kickstart_executables_cpu_time",
)
# Short names and units for the compact template, in published field order.
COMPACT_NAMES = {
    "wms_delay": ("wms", "s"),
    "queue_delay": ("queue", "s"),
    "runtime": ("runtime", "s"),
    "post_script_delay": ("post", "s"),
    "stage_in_delay": ("stage in", "s"),
    "stage_out_delay": ("stage out", "s"),
    "stage_in_bytes": ("in", "B"),
    "stage_out_bytes": ("out", "B"),
    "kickstart_executables_cpu_time": ("cpu", "s"),
}
# One-word names for the terse template, in published field order.
TERSE_NAMES = {
    "wms_delay": "wait",
    "queue_delay": "queue",
    "runtime": "run",
    "post_script_delay": "post",
    "stage_in_delay": "in",
    "stage_out_delay": "out",
    "stage_in_bytes": "read",
    "stage_out_bytes": "write",
    "kickstart_executables_cpu_time": "cpu",
}
_BYTE_FIELDS = ("stage_in_bytes", "stage_out_bytes")
_BYTE_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


@dataclass(frozen=True)
class Template:
    """A named way to write jobs as sentences.

    Attributes
    ----------
    name
        Registry key, stored in ``flowad.json``.
    fields
        Job-table columns the template reads.
    render
        Function from a job table to one sentence per row, in row order.
    uses_run_context
        True when a sentence depends on other jobs of the same run, so the
        whole run (or, online, the jobs finished so far) must be passed.
    """

    name: str
    fields: tuple[str, ...]
    render: Callable[[pd.DataFrame], list[str]]
    uses_run_context: bool = False

    def __call__(self, jobs: pd.DataFrame) -> list[str]:
        missing = [field for field in self.fields if field not in jobs.columns]
        if missing:
            raise ValueError(
                f"template {self.name!r} needs the column(s) {missing}; load jobs "
                "with flowad.data.load_jobs"
            )
        return self.render(jobs)


def format_published_value(value: float) -> str:
    """Write a value as the study did: Python float repr, ``nan`` if missing."""
    value = float(value)
    return "nan" if math.isnan(value) else repr(value)


def render_published(jobs: pd.DataFrame) -> list[str]:
    """Render the study's sentence for each job."""
    columns = [jobs[field].to_numpy(dtype=float) for field in PUBLISHED_FIELDS]
    sentences = []
    for values in zip(*columns):
        sentences.append(
            "".join(
                f"{field} is {format_published_value(value)} "
                for field, value in zip(PUBLISHED_FIELDS, values)
            )
        )
    return sentences


def format_number(value: float, *, digits: int = 3) -> str:
    """Round to ``digits`` significant digits without exponent notation.

    Digits before the decimal point are never dropped: 12345.6 becomes
    ``"12346"``, not ``"12300"``.
    """
    if math.isnan(value):
        return "none"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - magnitude, 0)
    rounded = round(value, decimals)
    text = f"{rounded:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_bytes(value: float) -> str:
    """Write a byte count with a decimal prefix, e.g. ``1.01 GB``."""
    if math.isnan(value):
        return "none"
    for scale, prefix in _BYTE_PREFIXES:
        if abs(value) >= scale:
            return f"{format_number(value / scale)} {prefix}B"
    return f"{format_number(value)} B"


def format_quantity(value: float, unit: str) -> str:
    """Write a value with its unit (``s`` or ``B``)."""
    if unit == "B":
        return format_bytes(value)
    if math.isnan(value):
        return "none"
    return f"{format_number(value)} {unit}"


def render_compact(jobs: pd.DataFrame) -> list[str]:
    """Render the nine published fields with short names and rounded values."""
    columns = [jobs[field].to_numpy(dtype=float) for field in PUBLISHED_FIELDS]
    sentences = []
    for values in zip(*columns):
        parts = [
            f"{COMPACT_NAMES[field][0]} {format_quantity(value, COMPACT_NAMES[field][1])}"
            for field, value in zip(PUBLISHED_FIELDS, values)
        ]
        sentences.append(", ".join(parts))
    return sentences


def render_terse(jobs: pd.DataFrame) -> list[str]:
    """Render the nine published fields as unit-free ``<word> <number>`` pairs."""
    columns = []
    for field in PUBLISHED_FIELDS:
        values = jobs[field].to_numpy(dtype=float)
        columns.append(values / 1e6 if field in _BYTE_FIELDS else values)
    names = [TERSE_NAMES[field] for field in PUBLISHED_FIELDS]
    return [
        " ".join(
            f"{name} {'-' if math.isnan(value) else format_number(value)}"
            for name, value in zip(names, values)
        )
        for values in zip(*columns)
    ]


_REGISTRY: dict[str, Template] = {}


def register_template(template: Template, *, overwrite: bool = False) -> Template:
    """Add a template to the registry under its name."""
    if template.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"a template named {template.name!r} is already registered; pass "
            "overwrite=True to replace it"
        )
    _REGISTRY[template.name] = template
    return template


def get_template(name: str) -> Template:
    """Look up a template by name.

    Raises
    ------
    ValueError
        If no template has that name; the message lists the known names.
    """
    _load_extra_templates()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown template {name!r}; choose one of {sorted(_REGISTRY)}"
        ) from None


def template_names() -> list[str]:
    """Return the names of all registered templates."""
    _load_extra_templates()
    return sorted(_REGISTRY)


def _load_extra_templates() -> None:
    """Import modules that register more templates (run context)."""
    import importlib.util

    if importlib.util.find_spec("flowad.context") is not None:
        import flowad.context  # noqa: F401


def count_tokens(sentences: Sequence[str], tokenizer) -> np.ndarray:
    """Return the number of tokens per sentence, special tokens included."""
    encoded = tokenizer(list(sentences), add_special_tokens=True)
    return np.array([len(ids) for ids in encoded["input_ids"]])


register_template(Template("published", PUBLISHED_FIELDS, render_published))
register_template(Template("compact", PUBLISHED_FIELDS, render_compact))
register_template(Template("terse", PUBLISHED_FIELDS, render_terse))
