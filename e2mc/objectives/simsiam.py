"""SimSiam: symmetric negative cosine similarity with stop-gradient (Chen & He, CVPR 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.checks import check_matrix


class SimSiamLoss(nn.Module):
    """``-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``, each cosine averaged over the batch.

    ``forward(p1, p2, z1, z2)`` takes the predictor outputs p and the projector outputs z
    of the two views, all (N, D) (D = 2048 for the official ResNet-50 SimSiam), and
    returns ``{"loss"}``, a scalar in [-1, 1]. No gradient flows into z (stop-gradient),
    as in facebookresearch/simsiam; the loss is local to each rank (DDP averages it).
    Computed in float32 even under autocast.
    """

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor,
                z2: torch.Tensor) -> dict[str, torch.Tensor]:
        for name, x in (("p1", p1), ("p2", p2), ("z1", z1), ("z2", z2)):
            check_matrix(x, name)
            if x.shape != p1.shape:
                raise ValueError(f"p1, p2, z1, z2 must share one (N, D) shape, got {tuple(p1.shape)} "
                                 f"for p1 and {tuple(x.shape)} for {name}")
        with torch.autocast(device_type=p1.device.type, enabled=False):
            similarity_1 = F.cosine_similarity(p1.float(), z2.detach().float(), dim=1).mean()
            similarity_2 = F.cosine_similarity(p2.float(), z1.detach().float(), dim=1).mean()
            loss = -(similarity_1 + similarity_2) / 2
        return {"loss": loss}
