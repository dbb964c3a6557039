"""Architecture registry: everything hneurons knows about a model family, as data in one place.

An FFN "neuron" j of layer l is input channel j of that layer's down-projection: its activation z_j is
the j-th value of the down-projection's *input* (for gated MLPs z = act(gate(x)) * up(x)), and its
write vector is column j of W_down (row j for GPT-2's Conv1D, whose weight is stored [in, out]).

Adding an architecture means adding one :class:`ArchSpec` row below; no other module branches on
``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """Where the FFN of one architecture lives and how its weights are laid out.

    Module paths are dotted attribute paths: ``layers`` from the top-level ``*ForCausalLM`` model to the
    list of decoder layers; the others from one decoder layer.
    """

    model_type: str
    layers: str  # decoder layer list, from the top-level model
    down_proj: str  # FFN down-projection (its input holds the neuron activations z)
    up_proj: str  # FFN up-projection (fc1 for non-gated MLPs): W_up row j feeds neuron j
    act: str  # the activation module inside the MLP
    gate_proj: str | None = None  # gate projection of gated MLPs (None: non-gated or fused)
    fused_gate_up: bool = False  # phi3: one gate_up_proj whose output is [gate | up]
    conv1d: bool = False  # GPT-2 Conv1D: weight [in, out], neuron j = row j
    d_ff_field: str = "intermediate_size"  # config field holding d_ff
    text_config: str | None = None  # multimodal wrappers: sub-config holding the language model's fields
    peft_ff_module: str = "down_proj"  # module-name suffix PEFT uses for the feedforward module
    note: str = ""

    @property
    def gated(self) -> bool:
        return self.gate_proj is not None or self.fused_gate_up

    def text_cfg(self, config: Any) -> Any:
        return getattr(config, self.text_config) if self.text_config else config

    def num_layers(self, config: Any) -> int:
        return int(self.text_cfg(config).num_hidden_layers)

    def d_ff(self, config: Any) -> int:
        cfg = self.text_cfg(config)
        value = getattr(cfg, self.d_ff_field, None)
        if value is None and self.model_type == "gpt2":
            # GPT-2 leaves n_inner unset to mean 4 * n_embd (its modeling code does the same).
            value = 4 * cfg.n_embd
        if value is None:
            raise UnsupportedArchitectureError(
                f"config of model_type {self.model_type!r} has no {self.d_ff_field!r} (the FFN width)"
            )
        return int(value)

    def down_proj_path(self, layer: int) -> str:
        """Full module name of layer ``layer``'s down-projection inside the top-level model."""
        return f"{self.layers}.{layer}.{self.down_proj}"


_GATED = dict(down_proj="mlp.down_proj", up_proj="mlp.up_proj", gate_proj="mlp.gate_proj", act="mlp.act_fn")

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in [
        ArchSpec("llama", layers="model.layers", **_GATED),
        ArchSpec("mistral", layers="model.layers", **_GATED),
        ArchSpec("qwen2", layers="model.layers", **_GATED),
        ArchSpec("qwen3", layers="model.layers", **_GATED),
        ArchSpec("gemma", layers="model.layers", **_GATED, note="GELU-tanh activation"),
        ArchSpec("gemma2", layers="model.layers", **_GATED, note="GELU-tanh activation"),
        ArchSpec("gemma3_text", layers="model.layers", **_GATED, note="GELU-tanh activation"),
        ArchSpec(
            "gemma3",
            layers="model.language_model.layers",
            text_config="text_config",
            **_GATED,
            note="multimodal wrapper; only the language model's FFNs are used",
        ),
        ArchSpec("olmo", layers="model.layers", **_GATED),
        ArchSpec("olmo2", layers="model.layers", **_GATED),
        ArchSpec(
            "phi3",
            layers="model.layers",
            down_proj="mlp.down_proj",
            up_proj="mlp.gate_up_proj",
            act="mlp.activation_fn",
            fused_gate_up=True,
            note="fused gate_up_proj: output rows [0, d_ff) are the gate, [d_ff, 2 d_ff) the up projection",
        ),
        ArchSpec("phi", layers="model.layers", down_proj="mlp.fc2", up_proj="mlp.fc1",
                 act="mlp.activation_fn", peft_ff_module="fc2"),
        ArchSpec(
            "gpt2",
            layers="transformer.h",
            down_proj="mlp.c_proj",
            up_proj="mlp.c_fc",
            act="mlp.act",
            conv1d=True,
            d_ff_field="n_inner",
            peft_ff_module="mlp.c_proj",
            note="Conv1D weights [in, out]; mlp.c_proj, not attn.c_proj",
        ),
        ArchSpec("gpt_neox", layers="gpt_neox.layers", down_proj="mlp.dense_4h_to_h",
                 up_proj="mlp.dense_h_to_4h", act="mlp.act", peft_ff_module="dense_4h_to_h"),
        ArchSpec("starcoder2", layers="model.layers", down_proj="mlp.c_proj", up_proj="mlp.c_fc",
                 act="mlp.act", peft_ff_module="mlp.c_proj"),
    ]
}

# Mixture-of-experts families: their FFN neurons live in routed experts, which the H-Neuron method
# (one dense FFN per layer) does not define. Listed so the error can say "MoE" rather than "unknown".
MOE_MODEL_TYPES = frozenset(
    {
        "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "dbrx", "jamba", "olmoe",
        "granitemoe", "granitemoeshared", "phimoe", "jetmoe", "switch_transformers", "nllb_moe",
        "gpt_oss", "llama4", "llama4_text", "minimax", "ernie4_5_moe", "hunyuan_v1_moe", "dots1",
        "glm4_moe", "bailing_moe", "flex_olmo", "lfm2_moe", "qwen3_next", "qwen3_vl_moe",
    }
)
_MOE_CONFIG_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def supported_types() -> list[str]:
    return sorted(ARCHITECTURES)


def _supported_list() -> str:
    return ", ".join(supported_types())


def _config_is_moe(config: Any) -> bool:
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for field in _MOE_CONFIG_FIELDS:
            value = getattr(cfg, field, None)
            if isinstance(value, int) and value > 1:
                return True
    return False


def get_arch(config_or_type: Any) -> ArchSpec:
    """The registry entry for a config (or a ``model_type`` string); a clear error for anything else."""
    model_type = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
    if model_type in MOE_MODEL_TYPES or (not isinstance(config_or_type, str) and _config_is_moe(config_or_type)):
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is a mixture-of-experts model: H-Neurons are defined for dense FFN "
            f"layers only. Supported architectures: {_supported_list()}"
        )
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture: model_type {model_type!r} is not in the registry. "
            f"Supported architectures: {_supported_list()}"
        )
    return ARCHITECTURES[model_type]


def architecture_hash(config: Any) -> str:
    """A hash of the fields that fix the FFN neuron layout (type, layers, widths, vocabulary).

    Two checkpoints with the same hash have interchangeable neuron indices (e.g. a base model and its
    instruct model); the weights fingerprint in :mod:`editor.model.loading` tells them apart.
    """
    from ..artifacts import sha256_json

    arch = get_arch(config)
    cfg = arch.text_cfg(config)
    fields = {
        "model_type": arch.model_type,
        "num_layers": arch.num_layers(config),
        "d_ff": arch.d_ff(config),
        "hidden_size": getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
    }
    return sha256_json(fields)[:16]
