"""`coldpress train`: train the learned codec on a folder of images; resumable; exports safetensors.

Training state lives in a run folder (``--run DIR``):

    DIR/checkpoint.safetensors   model weights (float), written atomically
    DIR/optimizer.pt             optimizer state (tensors only; loaded with weights_only=True)
    DIR/state.json               step, config, data folders, elapsed seconds
    DIR/log.csv                  step, seconds, loss, bpp, mse, psnr, lr, q

Re-running with the same ``--run`` resumes where it stopped; ``--max-minutes`` stops cleanly (with
a checkpoint) so that training can accumulate over many short sessions. ``coldpress train export``
turns a checkpoint into shippable weights (see ``coldpress.codec.export``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_DATA = str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "train")


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="coldpress train", description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=("codec", "diffusion"), default="codec",
                   help="what to train: the codec (default), or the diffusion decoder with the codec frozen "
                        "(see coldpress.jobs.train_diffusion)")
    p.add_argument("--run", default=None, help="run folder for checkpoints and logs (resumed if present; default "
                   "runs/extreme-v1, or runs/diffusion for --stage diffusion)")
    p.add_argument("--data", action="append", help="training image folder, local or fsspec URL (repeatable; "
                   f"default {DEFAULT_DATA})")
    p.add_argument("--steps", type=int, default=1000, help="training steps to add in this run")
    p.add_argument("--max-minutes", type=float, default=0, help="stop cleanly after this many minutes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=None, help="crop side in pixels (default 256; 128 for --stage diffusion)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--latent-stride", type=int, choices=(16, 32), default=16, help="for a new run only")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--eval", help="folder of images to evaluate (estimated bpp, PSNR) after training "
                   "(with --steps 0: evaluate the run's checkpoint as it is)")
    p.add_argument("--model-id", help="export the checkpoint as shippable weights under this model id")
    p.add_argument("--export-to", help="folder for the exported weights (default: the package's weights folder)")
    p.add_argument("--register", action="store_true", help="make the exported model the default in MODELS.json")
    p.add_argument("--ship", action="store_true",
                   help="list the exported model in MODELS.json as a registered model, the default unchanged")
    p.add_argument("--reset-optimizer", action="store_true", help="resume weights but start a fresh optimizer")
    p.add_argument("--context", choices=("none", "checkerboard"),
                   help="spatial context of the latent: a new run gets it; a run without one gets a fresh one "
                        "added (weights kept)")
    p.add_argument("--slices", type=_channel_counts, metavar="N,N,...",
                   help="add ELIC's channel context with these channel slices (for example 16,16,32,64,64; they "
                        "add up to the latent's channels) to a checkerboard run; it starts at no correction")
    p.add_argument("--train-only", choices=("all", "context", "channel", "synthesis"), default="all",
                   help="'context': freeze the transforms and entropy models, train only the contexts (checkerboard "
                        "and channel) on the rate (fast: the decoder is not run); 'channel': the channel context "
                        "alone; 'synthesis': the decoder alone on the distortion (bitstreams keep their rate)")
    p.add_argument("--dec-channels", type=_channel_counts, metavar="N,N,N,N,N",
                   help="cut a lighter synthesis with these channels per stage (coarse to fine, as many as the "
                        "run's; for example 192,160,96,64,32) out of the run's trained one, keeping each stage's "
                        "most important channels (coldpress.jobs.synthesis_pruning); use with --train-only "
                        "synthesis, in a new run folder copied from the checkpoint")
    diffusion = p.add_argument_group("diffusion decoder (--stage diffusion)")
    diffusion.add_argument("--fixed-steps", type=int, default=2, choices=range(0, 6), metavar="K",
                           help="steps of the decode chain fine-tuned end to end each training step (RDEIC's "
                                "fixed-step fine-tuning; 0: the diffusion loss alone; default 2, also the "
                                "decoder's default --steps)")
    diffusion.add_argument("--pool", type=int, default=256, help="training pairs made by the frozen codec up front")
    diffusion.add_argument("--refresh", type=int, default=2, help="pool pairs replaced by new ones each step")
    diffusion.add_argument("--codec-model", action="append", metavar="ID_OR_PATH",
                           help="codec model(s) whose coarse decodes train the decoder (repeatable; default "
                                "the shipped default)")
    diffusion.add_argument("--decoder-backbone", metavar="PATH",
                           help="a local diffusers folder (unet/, vae/) of a Stable Diffusion checkpoint: train a "
                                "ControlNet branch on it instead (coldpress.codec.diffusion.backbone)")
    return p


def _channel_counts(text: str) -> tuple[int, ...]:
    try:
        slices = tuple(int(v) for v in text.split(","))
    except ValueError:
        slices = ()
    if not slices or min(slices) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of positive channel counts such as 16,16,32,64,64")
    return slices


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the learned codec (resumable) and export its weights",
                              description=__doc__)
    build_parser(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.stage == "diffusion":
        args.run = args.run or "runs/diffusion"
        args.crop = args.crop or 128
        from coldpress.jobs.train_diffusion import run as run_diffusion

        return run_diffusion(args)
    if args.decoder_backbone:
        from coldpress.errors import ColdpressError

        raise ColdpressError("--decoder-backbone trains the diffusion decoder; add --stage diffusion")
    args.run = args.run or "runs/extreme-v1"
    args.crop = args.crop or 256
    from coldpress.jobs.trainer import evaluate_checkpoint, export_run, train

    if args.steps > 0 or not (Path(args.run) / "state.json").exists():
        state = train(args)
    elif args.eval:
        state = evaluate_checkpoint(args)  # --steps 0 --eval FOLDER: evaluate without training
    else:
        state = json.loads((Path(args.run) / "state.json").read_text())
    if args.model_id:
        export_run(args, state)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
