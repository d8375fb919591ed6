"""Measured sensitivity: how far truncating one layer moves the model's predictions.

Spectral energy prices every layer alike: a layer keeping 60% of its squared singular
values counts the same whether it sits where the network is robust or where it is not.
``output_sensitivity`` measures it instead, on real images: for each candidate layer and
rank, that layer alone is replaced by its factorized form at rank ``r`` (as
``trp_zoo.decompose`` builds it) and the mean KL divergence of the model's softmax output from
the dense model's is recorded. The selector can then minimize the summed divergence, a
first-order (layers assumed independent) estimate of what the whole plan does to the
predictions. No labels are needed.

Cost: one forward pass over the images per (layer, rank) option, so it suits small
inputs on a CPU or any input on a GPU; ``images`` sets the trade-off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..lowrank.linears import effective_weight, layer_scheme
from ..lowrank.schemes import get_scheme
from ..lowrank.svd import svd
from ..modules import set_submodule
from .decompose import factorize_layer


def _log_probs(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    outs = []
    for start in range(0, len(images), batch_size):
        out = model(images[start : start + batch_size])
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise ValueError(
                "sensitivity needs a classifier: the model must return (batch, classes) "
                f"logits, got {type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}"
            )
        outs.append(F.log_softmax(out.double(), dim=-1))
    return torch.cat(outs)


@torch.no_grad()
def output_sensitivity(
    model: nn.Module,
    scheme: str,
    ranks: Mapping[str, Iterable[int]],
    images: Tensor,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, dict[int, float]]:
    """``{layer: {rank: mean KL(dense || layer truncated to rank)}}`` over ``images``.

    ``ranks`` names the conv and Linear layers and the ranks to try (a conv is factorized
    by ``scheme``, a Linear by the channel scheme); ``images`` is a preprocessed
    ``(N, C, H, W)`` batch as the model expects. The model is left as it was.
    """
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty (N, C, H, W) batch, got {tuple(images.shape)}"
        )
    sch = get_scheme(scheme)
    was_training = model.training
    model.eval()
    modules = dict(model.named_modules())
    missing = [name for name in ranks if not isinstance(modules.get(name), (nn.Conv2d, nn.Linear))]
    if missing:
        raise ValueError(f"not conv or linear layers of this model: {', '.join(missing)}")
    dense = _log_probs(model, images, batch_size)
    wanted = {name: sorted({int(r) for r in rs}) for name, rs in ranks.items()}
    result: dict[str, dict[int, float]] = {name: {} for name in wanted}
    total = sum(len(rs) for rs in wanted.values())
    bar = tqdm(total=total, desc="sensitivity", disable=not progress, leave=False)
    try:
        for name, layer_ranks in wanted.items():
            layer = modules[name]
            assert isinstance(layer, (nn.Conv2d, nn.Linear))
            lsch = layer_scheme(layer, sch)
            factors = svd(lsch.to_matrix(effective_weight(layer)))
            for rank in layer_ranks:
                set_submodule(model, name, factorize_layer(layer, lsch, factors, rank))
                try:
                    out = _log_probs(model, images, batch_size)
                finally:
                    set_submodule(model, name, layer)
                kl = F.kl_div(out, dense, log_target=True, reduction="batchmean")
                result[name][rank] = max(float(kl), 0.0)
                bar.update()
    finally:
        bar.close()
        model.train(was_training)
    return result
