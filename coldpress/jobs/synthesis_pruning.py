"""A lighter synthesis cut out of a trained one, to start a decoder-only run (``train --dec-channels``).

The synthesis (``networks.Synthesis``) is a chain of stages: the head, then sub-pixel upsamplings
(``Up``: a convolution to 4 x C channels, a pixel shuffle, a residual block) and a 3-channel tail. A
lighter one keeps, at each stage, the C' of the C channels that matter most to what the next layer
reads: the root mean square of the channel's activation on real latents times the norm of the next
convolution's weights on it (and likewise, inside each residual block, for its hidden channels). The cut
network starts near the trained one, so a short fine-tuning of the synthesis alone (the encoder and the
entropy models frozen, so that bitstreams keep their rate) recovers most of its quality; from scratch it
would need a GPU round.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coldpress.codec.networks import ResBlock, Synthesis


def _rms_per_channel(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().pow(2).mean(dim=(0, 2, 3)).sqrt()


def _weight_norm_per_input(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().double().pow(2).sum(dim=(0, 2, 3)).sqrt()


def _top(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in their original order (ties: the lower index)."""
    order = torch.argsort(-score, stable=True)[:keep]
    return torch.sort(order).values


def _stage_modules(g_s: Synthesis) -> list[tuple[nn.Module, nn.Conv2d, ResBlock | None]]:
    """(module whose output is the stage's channels, convolution producing them, its residual block or
    None) per stage, the head first."""
    stages: list[tuple[nn.Module, nn.Conv2d, ResBlock | None]] = [(g_s.head, g_s.head[0], g_s.head[1])]
    for up in g_s.ups:
        stages.append((up, up.conv, up.res if isinstance(up.res, ResBlock) else None))
    return stages


@torch.no_grad()
def _activations(g_s: Synthesis, y_hat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Per stage: the RMS of each output channel, and of each residual block's hidden channel (after its
    leaky ReLU), from one run of the synthesis on ``y_hat`` with forward hooks."""
    stages = _stage_modules(g_s)
    outs: list[torch.Tensor | None] = [None] * len(stages)
    hidden: list[torch.Tensor | None] = [None] * len(stages)

    def keep(into: list, i: int, act=lambda t: t):
        def hook(_module, _inputs, output):
            into[i] = _rms_per_channel(act(output))  # before any in-place op that follows
        return hook

    handles = []
    for i, (out_module, _, res) in enumerate(stages):
        handles.append(out_module.register_forward_hook(keep(outs, i)))
        if res is not None:
            handles.append(res.conv1.register_forward_hook(keep(hidden, i, lambda t: F.leaky_relu(t, 0.1))))
    try:
        g_s(y_hat)
    finally:
        for h in handles:
            h.remove()
    return outs, hidden


@torch.no_grad()
def prune_synthesis(teacher: Synthesis, student: Synthesis, y_hat: torch.Tensor) -> dict[str, int]:
    """Copy into ``student`` (same depth, fewer channels per stage) the most important channels of
    ``teacher``, measured on the synthesis inputs ``y_hat``. Returns channels kept per stage."""
    t_stages, s_stages = _stage_modules(teacher), _stage_modules(student)
    if len(t_stages) != len(s_stages):
        raise ValueError("prune_synthesis: the student must have as many stages as the teacher")
    outs, hidden = _activations(teacher, y_hat)
    consumers = [conv for _, conv, _ in t_stages[1:]] + [teacher.tail]
    keep_out: list[torch.Tensor] = []
    for i, ((_, t_conv, _), (_, s_conv, _)) in enumerate(zip(t_stages, s_stages)):
        c_keep = s_conv.out_channels // (1 if i == 0 else 4)
        keep_out.append(_top(outs[i] * _weight_norm_per_input(consumers[i]), c_keep))
    kept = {}
    prev = torch.arange(teacher.head[0].in_channels)
    for i, ((_, t_conv, t_res), (_, s_conv, s_res)) in enumerate(zip(t_stages, s_stages)):
        out = keep_out[i]
        rows = out if i == 0 else (out[:, None] * 4 + torch.arange(4)[None, :]).flatten()  # shuffle groups of 4
        s_conv.weight.copy_(t_conv.weight[rows][:, prev])
        s_conv.bias.copy_(t_conv.bias[rows])
        if s_res is not None:
            h_keep = _top(hidden[i] * _weight_norm_per_input(t_res.conv2), s_res.conv1.out_channels)
            s_res.conv1.weight.copy_(t_res.conv1.weight[h_keep][:, out])
            s_res.conv1.bias.copy_(t_res.conv1.bias[h_keep])
            s_res.conv2.weight.copy_(t_res.conv2.weight[out][:, h_keep])
            s_res.conv2.bias.copy_(t_res.conv2.bias[out])
        kept[f"stage{i}"] = len(out)
        prev = out
    student.tail.weight.copy_(teacher.tail.weight[:, prev])
    student.tail.bias.copy_(teacher.tail.bias)
    return kept
