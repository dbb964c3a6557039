"""Optional vLLM sampler for collect (``backend="vllm"``): the same prompts and settings on vLLM's engine.

vLLM (https://docs.vllm.ai) batches and pages the KV cache on the GPU and is several times faster than
any transformers-based decoder for large question sets. This backend is a drop-in for
:func:`editor.collect.stage.generate`: it feeds vLLM the *same token ids* that the transformers path decodes
(prompts are tokenised once, by :mod:`editor.data.prompting`), with the same settings (temperature, top-p,
top-k, max new tokens, the same stop tokens) and returns the same :class:`editor.collect.stage.Generation`
records, so judging, early stopping, chunking and resume are unchanged.

What differs: vLLM draws its samples from its own random streams, so samples are reproducible for a
given seed on the same vLLM version and GPU, but are not the transformers path's samples; greedy answers
agree up to numerical ties (bf16 kernels differ). Each row gets its own seed (derived from the chunk's
seed and the row), because vLLM seeds per request and two requests with one seed draw the same sample.

vLLM loads its own copy of the weights next to the transformers model that the later stages use:
``HNEURONS_VLLM_GPU_MEMORY`` (default 0.5) is the fraction of the GPU it may take.

Requirements: ``pip install vllm`` and a CUDA GPU. Not tested here (no GPU, no vLLM in CI): written from
vLLM's documented API (``LLM.generate`` with ``{"prompt_token_ids": ...}`` prompts and one
``SamplingParams`` per prompt); :func:`require_vllm` refuses clearly when either is missing.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import BackendUnavailableError

_ENGINES: dict[tuple, Any] = {}


def require_vllm() -> None:
    """Raise :class:`BackendUnavailableError` unless vLLM is importable and a CUDA GPU is present."""
    if importlib.util.find_spec("vllm") is None:
        raise BackendUnavailableError(
            "the vllm backend needs the vllm package, which is not installed: `pip install vllm` on a CUDA "
            "machine, or use the default backend (hf)"
        )
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "the vllm backend needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); use "
            "the default backend (hf) on this machine"
        )


def _weights_location(lm: Any) -> tuple[str, str | None]:
    """What vLLM should load: the local safetensors folder (also for GGUF sources) or the Hub id."""
    if lm.folder:
        return str(lm.folder), None
    return lm.source.path, lm.source.revision


def engine(lm: Any) -> Any:
    """The vLLM engine for ``lm``'s weights (created once per process and model)."""
    require_vllm()
    from vllm import LLM

    location, revision = _weights_location(lm)
    dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    key = (location, revision, dtype)
    if key not in _ENGINES:
        _ENGINES[key] = LLM(model=location, tokenizer=location, revision=revision, dtype=dtype, seed=0,
                            gpu_memory_utilization=float(os.environ.get("HNEURONS_VLLM_GPU_MEMORY", "0.5")),
                            trust_remote_code=False)
    return _ENGINES[key]


def sampling_params(settings: Any, *, sample: bool, seed: int, stop_ids: Sequence[int]) -> Any:
    """vLLM SamplingParams equal to hneurons' settings (greedy: temperature 0)."""
    from vllm import SamplingParams

    common = dict(n=1, max_tokens=settings.max_new_tokens, stop_token_ids=sorted(stop_ids),
                  skip_special_tokens=True)
    if not sample:
        return SamplingParams(temperature=0.0, **common)
    return SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                          top_k=settings.top_k if settings.top_k > 0 else -1, seed=seed, **common)


def row_seed(seed: int, row: int) -> int:
    return (int(seed) * 1_000_003 + row * 7_919) % (2**31 - 1)


def vllm_generate(lm: Any, prompts: Sequence[Any], settings: Any, *, sample: bool, seed: int) -> list[Any]:
    """:func:`editor.collect.generation.generate` on vLLM: one Generation per prompt, in order."""
    require_vllm()
    from .generation import finish_generation, stop_sets

    tok = lm.tokenizer
    stops, newline = stop_sets(lm, prompts)
    params = [sampling_params(settings, sample=sample, seed=row_seed(seed, row), stop_ids=stops | (newline or set()))
              for row in range(len(prompts))]
    outputs = engine(lm).generate([{"prompt_token_ids": list(p.input_ids)} for p in prompts], params, use_tqdm=False)
    generations = []
    for prompt, output in zip(prompts, outputs):
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        ended = completion.finish_reason == "stop"
        if ids and ids[-1] in stops:  # the end-of-turn token is not part of the response (as in editor.collect.sampler)
            ids = ids[:-1]
        generations.append(finish_generation(tok, ids, ended, prompt.stop_at_newline))
    return generations
