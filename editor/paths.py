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
