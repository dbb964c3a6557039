"""hneurons: locate, suppress, evaluate and publish hallucination-associated neurons (H-Neurons).

Python API first; the ``hneurons`` command is a thin layer over it. Stages and their modules:

* :mod:`editor.loading` / :mod:`editor.registry` / :mod:`editor.neurons` - models, architectures, hooks
* collect -> locate -> edit -> eval -> card/push, each a module of its own with a documented artifact.

See README.md for the walkthrough and ../shared/method.md-derived docs in ``docs``.
"""

from __future__ import annotations

try:
    from importlib.metadata import version as _version

    __version__ = _version("hneurons")
except Exception:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

from .errors import HNeuronsError  # noqa: E402

__all__ = ["HNeuronsError", "__version__"]
