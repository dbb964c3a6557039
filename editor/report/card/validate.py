"""Checks of a card as the Hub and a reader will see it: the front matter parses back to the intended metadata,
the metadata follows the Hub's rules that can be checked offline, and a written card has no template remnants,
shows only images it ships and lists every file it needs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from ...artifacts import read_json
from ...errors import PublishError
from ...formats import CARD, PUBLISH_MANIFEST
from .constants import (
    BASE_MODEL_RELATIONS,
    HUB_ID,
    LIBRARY,
    LICENSE_ID,
    REPORT_NAMES,
    REQUIRED_METADATA,
)
from .inputs import metric_label
from .text import finite, yaml_text


def check_front_matter(card: Any, expected: Mapping[str, Any]) -> None:
    """The rendered front matter, cut out as the Hub cuts it, must parse back to exactly the intended data."""
    if front_matter(str(card)) != dict(expected):
        raise PublishError("the card's YAML front matter does not parse back to its metadata (a value breaks the "
                           "YAML block); the card was not written")


def front_matter(content: str) -> dict:
    """The metadata block of a card's text, cut out with the Hub's own regex and parsed with a safe loader."""
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    match = REGEX_YAML_BLOCK.search(content)
    if match is None:
        raise PublishError("the model card has no YAML metadata block (--- ... --- at the top)")
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        raise PublishError(f"the model card's metadata block is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PublishError("the model card's metadata block must be a YAML mapping")
    return data


def validate_card_metadata(card: Any) -> None:
    """Check a card's metadata against the Hub's rules that can be checked offline; :class:`PublishError` if not.

    ``card`` is a ``ModelCard``, the text of a README.md, or its path. The raw front matter is checked (what
    the Hub receives), not huggingface_hub's normalised view of it.

    Required keys (library_name, pipeline_tag, tags), library_name transformers/peft, tags a list of strings,
    license an id string, base_model a Hub id (base_model_relation one of the Hub's four and only with a base
    model), datasets Hub ids, and the model-index shape: a list of {name, results}, each result with task.type,
    dataset.name and dataset.type, and metrics of {type, value} with finite numeric values.
    """
    if isinstance(card, Path):
        content = card.read_text(encoding="utf-8")
    else:
        content = str(card)
    data = front_matter(content)
    missing = [k for k in REQUIRED_METADATA if k not in data]
    if missing:
        raise PublishError(f"model card metadata lacks {missing[0]!r}")
    if data["library_name"] not in set(LIBRARY.values()):
        raise PublishError(f"model card library_name {data['library_name']!r} is not one of "
                           f"{', '.join(sorted(set(LIBRARY.values())))}")
    if not isinstance(data["pipeline_tag"], str):
        raise PublishError("model card pipeline_tag must be a string")
    if not isinstance(data["tags"], list) or not all(isinstance(t, str) and t for t in data["tags"]):
        raise PublishError(f"model card tags must be a list of non-empty strings, got {data['tags']!r}")
    if "license" in data and not (isinstance(data["license"], str) and LICENSE_ID.fullmatch(data["license"])):
        raise PublishError(f"model card license {data['license']!r} is not a licence id such as apache-2.0")
    _validate_base_model(data)
    for dataset in data.get("datasets") or []:
        if not (isinstance(dataset, str) and HUB_ID.fullmatch(dataset)):
            raise PublishError(f"model card dataset {dataset!r} is not a Hub dataset id (owner/name)")
    if "model-index" in data:
        _validate_model_index(data["model-index"])


def _validate_base_model(data: Mapping[str, Any]) -> None:
    base = data.get("base_model")
    relation = data.get("base_model_relation")
    bases = base if isinstance(base, list) else [base] if base is not None else []
    for b in bases:
        if not (isinstance(b, str) and HUB_ID.fullmatch(b)):
            raise PublishError(f"model card base_model {b!r} is not a Hub model id (owner/name)")
    if relation is not None:
        if relation not in BASE_MODEL_RELATIONS:
            raise PublishError(f"model card base_model_relation {relation!r} is not one of "
                               f"{', '.join(BASE_MODEL_RELATIONS)}")
        if not bases:
            raise PublishError("model card has base_model_relation but no base_model")


def _validate_model_index(index: Any) -> None:
    if not isinstance(index, list) or not index:
        raise PublishError("model card model-index must be a non-empty list")
    for i, entry in enumerate(index):
        where = f"model-index[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise PublishError(f"{where} needs a non-empty 'name'")
        results = entry.get("results")
        if not isinstance(results, list) or not results:
            raise PublishError(f"{where} needs a non-empty 'results' list")
        for j, result in enumerate(results):
            _validate_result(result, f"{where}.results[{j}]")


def _validate_result(result: Any, at: str) -> None:
    if not isinstance(result, dict):
        raise PublishError(f"{at} must be a mapping")
    if not isinstance((result.get("task") or {}).get("type"), str):
        raise PublishError(f"{at} needs task.type")
    dataset = result.get("dataset") or {}
    if not (isinstance(dataset.get("name"), str) and isinstance(dataset.get("type"), str)):
        raise PublishError(f"{at} needs dataset.name and dataset.type")
    metrics = result.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        raise PublishError(f"{at} needs a non-empty metrics list")
    for k, metric in enumerate(metrics):
        if not isinstance(metric, dict) or not isinstance(metric.get("type"), str):
            raise PublishError(f"{at}.metrics[{k}] needs a type")
        if not finite(metric.get("value")):
            raise PublishError(f"{at}.metrics[{k}] ({metric.get('type')}) value {metric.get('value')!r} is "
                               f"not a finite number")


# ====================================================================================== written check
# Template remnants; braces from artifacts are escaped by md_text (\{), so only unescaped ones count.
_PLACEHOLDER = re.compile(r"\bTODO\b|\bNone\b|\b[Nn]a[Nn]\b|\bnull\b|(?<!\\)[{}]")


def prose(text: str) -> str:
    """The card body without fenced code blocks (where braces and null are legitimate)."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        run = re.match(r"`{3,}", stripped)
        if fence is None and run:
            fence = run.group(0)
        elif fence is not None and stripped.startswith(fence) and stripped.strip("`") == "":
            fence = None
        elif fence is None:
            out.append(line)
    return "\n".join(out)


def check_written_card(edit_dir: str | os.PathLike) -> dict[str, Any]:
    """Check a folder's written card as a reader and ``hneurons push`` will see it; PublishError if anything is off.

    README.md loads with ``ModelCard.load`` and passes :func:`validate_card_metadata`; its body has no
    placeholder (TODO, None, nan, null, braces) outside code blocks and every image it shows exists; the
    model-index holds exactly the edited values of the copied eval_results.json; and ``collect_upload_files``
    accepts the folder with every card file listed. Returns a summary (metric count, files).
    """
    from huggingface_hub import ModelCard

    from ..publish import collect_upload_files

    folder = Path(edit_dir)
    card = ModelCard.load(folder / CARD)
    validate_card_metadata(card)
    _check_body(card.text, folder)
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results or []}
    if got != _expected_index(folder):
        raise PublishError(f"{folder / CARD}: the model-index does not hold the edited values of "
                           f"{folder / REPORT_NAMES['eval']}")
    files, _ = collect_upload_files(folder)
    listed = {f.path for f in files if f.listed_in == PUBLISH_MANIFEST}
    publish = read_json(folder / PUBLISH_MANIFEST, "publish manifest")
    if set(publish["files"]) - listed or CARD not in listed:
        raise PublishError(f"{folder / PUBLISH_MANIFEST} does not list the card's files")
    return {"metrics": len(got), "files": sorted(publish["files"])}


def _check_body(text: str, folder: Path) -> None:
    """No placeholder outside code blocks, and every image shown is in the folder."""
    found = _PLACEHOLDER.search(prose(text))
    if found:
        raise PublishError(f"{folder / CARD} has a placeholder-like {found.group(0)!r} in its text")
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        if not (folder / rel).is_file():
            raise PublishError(f"{folder / CARD} shows {rel}, which is not in the folder")


def _expected_index(folder: Path) -> dict[tuple[str, str], float]:
    """(task, metric) -> edited value, as the model-index must hold them, from the copied eval_results.json."""
    if not (folder / REPORT_NAMES["eval"]).is_file():
        return {}
    rows = read_json(folder / REPORT_NAMES["eval"], "eval results")["metrics"]
    edited = {(str(r["task"]), metric_label(r)): float(r["edited"]) for r in rows if finite(r.get("edited"))}
    return {(yaml_text(t), yaml_text(m)): v for (t, m), v in edited.items()}
