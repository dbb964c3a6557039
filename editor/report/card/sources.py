"""What the card can say about the edited model's source (``hneurons_edit.json`` ``model.source``): its Hub id,
licence and a short name, from what the edit recorded and, offline, the source's own README."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ...formats import CARD
from .constants import HUB_ID, LICENSE_ID


def base_model_id(identity: Mapping[str, Any]) -> str | None:
    """The Hub id of the edited model's source, where known."""
    source = identity.get("source") or {}
    hub = source.get("hub_id") or (source.get("path") if source.get("kind") == "hub" else None)
    return hub if isinstance(hub, str) and HUB_ID.fullmatch(hub) else None


def source_license(identity: Mapping[str, Any]) -> str | None:
    """The source's licence id: recorded for embedded models, else the source folder's README front matter."""
    source = identity.get("source") or {}
    value = source.get("license")
    if value is None and source.get("kind") == "folder":
        value = _readme_license(Path(source.get("path", "")) / CARD)
    if value is None and source.get("kind") == "hub":
        value = _cached_hub_license(source.get("path"), source.get("revision"))
    return value if isinstance(value, str) and LICENSE_ID.fullmatch(value) else None


def _readme_license(readme: Path) -> str | None:
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.get("license")
    except (ValueError, OSError, UnicodeDecodeError):
        return None


def _cached_hub_license(repo_id: str | None, revision: str | None) -> str | None:
    """The licence in the README of a cached Hub snapshot (offline; None when not cached)."""
    from huggingface_hub import try_to_load_from_cache

    if not repo_id:
        return None
    path = try_to_load_from_cache(repo_id, CARD, revision=revision)
    return _readme_license(Path(path)) if isinstance(path, str) else None


def source_name(identity: Mapping[str, Any]) -> str:
    """The source as the user named it, for error messages and notes."""
    source = identity.get("source") or {}
    return str(source.get("hub_id") or source.get("spec") or source.get("path") or "unknown model")


def source_label(identity: Mapping[str, Any]) -> str:
    """A short name of the source for prose: the Hub id, the alias, or the file / folder name."""
    source = identity.get("source") or {}
    if base_model_id(identity):
        return str(base_model_id(identity))
    if source.get("kind") in ("folder", "gguf"):
        return Path(str(source.get("path"))).name
    return str(source.get("spec") or "unknown model")
