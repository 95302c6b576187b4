"""Parameter groups and the poly learning-rate schedule of PSA (docs/design.md §1.1).

Four groups, always in this order (empty ones are kept, so the layout of an
optimizer's state dict does not depend on the model):

=====================  ========  =============  ============================
group                  lr        weight decay   parameters
=====================  ========  =============  ============================
``pretrained_weight``  lr        wd             backbone weights
``pretrained_bias``    2·lr      0              backbone biases
``new_weight``         10·lr     wd             weights of `model.new_modules()`
``new_bias``           20·lr     0              biases of `model.new_modules()`
=====================  ========  =============  ============================

"Weight" is every trainable parameter not named `bias`, so GroupNorm scales
count as weights of their group, as in the reference. Parameters with
`requires_grad=False` (frozen layers, every BatchNorm) are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from psa_core.settings import TrainSettings

GROUP_SPECS: tuple[tuple[str, float, bool], ...] = (
    ("pretrained_weight", 1.0, True),
    ("pretrained_bias", 2.0, False),
    ("new_weight", 10.0, True),
    ("new_bias", 20.0, False),
)
"""(name, learning-rate multiplier, weight decay applied) of the four groups."""

POLY_POWER = TrainSettings.poly_power


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """The four SGD parameter groups of PSA for `model`.

    Args:
        model: a network with `new_modules()` (see `psa_core.models`).
        lr: base learning rate (pretrained weights).
        weight_decay: applied to weights, never to biases.

    Returns:
        Four dicts with keys "params", "lr", "weight_decay", "name",
        "lr_mult", in the order of `GROUP_SPECS` (some may have no params).
    """
    new_ids = {id(p) for module in model.new_modules() for p in module.parameters()}
    buckets: dict[str, list[torch.nn.Parameter]] = {name: [] for name, _, _ in GROUP_SPECS}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind = "bias" if name.rsplit(".", 1)[-1] == "bias" else "weight"
        origin = "new" if id(param) in new_ids else "pretrained"
        buckets[f"{origin}_{kind}"].append(param)
    return [
        {
            "params": buckets[name],
            "lr": lr * mult,
            "weight_decay": weight_decay if decay else 0.0,
            "name": name,
            "lr_mult": mult,
        }
        for name, mult, decay in GROUP_SPECS
    ]


class PolyDecay:
    """Learning-rate factor (1 − step / max_step)^power, 0 from max_step on.

    A callable object rather than a closure so that `LambdaLR.state_dict()`
    records max_step and power (it stores the `__dict__` of callable objects).
    """

    def __init__(self, max_step: int, power: float = POLY_POWER) -> None:
        if max_step < 1:
            raise ValueError(f"max_step {max_step}: must be at least 1")
        self.max_step = max_step
        self.power = power

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.max_step) ** self.power


def poly_lr_lambda(max_step: int, power: float = POLY_POWER) -> PolyDecay:
    """The poly factor as a function of the step, for `torch.optim.lr_scheduler.LambdaLR`."""
    return PolyDecay(max_step, power)


def poly_scheduler(
    optimizer: torch.optim.Optimizer, max_step: int, power: float = POLY_POWER
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR giving each group lr_group · (1 − step / max_step)^power.

    Call `scheduler.step()` once after every `optimizer.step()`: the k-th
    optimizer step (k = 0, 1, …) then runs at factor (1 − k / max_step)^power,
    as PSA's PolyOptimizer does. Its `state_dict()` goes into training
    checkpoints for resume. To resume, build the optimizer and this scheduler
    first, then load the optimizer's state dict, then the scheduler's (the
    constructor resets the groups' lr, the optimizer state restores it).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=poly_lr_lambda(max_step, power))
