"""Taps on a Llama-style model's internals, read through forward hooks at the answer position.

Names a user can type (``*`` expands to every layer, head or label pair):

- ``layers.L.attn.heads.H.out``: head H's output, the slice of ``o_proj``'s input that belongs to
  query head H, ``(batch, head_dim)``. Heads are counted in query heads, not key/value heads.
- ``layers.L.attn.heads.H.dla[A-B]``: head H's direct contribution to the logit difference of
  labels A and B, ``(batch,)``: its write into the residual stream (its slice of ``o_proj``) through
  the final RMSNorm linearised at the actual residual (``weight / rms(x)``), onto
  ``W_U[A] - W_U[B]`` (the first token of each label). Summed with the embeddings', the MLPs' and
  any biases' contributions it reproduces the logit difference exactly, up to float rounding.
- ``layers.L.mlp.neurons.N``: neuron N of the MLP, the N-th input of ``down_proj``, ``(batch,)``.

A Llama-style model is one with ``model.get_decoder().layers[L].self_attn.o_proj``,
``.mlp.down_proj`` and a final RMSNorm ``get_decoder().norm`` (Llama, Mistral, Qwen2 and kin).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kandistill.teachers.base import TeacherError

_HEAD = re.compile(r"^layers\.(\d+|\*)\.attn\.heads\.(\d+|\*)\.(out|dla\[([^\[\]\-]+|\*)-([^\[\]\-]+|\*)\])$")
_NEURON = re.compile(r"^layers\.(\d+|\*)\.mlp\.neurons\.(\d+)$")


@dataclass(frozen=True)
class Tap:
    """One internal quantity at the answer position: ``kind`` is ``out``, ``dla`` or ``neuron``."""

    layer: int
    kind: str
    index: int
    labels: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        if self.kind == "neuron":
            return f"layers.{self.layer}.mlp.neurons.{self.index}"
        suffix = "out" if self.kind == "out" else f"dla[{self.labels[0]}-{self.labels[1]}]"
        return f"layers.{self.layer}.attn.heads.{self.index}.{suffix}"


@dataclass(frozen=True)
class LlamaParts:
    """The modules taps hook into, and the sizes that split them."""

    layers: Sequence[nn.Module]
    norm: nn.Module
    unembed: torch.Tensor
    n_heads: int
    head_dim: int
    n_neurons: int

    @classmethod
    def of(cls, model: nn.Module) -> LlamaParts:
        try:
            decoder = model.get_decoder()
            layers, norm = decoder.layers, decoder.norm
            o_proj, down_proj = layers[0].self_attn.o_proj, layers[0].mlp.down_proj
        except (AttributeError, IndexError, TypeError) as err:
            raise TeacherError(f"taps need a Llama-style model (get_decoder().layers[i].self_attn.o_proj, "
                               f".mlp.down_proj, .norm); {type(model).__name__} has none: {err}") from err  # fmt: skip
        config = model.config
        n_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        if o_proj.in_features != n_heads * head_dim:
            raise TeacherError(f"o_proj takes {o_proj.in_features} inputs, not num_attention_heads * head_dim "
                               f"= {n_heads} * {head_dim}")  # fmt: skip
        unembed = model.get_output_embeddings().weight
        return cls(layers, norm, unembed, n_heads, head_dim, down_proj.in_features)


def parse_taps(names: Sequence[str], parts: LlamaParts, labels: Sequence[str]) -> list[Tap]:
    """Parse and expand tap names; raise `TeacherError` naming any that is malformed or out of range."""
    taps: list[Tap] = []
    n_layers = len(parts.layers)

    def expand(token: str, size: int, what: str, name: str) -> list[int]:
        if token == "*":
            return list(range(size))
        if int(token) >= size:
            raise TeacherError(f"tap {name!r}: {what} {token} is out of range (the model has {size})")
        return [int(token)]

    for name in names:
        if match := _HEAD.match(name):
            layer, head, suffix, a, b = match.groups()
            pairs: list[tuple[str, str] | None] = [None]
            if suffix != "out":
                firsts = labels if a == "*" else [a]
                seconds = labels if b == "*" else [b]
                for label in (*firsts, *seconds):
                    if label not in labels:
                        raise TeacherError(f"tap {name!r}: label {label!r} is not in the label set {list(labels)}")
                pairs = [(x, y) for x in firsts for y in seconds if x != y]
            for lay in expand(layer, n_layers, "layer", name):
                for h in expand(head, parts.n_heads, "head", name):
                    taps += [Tap(lay, "out" if p is None else "dla", h, p) for p in pairs]
        elif match := _NEURON.match(name):
            layer, neuron = match.groups()
            for lay in expand(layer, n_layers, "layer", name):
                taps.append(Tap(lay, "neuron", expand(neuron, parts.n_neurons, "neuron", name)[0]))
        else:
            raise TeacherError(f"tap {name!r}: expected layers.L.attn.heads.H.out, layers.L.attn.heads.H.dla[A-B] "
                               "or layers.L.mlp.neurons.N (L, H may be *)")  # fmt: skip
    seen = [t.name for t in taps]
    if len(set(seen)) != len(seen):
        raise TeacherError(f"taps name the same quantity twice: {sorted({n for n in seen if seen.count(n) > 1})}")
    return taps


class TapRecorder:
    """Hooks that keep the last position's ``o_proj``/``down_proj`` inputs and final residual.

    Use as a context manager around one forward, then `read` the taps. Inputs must be left-padded,
    so the last position is every row's answer position.
    """

    def __init__(self, parts: LlamaParts, taps: Sequence[Tap], label_tokens: Mapping[str, int]) -> None:
        self.parts, self.taps, self.label_tokens = parts, list(taps), dict(label_tokens)
        self._captured: dict[tuple[str, int], torch.Tensor] = {}
        self._handles: list = []

    def _keep(self, key: tuple[str, int]):
        def hook(module: nn.Module, args: tuple) -> None:
            self._captured[key] = args[0][:, -1, :].float()

        return hook

    def __enter__(self) -> TapRecorder:
        wanted = {("attn" if t.kind != "neuron" else "mlp", t.layer) for t in self.taps}
        for kind, layer in sorted(wanted):
            block = self.parts.layers[layer]
            module = block.self_attn.o_proj if kind == "attn" else block.mlp.down_proj
            self._handles.append(module.register_forward_pre_hook(self._keep((kind, layer))))
        if any(t.kind == "dla" for t in self.taps):
            self._handles.append(self.parts.norm.register_forward_pre_hook(self._keep(("resid", -1))))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def read(self) -> dict[str, torch.Tensor]:
        """The taps of the last forward: ``{name: (batch,) or (batch, head_dim)}`` float32 on the CPU."""
        out: dict[str, torch.Tensor] = {}
        d = self.parts.head_dim
        if any(t.kind == "dla" for t in self.taps):
            resid = self._captured[("resid", -1)]
            eps = getattr(self.parts.norm, "variance_epsilon", getattr(self.parts.norm, "eps", 1e-6))
            norm_scale = self.parts.norm.weight.float() * torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + eps)
        for tap in self.taps:
            if tap.kind == "neuron":
                out[tap.name] = self._captured[("mlp", tap.layer)][:, tap.index].cpu()
                continue
            head = self._captured[("attn", tap.layer)][:, tap.index * d : (tap.index + 1) * d]
            if tap.kind == "out":
                out[tap.name] = head.cpu()
                continue
            o_proj = self.parts.layers[tap.layer].self_attn.o_proj.weight.float()
            write = head @ o_proj[:, tap.index * d : (tap.index + 1) * d].T
            a, b = (self.label_tokens[label] for label in tap.labels)
            direction = (self.parts.unembed[a] - self.parts.unembed[b]).float()
            out[tap.name] = ((write * norm_scale) @ direction).cpu()
        self._captured.clear()
        return out
