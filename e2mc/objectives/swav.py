"""SwAV: swapped prediction of online cluster assignments (Caron et al., NeurIPS 2020).

Follows facebookresearch/swav (``main_swav.py``), which the E2MC authors copy unchanged:

* codes: for each assignment crop, Sinkhorn-Knopp on ``exp(scores / epsilon)`` over the
  global batch (row and total sums all-reduced across ranks), optionally with a queue of
  past assignment-crop embeddings prepended; only the current batch's codes are kept;
* loss: for every assignment crop and every *other* crop, the cross-entropy between the
  codes and ``softmax(scores / temperature)``, averaged over the other crops and then over
  the assignment crops.

Prototypes: the caller keeps them on the unit sphere, re-normalising them before every
step (before the forward pass) exactly as official SwAV does, e.g. with
:func:`normalize_prototypes_`. Scores are then cosines in [-1, 1], which keeps
``exp(scores / epsilon)`` finite in float32 for ``epsilon`` above about 0.012.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.checks import check_matrix
from e2mc.distributed import all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp codes for this rank's samples, computed over all ranks' samples.

    Args:
        scores: (B_local, K) similarities of this rank's samples to the K prototypes;
            every rank must pass the same B_local. Computed in float32.
        epsilon: entropic regularisation; the transport plan starts as ``exp(scores / epsilon)``.
        iterations: number of (prototype, sample) normalisation rounds.

    Returns:
        Q, shape (B_local, K), no gradient. In the SwAV convention each sample's codes
        sum to exactly 1 (the last normalisation is over samples) and, over the global
        batch of B = B_local * world_size samples, each prototype receives a total of
        about B / K; this equal partition becomes exact as ``iterations`` grows.
    """
    check_matrix(scores, "scores")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        plan = torch.exp(scores.float() / epsilon).t()  # (K, B_local): prototypes x samples
        n_prototypes = plan.shape[0]
        n_samples = plan.shape[1] * world_size()
        plan /= all_reduce_sum(plan.sum())
        for _ in range(iterations):
            # each prototype's total mass over the global batch -> 1 / K
            plan /= all_reduce_sum(plan.sum(dim=1, keepdim=True))
            plan /= n_prototypes
            # each sample's mass -> 1 / B (a sample lives on one rank: no reduction)
            plan /= plan.sum(dim=0, keepdim=True)
            plan /= n_samples
        plan *= n_samples  # each sample's codes now sum to 1
    return plan.t()


@torch.no_grad()
def normalize_prototypes_(prototypes: nn.Linear | torch.Tensor) -> None:
    """L2-normalise each prototype (row of the (K, d) weight) in place.

    Call it before every training step, as official SwAV does; accepts the prototype
    ``nn.Linear`` (bias-free, d -> K) or its weight tensor.
    """
    weight = prototypes.weight if isinstance(prototypes, nn.Module) else prototypes
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError("normalize_prototypes_ expects an nn.Linear or a (K, d) weight tensor, "
                        f"got {type(prototypes).__name__}")
    weight.copy_(F.normalize(weight, dim=1, p=2))


class SwAVLoss(nn.Module):
    """SwAV's swapped-prediction loss with distributed Sinkhorn codes and an optional queue.

    Args:
        temperature: softmax temperature of the predicted assignments (0.1).
        epsilon: Sinkhorn regularisation (0.05).
        sinkhorn_iterations: Sinkhorn rounds (3).
        crops_for_assign: indices, in the list passed to ``forward``, of the crops whose
            codes are predicted by the other crops (the two 224 px crops: (0, 1)).
        queue_length: total queue length over all ranks (SwAV ImageNet: 3584); each rank
            keeps ``queue_length // world_size`` past embeddings per assignment crop. 0: no queue.

    ``forward(embeddings, prototypes)``:
        embeddings: list of the crops' L2-normalised embeddings, each (B, d), all with the
            same B (the assignment crops first, by convention: 2 x 224 px then 6 x 96 px);
        prototypes: the (K, d) prototype weight, rows L2-normalised by the caller.
        Returns ``{"loss", "queue_used"}``: ``queue_used`` is 1.0 when the codes of this
        step were computed with the queue, else 0.0 (a detached scalar for logging).
        Gradients flow into the embeddings and the prototypes through the predictions;
        the codes are constants. Computed in float32 even under autocast.

    Queue rule (as in official SwAV): the queue holds the newest embeddings first and is
    updated with this step's assignment-crop embeddings on every call in training mode
    (``.eval()`` leaves it untouched). It joins the Sinkhorn once it is full, i.e. from the
    step after the one that fills it (official SwAV tests that the last slot is non-zero),
    and the scores of queued embeddings are recomputed with the current prototypes. The
    queue and its fill count are part of ``state_dict()`` and differ between ranks, so
    save one per rank and keep this module outside DDP's buffer broadcasting.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        crops_for_assign: Sequence[int] = (0, 1),
        queue_length: int = 0,
    ) -> None:
        super().__init__()
        if temperature <= 0 or epsilon <= 0:
            raise ValueError(f"temperature and epsilon must be > 0, got {temperature} and {epsilon}")
        if not isinstance(sinkhorn_iterations, int) or sinkhorn_iterations < 0:
            raise ValueError(f"sinkhorn_iterations must be a non-negative integer, got {sinkhorn_iterations!r}")
        crops_for_assign = tuple(int(c) for c in crops_for_assign)
        if not crops_for_assign or min(crops_for_assign) < 0 or len(set(crops_for_assign)) != len(crops_for_assign):
            raise ValueError(f"crops_for_assign must be distinct non-negative crop indices, got {crops_for_assign}")
        if queue_length < 0:
            raise ValueError(f"queue_length must be >= 0 (0 disables the queue), got {queue_length}")
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = sinkhorn_iterations
        self.crops_for_assign = crops_for_assign
        self.queue_length = int(queue_length)
        # (n_assign, queue_length // world_size, d), newest first; allocated on the first
        # call, once the embedding size, device and world size are known.
        self.register_buffer("queue", torch.zeros(0))
        self.queue_filled = 0  # rows of the per-rank queue that hold embeddings

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, epsilon={self.epsilon}, "
                f"sinkhorn_iterations={self.sinkhorn_iterations}, "
                f"crops_for_assign={self.crops_for_assign}, queue_length={self.queue_length}")

    # the fill count travels with the queue in state_dict()
    def get_extra_state(self) -> dict:
        return {"queue_filled": self.queue_filled}

    def set_extra_state(self, state: dict) -> None:
        self.queue_filled = int(state["queue_filled"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The queue is allocated lazily: adopt the saved shape before the copy.
        key = prefix + "queue"
        if key in state_dict:
            self.queue = torch.zeros_like(state_dict[key], device=self.queue.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _per_rank_queue_length(self) -> int:
        ranks = world_size()
        if self.queue_length % ranks:
            raise ValueError(f"queue_length={self.queue_length} must be divisible by the world size "
                             f"({ranks}); official SwAV rounds it down to a multiple of the global batch")
        return self.queue_length // ranks

    def _queue_ready(self, dim: int, device: torch.device) -> bool:
        """Allocate the queue if needed; True when it is full and joins the Sinkhorn."""
        length = self._per_rank_queue_length()
        shape = (len(self.crops_for_assign), length, dim)
        if self.queue.numel() == 0:
            self.queue = torch.zeros(shape, device=device)
            self.queue_filled = 0
        elif self.queue.shape != shape:
            raise ValueError(f"the stored queue has shape {tuple(self.queue.shape)} but this run needs {shape} "
                             "(assignment crops, queue_length // world_size, d); a queue saved with another "
                             "world size or embedding size cannot be reused: start with a fresh SwAVLoss")
        return self.queue_filled >= length

    @torch.no_grad()
    def _push(self, assignment_embeddings: list[torch.Tensor]) -> None:
        length = self.queue.shape[1]
        for i, embedding in enumerate(assignment_embeddings):
            self.queue[i] = torch.cat((embedding.detach().float(), self.queue[i]))[:length]
        self.queue_filled = min(length, self.queue_filled + assignment_embeddings[0].shape[0])

    def forward(self, embeddings: Sequence[torch.Tensor], prototypes: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(embeddings, torch.Tensor) or len(embeddings) < 2:
            raise ValueError("embeddings must be a list of at least two (B, d) crop embeddings "
                             "(split the concatenated crops with torch.chunk or tensor.split(B))")
        n_crops = len(embeddings)
        if max(self.crops_for_assign) >= n_crops:
            raise ValueError(f"crops_for_assign={self.crops_for_assign} indexes crops that do not exist: "
                             f"only {n_crops} crop embeddings were passed")
        for index, crop in enumerate(embeddings):
            check_matrix(crop, f"embeddings[{index}]")
            if crop.shape != embeddings[0].shape:
                raise ValueError(f"all crops need the same (B, d) shape, got {tuple(embeddings[0].shape)} "
                                 f"for crop 0 and {tuple(crop.shape)} for crop {index}")
        check_matrix(prototypes, "prototypes")
        batch, dim = embeddings[0].shape
        if prototypes.shape[1] != dim:
            raise ValueError(f"prototypes must be (K, d={dim}) to match the embeddings, got {tuple(prototypes.shape)}; "
                             "pass the prototype layer's weight (nn.Linear(d, K).weight)")

        with torch.autocast(device_type=prototypes.device.type, enabled=False):
            prototypes = prototypes.float()
            scores = [crop.float() @ prototypes.t() for crop in embeddings]  # each (B, K)
            use_queue = self.queue_length > 0 and self._queue_ready(dim, prototypes.device)
            loss = 0.0
            for i, crop_id in enumerate(self.crops_for_assign):
                with torch.no_grad():
                    assign_scores = scores[crop_id]
                    if use_queue:
                        assign_scores = torch.cat((self.queue[i] @ prototypes.t(), assign_scores))
                    codes = sinkhorn(assign_scores, self.epsilon, self.sinkhorn_iterations)[-batch:]
                cross_entropy = 0.0
                for other in range(n_crops):
                    if other != crop_id:
                        log_predictions = F.log_softmax(scores[other] / self.temperature, dim=1)
                        cross_entropy = cross_entropy - (codes * log_predictions).sum(dim=1).mean()
                loss = loss + cross_entropy / (n_crops - 1)
            loss = loss / len(self.crops_for_assign)
        if self.queue_length > 0 and self.training:
            self._push([embeddings[c] for c in self.crops_for_assign])
        return {"loss": loss, "queue_used": torch.tensor(float(use_queue), device=loss.device)}
