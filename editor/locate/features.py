"""CETT features: how much each FFN neuron contributes to its layer's output, per response.

docs/METHOD.md section 3, exactly. For layer l and token t, with z_t the input of the down-projection
(the neuron activations) and h_t = W_down z_t the FFN output before any post-FFN norm:

    CETT[l, j, t] = |z_{j,t}| * ||W_down[:, j]||_2 / ||h_t||_2

computed with precomputed column norms (no per-neuron matmul). ||h_t|| is read from the
down-projection's own output (minus its bias, so h_t is exactly W_down z_t). Per response the
features are x_answer = mean of CETT over the answer tokens and x_other = mean over every other token
of the sequence (prompt, template, end of turn); ``aggregate="max"`` takes maxima instead. The feature
vector is the flattened [layers x d_ff] array: flat index = layer * d_ff + j.

One teacher-forced forward pass per batch (prompt + representative response, as collected: no
re-tokenisation), hooks on every layer's down-projection that reduce the [batch, seq, d_ff] activations
to [batch, 2, d_ff] at once, and fp16 shards streamed to disk: peak memory is one batch's activations
(each batch is written straight into its shard file), whatever the number of questions. Complete
shards survive a kill; a re-run resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import safe_open

from ..artifacts import (
    atomic_write_json,
    clean_stale_temporaries,
    provenance,
    sha256_json,
)
from ..errors import InputError, NumericalError, OutputExistsError
from ..formats import FEATURES_FORMAT, FEATURES_MANIFEST
from ..model.hooks import (
    column_norms,
    down_proj_modules,
    down_weight,
    hooks_removed_on_exit,
)
from ..model.loading import LoadedModel
from .settings import LocateSettings

KINDS = ("answer", "other")
_STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


_LOCATE = LocateSettings()  # the feature options' defaults are locate's (declared there once)


@dataclass
class FeatureSettings:
    """What a feature store holds and how it is computed (recorded in features.json)."""

    aggregate: str = _LOCATE.aggregate  # "mean" | "max" over the tokens of each span
    span: str = _LOCATE.span  # "response": all response tokens | "answer": narrowed to the gold alias if found
    batch_size: int | str = _LOCATE.batch_size  # responses per forward pass; "auto": from free GPU memory
    store_dtype: str = "float16"
    shard_bytes: int = 256 * 2**20  # target size of one shard file

    def validate(self) -> None:
        if self.span not in ("response", "answer"):
            raise InputError(f"span must be 'response' or 'answer', got {self.span!r}")
        if self.aggregate not in ("mean", "max"):
            raise InputError(f"aggregate must be 'mean' or 'max', got {self.aggregate!r}")
        if self.store_dtype not in _STORE_DTYPES:
            raise InputError(f"store_dtype must be one of {', '.join(_STORE_DTYPES)}, got {self.store_dtype!r}")
        from ..model.batching import parse_batch_size

        parse_batch_size(self.batch_size)


# ---------------------------------------------------------------------------------------- computation
def span_masks(records: Sequence[dict], width: int, span: str = "answer") -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean [batch, width] masks of the answer tokens and of all other (non-padding) tokens.

    ``span`` names the representative's span fields: ``answer`` (``answer_start``/``answer_end``) or
    ``response`` (``response_start``/``response_end``, the whole response).
    """
    answer = torch.zeros(len(records), width, dtype=torch.bool)
    valid = torch.zeros(len(records), width, dtype=torch.bool)
    for row, rec in enumerate(records):
        rep = rec["representative"]
        n = len(rep["input_ids"])
        start, end = rep.get(f"{span}_start"), rep.get(f"{span}_end")
        if start is None or end is None or not 0 <= start < end <= n:
            raise InputError(f"record {rec.get('id')!r}: {span} span [{start}, {end}) is not inside its {n} tokens")
        valid[row, :n] = True
        answer[row, start:end] = True
    return answer, valid & ~answer


class _CettReducer:
    """Forward hooks that turn each layer's activations into per-response CETT aggregates.

    The hooks never synchronise with an accelerator: each layer's [B, 2, d_ff] result and its
    finiteness flag stay on the layer's device until the forward pass is over, and :meth:`collect`
    then checks all flags at once and copies all layers to the host in one transfer.
    """

    def __init__(self, lm: LoadedModel, aggregate: str):
        self.modules = down_proj_modules(lm.model, lm.arch)
        self.arch = lm.arch
        self.aggregate = aggregate
        self.norms = [column_norms(down_weight(m), lm.arch) for m in self.modules]
        self.out: list[torch.Tensor | None] = [None] * len(self.modules)
        self.finite: list[torch.Tensor | None] = [None] * len(self.modules)
        self.masks: torch.Tensor | None = None  # float [B, 2, T] weights (mean) or bool masks (max)
        self._masks_on: dict[torch.device, torch.Tensor] = {}  # the masks, copied once per device and batch
        self.batch_ids: list[str] = []

    def set_batch(self, answer: torch.Tensor, other: torch.Tensor, ids: list[str]) -> None:
        masks = torch.stack([answer, other], dim=1)  # [B, 2, T]
        if self.aggregate == "mean":
            counts = masks.sum(-1, keepdim=True).clamp_min(1)
            self.masks = masks.float() / counts
        else:
            self.masks = masks
        self._masks_on = {}
        self.batch_ids = ids

    def _masks(self, device: torch.device) -> torch.Tensor:
        if device not in self._masks_on:
            self._masks_on[device] = self.masks.to(device, non_blocking=True)
        return self._masks_on[device]

    def hook(self, layer: int):
        def reduce(module, args, output):
            z = args[0].float().abs()  # [B, T, d_ff]
            h = output.float()
            bias = getattr(getattr(module, "base_layer", module), "bias", None)
            if bias is not None:  # h_t must be W_down z_t exactly: remove the bias
                h = h - bias.float()
            inv_h = 1.0 / torch.linalg.vector_norm(h, dim=-1).clamp_min(1e-12)  # [B, T]
            masks = self._masks(z.device)
            if self.aggregate == "mean":
                reduced = torch.bmm(masks * inv_h[:, None, :], z)  # [B, 2, d_ff]
            else:
                scaled = z * inv_h[..., None]
                reduced = torch.stack([
                    torch.where(masks[:, k, :, None], scaled, torch.zeros((), device=z.device)).amax(dim=1)
                    for k in range(2)
                ], dim=1)
            norms = self.norms[layer]
            if norms.device != z.device:
                norms = self.norms[layer] = norms.to(z.device)
            self.out[layer] = reduced * norms
            self.finite[layer] = torch.isfinite(self.out[layer]).all()

        return reduce

    def collect(self) -> torch.Tensor:
        """[B, 2, layers * d_ff] (on the CPU) for the last forward pass."""
        home = self.out[0].device
        finite = torch.stack([f.to(home) for f in self.finite]).cpu()
        if not bool(finite.all()):
            layer = int((~finite).nonzero()[0])
            raise NumericalError(
                f"non-finite activations (NaN or inf) in layer {layer}'s FFN for record(s) "
                f"{', '.join(self.batch_ids[:5])}: often an fp16 overflow; load the model in bfloat16 or float32"
            )
        return torch.cat([o.to(home) for o in self.out], dim=-1).cpu()


def forward_batches(lm: LoadedModel, records: Sequence[dict], batch_size: int,
                    span: str) -> Iterator[tuple[list[dict], dict, torch.Tensor, torch.Tensor]]:
    """The teacher-forced batches of ``records``: (records, model inputs, answer mask, other mask).

    Right padding (causal attention never sees it). The inputs ask for the last position's logits only:
    CETT needs no logits, and the full [B, T, vocab] logits would cost SmolLM2 a fifth of its forward.
    """
    device = next(lm.model.parameters()).device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        width = max(len(r["representative"]["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for row, rec in enumerate(batch):
            seq = rec["representative"]["input_ids"]
            ids[row, :len(seq)] = torch.tensor(seq)
        answer, other = span_masks(batch, width, span)
        inputs = {"input_ids": ids.to(device), "attention_mask": (answer | other).long().to(device),
                  "use_cache": False, "logits_to_keep": 1}
        yield batch, inputs, answer, other


def feature_batch_size(lm: LoadedModel, records: Sequence[dict], batch_size: int | str) -> int:
    """``batch_size``, or for ``"auto"`` the size that fits the free accelerator memory (editor.model.batching)."""
    from ..model.batching import resolve_batch_size

    longest = max((len(r["representative"]["input_ids"]) for r in records), default=1)
    return resolve_batch_size(batch_size, lm, "features", longest)


@torch.no_grad()
def cett_features(lm: LoadedModel, records: Sequence[dict], aggregate: str = "mean",
                  batch_size: int | str = 8, span: str = "answer") -> Iterator[tuple[list[str], torch.Tensor]]:
    """Yield (ids, features [B, 2, layers * d_ff] float32) per batch; [:, 0] answer, [:, 1] other.

    ``batch_size="auto"`` sizes batches from free GPU memory (the default 8 on the CPU).
    """
    batch_size = feature_batch_size(lm, records, batch_size)
    reducer = _CettReducer(lm, aggregate)
    handles = [m.register_forward_hook(reducer.hook(i)) for i, m in enumerate(reducer.modules)]
    with hooks_removed_on_exit(handles):
        for batch, inputs, answer, other in forward_batches(lm, records, batch_size, span):
            ids = [str(r["id"]) for r in batch]
            reducer.set_batch(answer, other, ids)
            lm.model(**inputs)
            yield ids, reducer.collect()


# --------------------------------------------------------------------------------------------- storage
@dataclass
class FeatureStore:
    """A folder of fp16 feature shards plus ``features.json`` (ids, shapes, settings)."""

    folder: Path
    meta: dict

    @classmethod
    def open(cls, folder: str | Path) -> "FeatureStore":
        folder = Path(folder)
        meta_path = folder / FEATURES_MANIFEST
        if not meta_path.is_file():
            raise InputError(f"{folder} holds no feature store ({FEATURES_MANIFEST} missing): run `hneurons locate` first")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not meta.get("complete"):
            raise InputError(f"feature store {folder} is incomplete; re-run the locate stage to finish it")
        return cls(folder, meta)

    @property
    def ids(self) -> list[str]:
        return [i for shard in self.meta["shards"] for i in shard["ids"]]

    @property
    def n_features(self) -> int:
        return self.meta["num_layers"] * self.meta["d_ff"]

    def iter_shards(self, kind: str) -> Iterator[tuple[list[str], torch.Tensor]]:
        for shard in self.meta["shards"]:
            with safe_open(str(self.folder / shard["file"]), framework="pt") as handle:
                yield shard["ids"], handle.get_tensor(kind)

    def load(self, ids: Sequence[str], kind: str, dtype: torch.dtype = torch.float32,
             columns: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows for ``ids`` (in that order) as ``dtype``; ``columns`` selects a subset of features. ``out``: a
        ``[len(ids), width]`` tensor to fill instead of a new one (e.g. a slice of a larger matrix); memory
        beyond it stays at one shard."""
        want = {i: n for n, i in enumerate(ids)}
        width = self.n_features if columns is None else len(columns)
        if out is None:
            out = torch.empty(len(ids), width, dtype=dtype)
        elif tuple(out.shape) != (len(ids), width):
            raise InputError(f"feature store {self.folder}: out has shape {tuple(out.shape)}, the rows need "
                             f"{(len(ids), width)}")
        found = 0
        for shard_ids, tensor in self.iter_shards(kind):
            rows = [(want[i], r) for r, i in enumerate(shard_ids) if i in want]
            if rows:
                dst, src = zip(*rows)
                block = tensor[list(src)]
                if columns is not None:
                    block = block[:, columns]
                out[list(dst)] = block.to(out.dtype)
                found += len(rows)
        if found != len(ids):
            missing = sorted(set(ids) - set(self.ids))[:5]
            raise InputError(f"feature store {self.folder} lacks records {missing}")
        return out


def _store_settings(lm: LoadedModel, records: Sequence[dict], settings: FeatureSettings) -> dict:
    return {
        "model": lm.identity(),
        "records_sha256": sha256_json([[r["id"], r["representative"]] for r in records]),
        "aggregate": settings.aggregate,
        "span": settings.span,
        "store_dtype": settings.store_dtype,
    }


def extract_features(lm: LoadedModel, records: Sequence[dict], folder: str | Path,
                     settings: FeatureSettings = FeatureSettings(), progress: bool = True) -> FeatureStore:
    """Compute and stream CETT features of ``records`` (collect records with a representative) to disk.

    Resumes: shards already on disk for the same settings are kept; a different setting is an error.
    """
    settings.validate()
    if not records:
        raise InputError("no responses to extract features from")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(folder)
    n_features = lm.num_layers * lm.d_ff
    bytes_per_row = 2 * n_features * _STORE_DTYPES[settings.store_dtype].itemsize
    rows_per_shard = max(1, settings.shard_bytes // bytes_per_row)
    key = _store_settings(lm, records, settings) | {"rows_per_shard": rows_per_shard}
    meta_path = folder / FEATURES_MANIFEST
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["settings_sha256"] != sha256_json(key):
            raise OutputExistsError(f"feature store {folder} was made with other settings or responses; remove it "
                                    f"or choose another output folder")
        if meta.get("complete"):
            return FeatureStore(folder, meta)
    else:
        for orphan in folder.glob("shard-*.safetensors"):  # shards of a run whose settings are unknown
            orphan.unlink()
    plan = [list(records[i:i + rows_per_shard]) for i in range(0, len(records), rows_per_shard)]
    meta = {"format": FEATURES_FORMAT, "settings": key, "settings_sha256": sha256_json(key),
            "num_layers": lm.num_layers, "d_ff": lm.d_ff, "aggregate": settings.aggregate,
            "store_dtype": settings.store_dtype, "kinds": list(KINDS), "shards": [], "complete": False}
    atomic_write_json(meta_path, meta)
    started = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc="CETT features", unit="resp", dynamic_ncols=True)
    for index, shard_records in enumerate(plan):
        name = f"shard-{index:05d}.safetensors"
        ids = [str(r["id"]) for r in shard_records]
        if not (folder / name).is_file():
            _write_shard(lm, shard_records, folder / name, settings)
        meta["shards"].append({"file": name, "ids": ids})
        atomic_write_json(meta_path, meta)  # progress marker: shards listed here are complete
        if bar is not None:
            bar.update(len(shard_records))
    if bar is not None:
        bar.close()
    meta.update(complete=True, n_records=len(records), wall_time_s=round(time.time() - started, 2),
                provenance=provenance())
    atomic_write_json(meta_path, meta)
    return FeatureStore(folder, meta)


_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32"}


class _ShardWriter:
    """Streams the rows of one shard straight into a safetensors file (tensors ``answer`` and ``other``,
    each [rows, n_features]), so that no shard-sized buffer is ever held: memory stays at one batch.

    The header is known in advance (shapes and dtype are fixed), so it is written first and every batch
    is written at its rows' offsets. The bytes equal ``safetensors.torch.save_file``'s for the same
    tensors and metadata (tests/test_features.py checks it).
    """

    def __init__(self, path: Path, rows: int, n_features: int, dtype: torch.dtype, metadata: dict[str, str]):
        self.row_bytes = n_features * dtype.itemsize
        self.block = rows * self.row_bytes  # bytes of one tensor
        self.dtype, self.n_features = dtype, n_features
        shape = [rows, n_features]
        header = {"__metadata__": metadata,
                  "answer": {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": shape, "data_offsets": [0, self.block]},
                  "other": {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": shape,
                            "data_offsets": [self.block, 2 * self.block]}}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned, as safetensors pads it
        self.data_start = 8 + len(text)
        self.handle = open(path, "wb")
        self.handle.write(len(text).to_bytes(8, "little") + text)
        self.handle.truncate(self.data_start + 2 * self.block)

    def write(self, row: int, features: torch.Tensor) -> None:
        """``features`` [B, 2, n_features] (answer, other) for rows ``row`` .. ``row + B - 1``."""
        for kind in range(2):
            chunk = features[:, kind].contiguous().numpy().tobytes()
            self.handle.seek(self.data_start + kind * self.block + row * self.row_bytes)
            self.handle.write(chunk)

    def close(self) -> None:
        self.handle.flush()
        self.handle.close()


def _write_shard(lm: LoadedModel, records: Sequence[dict], path: Path, settings: FeatureSettings) -> None:
    from ..artifacts import reported_write_errors

    dtype = _STORE_DTYPES[settings.store_dtype]
    tmp = path.with_name(".hneurons-tmp-" + path.name)
    metadata = {"ids": json.dumps([str(r["id"]) for r in records])}
    with reported_write_errors(path, needed=2 * len(records) * lm.num_layers * lm.d_ff * dtype.itemsize):
        writer = _ShardWriter(tmp, len(records), lm.num_layers * lm.d_ff, dtype, metadata)
        try:
            row = 0
            for ids, feats in cett_features(lm, records, settings.aggregate, settings.batch_size, settings.span):
                stored = feats.to(dtype)
                if not torch.isfinite(stored).all():
                    raise NumericalError(f"CETT features of {ids[:3]} overflow {settings.store_dtype}; use "
                                         f"store_dtype float32")
                writer.write(row, stored)
                row += len(ids)
            writer.close()
        except BaseException:
            writer.close()
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(path)
