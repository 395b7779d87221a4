"""Export a training checkpoint into shippable weights (safetensors) plus a model card.

Steps: build the CDF tables of the entropy models (once, here, so every device uses the same
tables), quantize the hyper-synthesis (and the checkerboard context, when the model has one) into
fixed point with activation ranges calibrated on real images, store float networks in float16
(halves the size; decoding computes in float64 and encoding in float32 anyway), and write the file
with the architecture config in its metadata.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coldpress.codec.fixedpoint import FixedPointStack
from coldpress.codec.models import (
    CHANNEL_PREFIX,
    CONTEXT_PREFIX,
    FIXED_PREFIX,
    ORDER_KEY,
    PARAMS_PREFIX,
    PRECISION_KEY,
    TILING_KEY,
    decode_tiling_for,
    file_sha256,
    load_weights,
)
from coldpress.codec.networks import (
    ExtremeCodecNet,
    NetConfig,
    anchor_mask,
    count_parameters,
    latent_passes,
    rounding_code,
    scale_table,
)

# Tensors kept in float32: the entropy models (their quantiles and tables define the bitstream).
_KEEP_FP32 = ("entropy_bottleneck.", "gaussian_conditional.", "gains.")


def load_checkpoint(path: str | Path) -> tuple[ExtremeCodecNet, dict]:
    """The float model of a training checkpoint (strict keys) and the file's metadata."""
    sd, meta, _ = load_weights(Path(path))
    cfg = NetConfig.from_dict(json.loads(meta["config"]))
    net = ExtremeCodecNet(cfg)
    net.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}, strict=True)
    return net.eval(), meta


@torch.no_grad()
def calibration_latents(net: ExtremeCodecNet, images: list[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(latent y, quantized hyper-latent z_hat) of ``images`` at every trained rate point."""
    out = []
    stride = net.cfg.total_stride
    for rgb in images:
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % stride, 0, (-h) % stride), mode="replicate")
        y0 = net.g_a(x)
        for q in range(net.cfg.rate_points):
            gain, _ = net.gains(torch.tensor([float(q)]))
            z = net.h_a(y0 * gain)
            out.append((y0 * gain, net.entropy_bottleneck.quantize(z, "dequantize", net.entropy_bottleneck._get_medians())))
    return out


@torch.no_grad()
def fixed_point_stacks(net: ExtremeCodecNet, latents: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, FixedPointStack]:
    """The fixed-point networks of the entropy parameters, by weights-file prefix, calibrated on ``latents``."""
    hs = FixedPointStack.from_float(net.h_s, [z_hat for _, z_hat in latents])
    stacks = {FIXED_PREFIX: hs}
    if net.cfg.context == "checkerboard":
        ctx_inputs, param_inputs = [], []
        context64 = copy.deepcopy(net.context.context).double()
        for y, z_hat in latents:
            means, scales = hs(z_hat).chunk(2, dim=1)
            anchors_hat = (torch.round(y.double() - means) + means) * anchor_mask(*y.shape[-2:])
            ctx_inputs.append(anchors_hat)
            param_inputs.append(torch.cat([means, scales, context64(anchors_hat)], dim=1))
        stacks[CONTEXT_PREFIX] = FixedPointStack.from_float(net.context.context, ctx_inputs, input_frac_bits=None)
        stacks[PARAMS_PREFIX] = FixedPointStack.from_float(net.context.params, param_inputs, input_frac_bits=None)
    if net.cfg.slices:
        stacks.update(_channel_stacks(net, hs, latents))
    return stacks


@torch.no_grad()
def _channel_stacks(net: ExtremeCodecNet, hs: FixedPointStack, latents) -> dict[str, FixedPointStack]:
    """Fixed-point channel-context networks, calibrated on the inputs each sees in the coding passes
    (float64 copies of the contexts, the latents rounded around each pass's means as the coder does)."""
    cc = copy.deepcopy(net.channel_context).double()
    spatial = copy.deepcopy(net.context).double()
    inputs: dict[tuple[str, int], list[torch.Tensor]] = {}

    def channel(which, k, earlier, m, s):
        inputs.setdefault((which, k), []).append(torch.cat([earlier, m, s], dim=1))
        return cc.refine(which, k, earlier, m, s)

    for y, z_hat in latents:
        means, scales = hs(z_hat).chunk(2, dim=1)
        latent_passes(means, scales, net.cfg.slices, cc.order, spatial, channel,
                      rounding_code(y.double(), cc.order, net.cfg.slices))
    return {f"{CHANNEL_PREFIX}{which}.{k}.": FixedPointStack.from_float(
                getattr(net.channel_context, which)[k - 1], inputs[(which, k)], input_frac_bits=None)
            for which, k in sorted(inputs)}


def export(checkpoint: str | Path, out_dir: str | Path, model_id: str, calibration: list[np.ndarray],
           card: dict) -> Path:
    """Write ``out_dir/<model_id>.safetensors`` and ``<model_id>.md``; return the weights path."""
    from safetensors.torch import save_file

    net, meta = load_checkpoint(checkpoint)
    net.update(scale_table=scale_table(), force=True)
    stacks = fixed_point_stacks(net, calibration_latents(net, calibration))
    tensors = {}
    for k, v in net.state_dict().items():
        if k.startswith(("h_s.", "context.", "channel_context.")):
            continue
        v = v.detach().cpu().contiguous()
        if v.is_floating_point() and not k.startswith(_KEEP_FP32):
            v = v.half()
        tensors[k] = v
    for prefix, stack in stacks.items():
        for k, v in stack.state_dict().items():
            tensors[prefix + k] = v.detach().cpu().contiguous()
    if net.cfg.slices:
        tensors[ORDER_KEY] = net.channel_context.order.detach().cpu().to(torch.int64).contiguous()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model_id}.safetensors"
    tiling = decode_tiling_for(net.g_s, net.cfg)
    save_file(tensors, str(path), metadata={"config": meta["config"], "model_id": model_id,
                                             "format": "coldpress-learned/1",
                                             TILING_KEY: json.dumps(tiling.to_record()),
                                             PRECISION_KEY: "float32"})
    digest = file_sha256(path)
    params = {
        "encoder (g_a)": count_parameters(net.g_a),
        "hyper-analysis (h_a)": count_parameters(net.h_a),
        "hyper-synthesis (h_s, fixed point)": count_parameters(net.h_s),
        "decoder (g_s)": count_parameters(net.g_s),
        **({"checkerboard context (fixed point)": count_parameters(net.context)} if hasattr(net, "context") else {}),
        **({"channel context (fixed point)": count_parameters(net.channel_context)} if net.cfg.slices else {}),
        "total": count_parameters(net),
    }
    lines = [
        f"# Model card: {model_id}", "",
        "The learned extreme codec of coldpress (`--codec learned`): an AEIC-style shallow encoder, a mean-scale",
        "hyperprior on compressai's entropy models with a fixed-point hyper-synthesis (bit-exact entropy",
        "parameters on every device), gain units for one continuous rate knob, and a coarse decoder."
        + (" Latents are coded in two checkerboard passes: the second uses parameters refined from the"
           " decoded anchors (a fixed-point spatial context)." if net.cfg.context == "checkerboard" else "")
        + (f" Channels are coded in slices of {', '.join(map(str, net.cfg.slices))} (ELIC's channel context: each"
           " slice's parameters are corrected from the slices before it, in both passes; one rANS stream)."
           if net.cfg.slices else ""), "",
        f"- weights: `{path.name}`, sha256 `{digest}`, {path.stat().st_size / 1e6:.1f} MB (float16 networks)",
        f"- architecture: `{meta['config']}`",
        f"- decode tiling: {tiling.tile} px tiles with a {tiling.halo} px halo (covers the decoder's receptive "
        "field: decodes equal untiled ones)",
        "- decode precision: float32 synthesis (identical pixels across processes and thread counts on one "
        "kind of device; the entropy parameters are exact fixed point on every device)",
        "- parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in params.items()),
    ]
    for k, v in card.items():
        lines.append(f"- {k}: {v}")
    (out_dir / f"{model_id}.md").write_text("\n".join(lines) + "\n")
    return path
