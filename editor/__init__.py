"""hneurons: locate, suppress, evaluate and publish hallucination-associated neurons (H-Neurons).

The Python API, one function per pipeline stage (the ``hneurons`` command is a thin layer over it)::

    import editor

    lm = editor.load_model("smollm2-135m-instruct")
    editor.collect(lm, questions, "runs/x/collect", settings)          # sample and judge answers
    editor.locate(lm, "runs/x/collect", "runs/x/locate")                # CETT features, probe, H-Neurons
    editor.edit_model(lm, "runs/x/locate/neurons.json", 0.0, "weights", "runs/x/model")
    editor.evaluate(lm, neurons="runs/x/locate/neurons.json", alpha=0.0, out="runs/x/eval")
    editor.write_card("runs/x/model", eval_results="runs/x/eval")
    editor.push_folder("runs/x/model", "me/my-fixed-model")
    editor.run_recipe("recipes/smollm2-135m-instruct.yaml")             # all of it, resumable

The names below are imported on first use, so ``import editor`` stays light (no torch). The package's
layout (stage folders, imports going downward only) is described in docs/ARCHITECTURE.md; the method it
implements in docs/METHOD.md.
"""

from __future__ import annotations

import importlib

try:
    from importlib.metadata import version as _version

    __version__ = _version("hneurons")
except Exception:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

from .errors import HNeuronsError  # noqa: E402

# name -> module that defines it
_API = {
    "load_model": "editor.model.loading",
    "LoadOptions": "editor.model.loading",
    "collect": "editor.collect.stage",
    "gather_questions": "editor.collect.stage",
    "locate": "editor.locate.stage",
    "Detector": "editor.locate.detect",
    "origin": "editor.locate.origin",
    "edit_model": "editor.edit.stage",
    "evaluate": "editor.evaluate.stage",
    "sweep": "editor.evaluate.sweep",
    "write_card": "editor.report.card",
    "push_folder": "editor.report.publish",
    "run_recipe": "editor.pipeline.run",
    "load_recipe": "editor.pipeline.recipe",
}

__all__ = ["HNeuronsError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'editor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
