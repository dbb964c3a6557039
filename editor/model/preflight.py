"""Environment checks that run before any model loads: is the device there, and is a Hub model available?

Each check either returns or raises one :class:`~editor.errors.UnavailableError` (a
:class:`~editor.errors.ModelUnavailableError` for models) whose message names the thing, why it is not
available (offline mode and not in the cache, the Hub not reachable, no such repository or no access, no
CUDA device, a CPU-only PyTorch build) and what to do. Nothing here downloads anything: a Hub model is
looked up in the local cache (``huggingface_hub.try_to_load_from_cache``) and, only when it is not there
and the Hub is not in offline mode, asked about once (``model_info``, a short timeout).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import ModelUnavailableError, UnavailableError

HUB_TIMEOUT_S = 10.0
_TRUE = {"1", "ON", "YES", "TRUE"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE``, read at its import or now)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _env_true("HF_HUB_OFFLINE")


def datasets_offline() -> bool:
    """Whether ``datasets`` is in offline mode (``HF_DATASETS_OFFLINE``, or the Hub's offline mode)."""
    return _env_true("HF_DATASETS_OFFLINE") or hub_offline()


def offline_flags() -> str:
    """The offline variables that are set, as a user would type them."""
    names = [n for n in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if _env_true(n)]
    return " and ".join(f"{n}={os.environ[n]}" for n in names) or "HF_HUB_OFFLINE"


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


# ----------------------------------------------------------------------------------------------- device
def check_device(device: str | None) -> None:
    """``cuda`` must be usable (``None``, ``cpu`` and ``auto`` always are: auto falls back to the CPU)."""
    if device is None or not str(device).startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        index = str(device).partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UnavailableError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                                   f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); use one of them, or cuda")
        return
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        why = f"this PyTorch build ({torch.__version__}) has no CUDA support"
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = "no CUDA device is visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else
                                             " (no GPU, or its driver is not loaded)")
    raise UnavailableError(f"device {device} (--device, or model.device in a recipe): {why}; use --device cpu (without --device, hneurons uses cuda only "
                           f"when there is one), or install a CUDA build of PyTorch (make setup TORCH=torch)")


# ------------------------------------------------------------------------------------------- Hub models
def _cached(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) else None


def cached_weights(repo_id: str, revision: str | None, allow_pickle: bool = False) -> list[str] | None:
    """The weight files of a cached Hub model that are missing from the cache ([] = all there; None = no weights
    file or index is cached at all)."""
    names = [("model.safetensors.index.json", "model.safetensors")]
    if allow_pickle:
        names.append(("pytorch_model.bin.index.json", "pytorch_model.bin"))
    for index_name, single in names:
        index = _cached(repo_id, index_name, revision)
        if index is not None:
            try:
                shards = sorted(set(json.loads(open(index, encoding="utf-8").read())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError):
                return None
            return [s for s in shards if _cached(repo_id, s, revision) is None]
        if _cached(repo_id, single, revision) is not None:
            return []
    return None


def check_hub_model(repo_id: str, revision: str | None = None, *, weights: bool = True,
                    allow_pickle: bool = False) -> str:
    """A Hub model is usable here: in the cache (config, and ``weights`` unless False), or reachable on the Hub.

    Returns how it will be read ("cached" or "from the Hub"); raises :class:`ModelUnavailableError`.
    """
    at = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    config = _cached(repo_id, "config.json", revision)
    missing = cached_weights(repo_id, revision, allow_pickle) if config is not None and weights else []
    if config is not None and missing == []:
        return "cached"
    if config is None:
        what = "it is not in the Hub cache"
    elif missing is None:
        what = "its config is in the Hub cache but its weights (*.safetensors) are not"
    else:
        what = f"its weight shard(s) {', '.join(missing[:3])} are not in the Hub cache"
    if hub_offline():
        raise ModelUnavailableError(
            f"model {at} is a Hub repo id, but offline mode is on ({offline_flags()}) and {what} ({hub_cache()}): "
            f"download it where the Hub is reachable (`hf download {repo_id}`) into this cache, unset "
            f"HF_HUB_OFFLINE, or give a local checkpoint folder, a .gguf file or an embedded alias")
    reason = _ask_hub(repo_id, revision)
    if reason is not None:
        raise ModelUnavailableError(f"model {at}: {what} ({hub_cache()}) and {reason}")
    return "from the Hub"


def _ask_hub(repo_id: str, revision: str | None, repo_type: str = "model") -> str | None:
    """None when the Hub answers for the repository; else why it cannot be downloaded and what to do."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    ask: Any = api.model_info if repo_type == "model" else api.dataset_info
    url = f"{api.endpoint}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    try:
        ask(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return (f"it is gated on the Hub: accept its terms at {url} and log in (`hf auth login` or HF_TOKEN) with "
                f"that account")
    except RepositoryNotFoundError:
        return (f"the Hub has no {repo_type} repository {repo_id!r} that this account can see ({url}): check the "
                f"name, or log in (`hf auth login` or HF_TOKEN) if it is private")
    except RevisionNotFoundError:
        return f"the Hub has no revision {revision!r} of {repo_id}: check --revision"
    except HfHubHTTPError:
        return None  # the Hub answered; the download reports any other problem itself
    except Exception as exc:  # noqa: BLE001 - network errors come from httpx, sockets, ssl, ...
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return (f"the Hub ({api.endpoint}) cannot be reached ({type(exc).__name__}: {first}): check the network "
                f"(or HF_ENDPOINT), or download it where the Hub is reachable and copy the cache")
    return None


def check_hub_dataset(repo_id: str, revision: str | None = None) -> str | None:
    """Why a Hub dataset that is not cached cannot be downloaded now (None: the Hub answers for it)."""
    return _ask_hub(repo_id, revision, "dataset")
