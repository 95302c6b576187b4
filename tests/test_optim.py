"""psa_core.optim: the four parameter groups and the poly schedule (docs/design.md §1.1)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from psa_core.models import build_model
from psa_core.optim import GROUP_SPECS, PolyDecay, param_groups, poly_lr_lambda, poly_scheduler


class Toy(nn.Module):
    """A pretrained conv + frozen conv + BN, and new conv / GroupNorm layers."""

    def __init__(self) -> None:
        super().__init__()
        self.old = nn.Conv2d(3, 4, 3)  # pretrained weight + bias
        self.frozen = nn.Conv2d(4, 4, 1)  # requires_grad False: left out
        self.bn = nn.BatchNorm2d(4)  # frozen like in PSA
        self.new = nn.Conv2d(4, 2, 1, bias=False)
        self.new_norm = nn.GroupNorm(2, 2)  # GN scale counts as a weight
        for p in [*self.frozen.parameters(), *self.bn.parameters()]:
            p.requires_grad_(False)

    def new_modules(self) -> list[nn.Module]:
        return [self.new, self.new_norm]


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_group_membership_and_multipliers():
    toy = Toy()
    groups = param_groups(toy, lr=0.01, weight_decay=5e-4)
    assert [g["name"] for g in groups] == [
        "pretrained_weight",
        "pretrained_bias",
        "new_weight",
        "new_bias",
    ]
    by_name = {g["name"]: g for g in groups}
    assert _ids(by_name["pretrained_weight"]["params"]) == _ids([toy.old.weight])
    assert _ids(by_name["pretrained_bias"]["params"]) == _ids([toy.old.bias])
    assert _ids(by_name["new_weight"]["params"]) == _ids([toy.new.weight, toy.new_norm.weight])
    assert _ids(by_name["new_bias"]["params"]) == _ids([toy.new_norm.bias])
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert [g["lr_mult"] for g in groups] == [m for _, m, _ in GROUP_SPECS]


def test_groups_of_the_vgg_affinity_net():
    model = build_model("vgg16d", "affinity")
    by_name = {g["name"]: g for g in param_groups(model, lr=0.1, weight_decay=5e-4)}
    backbone = model.backbone
    trained_convs = ["conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3"]
    trained_convs += ["conv5_1", "conv5_2", "conv5_3", "fc6", "fc7"]
    head = model.head
    # The reference's from_scratch_layers are the four convs only: its GroupNorm
    # layers train in the pretrained groups (lr for scales, 2*lr for shifts).
    gn = [head.gn8_3, head.gn8_4, head.gn8_5]
    assert _ids(by_name["pretrained_weight"]["params"]) == _ids(
        [getattr(backbone, n).weight for n in trained_convs] + [g.weight for g in gn]
    )
    assert _ids(by_name["pretrained_bias"]["params"]) == _ids(
        [getattr(backbone, n).bias for n in trained_convs] + [g.bias for g in gn]
    )
    assert _ids(by_name["new_weight"]["params"]) == _ids(
        [head.f8_3.weight, head.f8_4.weight, head.f8_5.weight, head.f9.weight]
    )
    assert by_name["new_bias"]["params"] == []


def test_empty_groups_are_kept_and_sgd_accepts_them():
    model = build_model("tiny", "cam")  # fc8 has no bias: the new-bias group is empty
    groups = param_groups(model, lr=0.1, weight_decay=1e-4)
    assert len(groups) == 4 and groups[3]["params"] == []
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    every = [p for g in groups for p in g["params"]]
    assert (
        len(every) == len(set(map(id, every))) == sum(p.requires_grad for p in model.parameters())
    )


def test_poly_lambda_formula():
    decay = poly_lr_lambda(100)
    assert decay(0) == 1.0
    assert decay(50) == pytest.approx(0.5**0.9)
    assert decay(99) == pytest.approx(0.01**0.9)
    assert decay(100) == 0.0 and decay(150) == 0.0
    assert PolyDecay(10, power=2.0)(5) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        PolyDecay(0)


def test_poly_scheduler_per_group_and_resume():
    toy = Toy()
    optimizer = torch.optim.SGD(param_groups(toy, lr=0.1, weight_decay=5e-4), lr=0.1)
    scheduler = poly_scheduler(optimizer, max_step=20)
    base = [0.1, 0.2, 1.0, 2.0]
    for step in range(12):
        # the step-th optimizer step runs at base * (1 - step / max_step)^0.9
        expected = [b * (1 - step / 20) ** 0.9 for b in base]
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(expected)
        optimizer.step()
        scheduler.step()

    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["scheduler"]["lr_lambdas"][0] == {"max_step": 20, "power": 0.9}

    # resume order: optimizer, scheduler, then the optimizer's state, then the scheduler's
    optimizer2 = torch.optim.SGD(param_groups(Toy(), lr=0.1, weight_decay=5e-4), lr=0.1)
    scheduler2 = poly_scheduler(optimizer2, max_step=20)
    optimizer2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["scheduler"])
    expected = [b * (1 - 12 / 20) ** 0.9 for b in base]
    assert [g["lr"] for g in optimizer2.param_groups] == pytest.approx(expected)
    optimizer2.step()
    scheduler2.step()
    expected = [b * (1 - 13 / 20) ** 0.9 for b in base]
    assert [g["lr"] for g in optimizer2.param_groups] == pytest.approx(expected)
