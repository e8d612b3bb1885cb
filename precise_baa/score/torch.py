"""Stage 4 in torch: stage probabilities -> expected points -> maturity score -> bone age,
differentiable end to end, so a grader can learn from bone-age labels.

The same tables and the same inversion as :class:`precise_baa.score.TableScorer`: per ROI the
expected points ``sum_s p(s) * points[sex][roi][s]``, their sum the maturity score, and the
bone age read off the sex's P50 curve piecewise-linearly. On one-hot probabilities the result
equals the numpy scorer's (before its rounding to 0.01 y). Outside the curve the age is clamped
to the curve's end, as the numpy scorer does, but the gradient keeps the end segment's slope
(straight-through), so a maturity score beyond the adult end is still pulled back by a younger
label instead of getting no gradient at all.

Sex is an integer tensor, 0 = female and 1 = male (the grader's sex embedding uses the same).

>>> scorer = DifferentiableScorer("rus-chn")
>>> probs = [logits.softmax(-1) for logits in out.logits]   # 13 x [B, stages]  # doctest: +SKIP
>>> ages = scorer(probs, sex)                               # [B] years        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..rois import ROI_KEYS
from .tables import load_tables

#: row of each sex in the tensors below (the grader's sex index)
SEXES = ("F", "M")


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``fp(x)`` through the knots ``(xp, fp)`` (``xp`` strictly increasing).

    Clamped to ``fp[0]`` / ``fp[-1]`` outside ``[xp[0], xp[-1]]`` like ``numpy.interp``; there
    the gradient is the first / last segment's slope (straight-through), not zero.
    """
    xp = xp.to(x.dtype)
    fp = fp.to(x.dtype)
    n = xp.shape[0]
    idx = torch.searchsorted(xp, x.detach().contiguous(), right=True) - 1
    idx = idx.clamp(0, n - 2)
    x0, x1, y0, y1 = xp[idx], xp[idx + 1], fp[idx], fp[idx + 1]
    slope = (y1 - y0) / (x1 - x0)
    xc = torch.minimum(torch.maximum(x, xp[0]), xp[-1])
    outside = x - xc  # zero inside the range
    return y0 + slope * (xc - x0) + (slope * outside - (slope * outside).detach())


class DifferentiableScorer(nn.Module):
    """The table scorer of ``standard`` ('rus-chn' or 'tw3') as a torch module.

    Buffers (move with ``.to(device)``): per ROI the points of each stage for both sexes
    ``[2, stages]``, and each sex's P50 curve (ages, scores).
    """

    def __init__(self, standard: str = "rus-chn"):
        super().__init__()
        tables = load_tables(standard)
        self.standard = standard
        for i, key in enumerate(ROI_KEYS):
            pts = torch.tensor([tables.points[s][key] for s in SEXES], dtype=torch.float64)
            self.register_buffer(f"points_{i}", pts, persistent=False)
        for s in SEXES:
            ages, scores = tables.curve[s]
            self.register_buffer(f"ages_{s}", torch.as_tensor(ages, dtype=torch.float64),
                                 persistent=False)
            self.register_buffer(f"scores_{s}", torch.as_tensor(scores, dtype=torch.float64),
                                 persistent=False)

    # ------------------------------------------------------------------ tables
    def points(self, roi: int) -> torch.Tensor:
        """``[2, stages]`` points of ROI ``roi`` (index into ROI_KEYS), rows F, M."""
        return getattr(self, f"points_{roi}")

    def curve(self, sex: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ages, scores) of the sex's P50 curve."""
        return getattr(self, f"ages_{sex}"), getattr(self, f"scores_{sex}")

    def age_range(self, sex: str) -> tuple[float, float]:
        """The bone ages the sex's curve covers (years)."""
        ages, _ = self.curve(sex)
        return float(ages[0]), float(ages[-1])

    # ------------------------------------------------------------------ scoring
    def expected_points(self, probs: Sequence[torch.Tensor], sex: torch.Tensor) -> torch.Tensor:
        """``[B, 13]`` expected points per ROI from 13 probability tensors ``[B, stages]``."""
        if len(probs) != len(ROI_KEYS):
            raise ValueError(f"expected {len(ROI_KEYS)} probability tensors, got {len(probs)}")
        sex = sex.long()
        cols = []
        for i, p in enumerate(probs):
            table = self.points(i).to(p.dtype)[sex]  # [B, stages]
            if table.shape != p.shape:
                raise ValueError(f"{ROI_KEYS[i]}: probabilities of shape {tuple(p.shape)}; the "
                                 f"{self.standard} table has {table.shape[1]} stages")
            cols.append((p * table).sum(-1))
        return torch.stack(cols, dim=1)

    def fractions(self, probs: Sequence[torch.Tensor], sex: torch.Tensor) -> torch.Tensor:
        """``[B, 13]`` expected points as a fraction of each ROI's top-stage points (0..1):
        the bone's maturity on one scale for all bones."""
        pts = self.expected_points(probs, sex)
        top = torch.stack([self.points(i)[:, -1] for i in range(len(ROI_KEYS))], dim=1)
        return pts / top.to(pts.dtype)[sex.long()]

    def maturity_score(self, probs: Sequence[torch.Tensor], sex: torch.Tensor) -> torch.Tensor:
        """``[B]`` expected total maturity score."""
        return self.expected_points(probs, sex).sum(1)

    def bone_age(self, score: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        """``[B]`` bone age (years) of maturity scores ``[B]`` through each sex's P50 curve."""
        out = torch.zeros_like(score)
        for i, s in enumerate(SEXES):
            ages, scores = self.curve(s)
            out = torch.where(sex.long() == i, interp(score, scores, ages), out)
        return out

    def score_at_age(self, ages: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        """``[B]`` P50 maturity score at bone ages ``[B]`` (years), clamped to the curve."""
        out = torch.zeros_like(ages)
        for i, s in enumerate(SEXES):
            curve_ages, scores = self.curve(s)
            out = torch.where(sex.long() == i, interp(ages, curve_ages, scores), out)
        return out

    def level(self, ages: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        """``[B]`` the hand's maturity fraction a bone age implies: the P50 score at that age
        over the sex's top total score (every bone at this fraction scores exactly that age)."""
        top = torch.stack([self.points(i)[:, -1] for i in range(len(ROI_KEYS))], 1).sum(1)
        return self.score_at_age(ages, sex) / top.to(ages.dtype)[sex.long()]

    def level_target(self, roi: int, level: torch.Tensor, sex: torch.Tensor,
                     sd: float) -> torch.Tensor:
        """``[B, stages]`` ROI ``roi``'s stage distribution for a bone at the hand's ``level``
        ``[B]`` (:meth:`level`): each stage weighted by ``exp(-(its points fraction - level)^2
        / 2 sd^2)``, normalised. Unimodal and ordinal; its argmax is the stage whose points
        fraction is nearest the level."""
        table = self.points(roi).to(level.dtype)[sex.long()]  # [B, stages]
        frac = table / table[:, -1:]
        return (-(frac - level[:, None]).pow(2) / (2 * sd ** 2)).softmax(-1)

    def forward(self, probs: Sequence[torch.Tensor], sex: torch.Tensor) -> torch.Tensor:
        """``[B]`` bone age (years) from 13 stage-probability tensors ``[B, stages]``."""
        return self.bone_age(self.maturity_score(probs, sex), sex)
