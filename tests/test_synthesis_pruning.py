"""A lighter synthesis cut out of a trained one (``jobs/synthesis_pruning.py``): an uncut copy is exact,
and a cut keeps exactly the channels the output depends on (its training: tests/test_train.py)."""

from __future__ import annotations

import torch

from coldpress.codec.networks import NetConfig, ResBlock, Synthesis
from coldpress.jobs.synthesis_pruning import prune_synthesis

SMALL = NetConfig(dec_channels=(16, 16, 12, 12, 8), latent_channels=16)
CUT = (16, 12, 8, 8, 4)


def _random_synthesis(cfg: NetConfig, seed: int) -> Synthesis:
    torch.manual_seed(seed)
    g = Synthesis(cfg).double()
    for p in g.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return g


def _kill_channels(teacher: Synthesis, student_cfg: NetConfig, seed: int) -> None:
    """Make the teacher's output independent of all but ``student_cfg``'s channel counts per stage (and
    per residual block's hidden layer): zero what the next layer reads from the others, chosen at random."""
    gen = torch.Generator().manual_seed(seed)
    convs = [teacher.head[0]] + [up.conv for up in teacher.ups]
    readers = [up.conv for up in teacher.ups] + [teacher.tail]
    blocks = [teacher.head[1]] + [up.res for up in teacher.ups]
    with torch.no_grad():
        for i, keep in enumerate(student_cfg.dec_channels):
            n = convs[i].out_channels // (1 if i == 0 else 4)
            dead = torch.randperm(n, generator=gen)[keep:]
            readers[i].weight[:, dead] = 0
            if isinstance(blocks[i], ResBlock):  # its hidden layer reads no dead channel, its output no dead hidden one
                blocks[i].conv1.weight[:, dead] = 0
                hidden_dead = torch.randperm(n, generator=gen)[keep:]
                blocks[i].conv2.weight[:, hidden_dead] = 0


def test_an_uncut_synthesis_is_copied_exactly():
    teacher = _random_synthesis(SMALL, 0)
    student = _random_synthesis(SMALL, 1)
    y = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    kept = prune_synthesis(teacher, student, y)
    assert list(kept.values()) == list(SMALL.dec_channels)
    assert torch.equal(student(y), teacher(y))


def test_the_cut_keeps_exactly_the_channels_the_output_depends_on():
    teacher = _random_synthesis(SMALL, 2)
    cut_cfg = NetConfig(dec_channels=CUT, latent_channels=16)
    _kill_channels(teacher, cut_cfg, seed=3)
    student = _random_synthesis(cut_cfg, 4)
    y = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    kept = prune_synthesis(teacher, student, y)
    assert list(kept.values()) == list(CUT)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    torch.testing.assert_close(student(y), teacher(y), rtol=1e-9, atol=1e-9)
