"""Training steps applied only when their loss and gradient are finite, for every training job (the codec's,
``trainer.py``, and the diffusion decoder's, ``train_diffusion.py``).

One non-finite step applied turns every weight it touches into NaN, and the next checkpoint would keep
them: a codec run diverged so near step 13130 on the 2-core CPU (checkpoints/README.md). A guarded step
is skipped and counted instead (``skipped_steps`` in the run's state.json); after
``MAX_SKIPPED_IN_A_ROW`` in a row the run stops with what to do, and no checkpoint with a non-finite
weight is ever written (``refuse_non_finite``)."""

from __future__ import annotations

from pathlib import Path

import torch

from coldpress.errors import ColdpressError

#: Steps in a row whose loss or gradient is not finite (each skipped) after which training stops.
MAX_SKIPPED_IN_A_ROW = 50


class FiniteSteps:
    """Applies optimizer steps whose loss and clipped gradient are finite; counts the others in ``state``."""

    def __init__(self, state: dict, run: Path, lr: float) -> None:
        self.state, self.run, self.lr = state, run, lr
        self.skipped_in_a_row = 0

    def apply(self, loss: torch.Tensor, params, optimizer, max_norm: float = 1.0) -> bool:
        """Backpropagate ``loss``, clip the gradient of ``params`` to ``max_norm`` and step ``optimizer``,
        unless the loss or the gradient is not finite; whether the step was applied."""
        optimizer.zero_grad(set_to_none=True)
        applied = bool(torch.isfinite(loss))
        if applied:
            loss.backward()
            applied = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        if applied:
            optimizer.step()
            self.skipped_in_a_row = 0
        else:
            self.skipped_in_a_row += 1
            self.state["skipped_steps"] = int(self.state.get("skipped_steps", 0)) + 1
        return applied

    @property
    def diverged(self) -> bool:
        return self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW

    def error(self) -> ColdpressError:
        return ColdpressError(
            f"training diverged: {self.skipped_in_a_row} steps in a row up to step {self.state['step']} gave a "
            f"non-finite loss or gradient (none was applied); {self.run} keeps its last checkpoint. Resume it "
            f"with a lower --lr (now {self.lr:g})")


def refuse_non_finite(tensors: dict[str, torch.Tensor], run: Path, step: int) -> None:
    """Raise instead of writing a checkpoint that holds NaN or infinite weights."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # never replace a good checkpoint with a diverged one
        raise ColdpressError(
            f"training diverged by step {step}: {len(bad)} tensors hold NaN or infinite values (first: "
            f"{bad[0]}); {run} keeps its last checkpoint. Resume it with a lower --lr")
