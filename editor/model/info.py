"""`hneurons inspect`: what a model looks like to hneurons, read from its config without loading weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .loading import load_config
from .registry import architecture_hash, get_arch


@dataclass
class ModelInfo:
    model: str
    source_kind: str
    model_type: str
    architecture: str
    num_layers: int
    d_ff: int
    ffn_neurons: int
    parameters: int
    dtype: str
    layers_path: str
    down_proj_path: str
    up_proj_path: str
    weight_layout: str
    peft_feedforward_module: str
    architecture_hash: str

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        rows = [
            ("model", self.model),
            ("source", self.source_kind),
            ("model type", f"{self.model_type} ({self.architecture})"),
            ("layers", str(self.num_layers)),
            ("d_ff", str(self.d_ff)),
            ("FFN neurons", f"{self.ffn_neurons} ({self.num_layers} x {self.d_ff})"),
            ("parameters", f"{self.parameters:,} ({self.parameters / 1e6:.1f}M)"),
            ("dtype", self.dtype),
            ("decoder layers", self.layers_path),
            ("FFN down-projection", f"{self.down_proj_path}  (input = neuron activations z)"),
            ("FFN up-projection", self.up_proj_path),
            ("weight layout", self.weight_layout),
            ("PEFT feedforward module", self.peft_feedforward_module),
            ("architecture hash", self.architecture_hash),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def inspect_model(spec: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelInfo:
    """Describe ``spec`` from its config; parameters are counted on the meta device (no weights read)."""
    from transformers import AutoModelForCausalLM

    config, source = load_config(spec, revision, trust_remote_code)
    arch = get_arch(config)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    parameters = sum(p.numel() for p in skeleton.parameters())
    layers, d_ff = arch.num_layers(config), arch.d_ff(config)
    dtype = "float32 (dequantised GGUF)" if source.kind in ("alias", "gguf") else str(
        getattr(arch.text_cfg(config), "dtype", None) or getattr(config, "dtype", None) or "float32"
    ).replace("torch.", "")
    return ModelInfo(
        model=spec,
        source_kind=source.kind,
        model_type=arch.model_type,
        architecture=type(skeleton).__name__,
        num_layers=layers,
        d_ff=d_ff,
        ffn_neurons=layers * d_ff,
        parameters=parameters,
        dtype=dtype,
        layers_path=f"{arch.layers}[0..{layers - 1}]",
        down_proj_path=f"{arch.layers}.N.{arch.down_proj}",
        up_proj_path=f"{arch.layers}.N.{arch.up_proj}" + (" (fused [gate | up])" if arch.fused_gate_up else ""),
        weight_layout="Conv1D [in, out]: neuron j = row j" if arch.conv1d else "Linear [out, in]: neuron j = column j",
        peft_feedforward_module=arch.peft_ff_module,
        architecture_hash=architecture_hash(config),
    )
