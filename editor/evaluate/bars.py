"""Whether the evaluation stages draw progress bars (``--no-progress`` on eval, sweep, dose-response and run).

The bars come from two places: hneurons' own loops (the lm-eval model class, the KL measure), which ask
:func:`bars_enabled`, and lm-eval's internals (building the task contexts, tokenising, the ``hf`` model class),
which take no setting, so :func:`quiet_lm_eval` hides them for the duration of one lm-eval run. With bars
off, :func:`eval_progress` also turns off the global progress-bar switches of transformers (loading a
checkpoint), huggingface_hub and datasets (reading a task file) for the block, and puts them back afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ENABLED: ContextVar[bool] = ContextVar("hneurons_eval_bars", default=True)


@contextmanager
def eval_progress(enabled: bool) -> Iterator[None]:
    """Draw (True) or hide (False) the evaluation stages' progress bars inside the block."""
    token = _ENABLED.set(enabled)
    try:
        if enabled:
            yield
        else:
            with _quiet_libraries():
                yield
    finally:
        _ENABLED.reset(token)


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """transformers', huggingface_hub's and datasets' own switches off, each restored to what it was."""
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as hf_logging

    switches = [(hf_logging.is_progress_bar_enabled(), hf_logging.enable_progress_bar),
                (not hub.are_progress_bars_disabled(), hub.enable_progress_bars),
                (datasets.is_progress_bar_enabled(), datasets.enable_progress_bars)]
    hf_logging.disable_progress_bar()
    hub.disable_progress_bars()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        for was_enabled, enable in switches:
            if was_enabled:
                enable()


def bars_enabled() -> bool:
    return _ENABLED.get()


def tqdm_disable() -> bool | None:
    """The ``disable`` value of hneurons' own bars: None (tqdm's default: drawn on a terminal), or True."""
    return None if bars_enabled() else True


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """While bars are off, lm-eval's modules see a ``tqdm`` that never draws (they import the name at module
    level and pass ``disable`` for some bars only); the originals are put back afterwards."""
    if bars_enabled():
        yield
        return
    from tqdm import tqdm as real
    from tqdm.auto import tqdm as auto

    def silent(*args, **kwargs):
        kwargs["disable"] = True
        return real(*args, **kwargs)

    originals = {module: module.tqdm for name, module in list(sys.modules.items())
                 if name.split(".")[0] == "lm_eval" and getattr(module, "tqdm", None) in (real, auto)}
    for module in originals:
        module.tqdm = silent
    try:
        yield
    finally:
        for module, original in originals.items():
            module.tqdm = original
