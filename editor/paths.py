"""Where the bundled lm-eval tasks and question sets live.

In a source checkout (and an editable install) that is the repository's ``eval/`` folder. A wheel
ships the same folder as the data package ``hneurons_eval`` (see pyproject.toml), so an installed
hneurons finds its bundled data without the repository.
"""

from __future__ import annotations

from pathlib import Path


def eval_dir() -> Path:
    checkout = Path(__file__).resolve().parent.parent / "eval"
    if (checkout / "hneurons").is_dir():
        return checkout
    import importlib.resources

    return Path(str(importlib.resources.files("hneurons_eval")))


EVAL_DIR = eval_dir()
NEUTRAL_PROMPTS = EVAL_DIR / "data" / "neutral_prompts.jsonl"  # the KL measure's prompts (eval/data/README.md)
BUNDLED_PREFIX = "bundled:"  # a file of the bundled eval folder, named so that it reads the same on every machine


def portable_path(path: str | Path) -> str:
    """``path`` as a report records it: ``bundled:<path inside eval/>`` for a bundled file (its absolute path
    differs between a checkout, a clone and an installed wheel), else the absolute path."""
    resolved = Path(bundled_file(str(path))).resolve()
    try:
        return BUNDLED_PREFIX + resolved.relative_to(EVAL_DIR.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def bundled_file(text: str) -> str:
    """The file a ``bundled:`` name stands for; any other path unchanged."""
    return str(EVAL_DIR / text[len(BUNDLED_PREFIX):]) if text.startswith(BUNDLED_PREFIX) else text
