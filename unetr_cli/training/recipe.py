"""The reference recipe's optimiser and loss, built from the settings (the benchmarks use them too)."""

from __future__ import annotations

import torch

from unetr_cli.settings import Settings


def optimizer_for(model: torch.nn.Module, settings: Settings) -> torch.optim.Optimizer:
    """AdamW (the reference), Adam or Nesterov SGD over the trainable parameters."""
    opt = settings.optimisation
    params = [p for p in model.parameters() if p.requires_grad]
    if opt.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.optimizer == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(
        params, lr=opt.lr, momentum=opt.momentum, nesterov=True, weight_decay=opt.weight_decay
    )


def loss_for(settings: Settings):
    """The reference loss: Dice + cross-entropy on softmax outputs, squared denominators."""
    from monai.losses import DiceCELoss

    opt = settings.optimisation
    return DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        smooth_nr=opt.loss_smooth_nr,
        smooth_dr=opt.loss_smooth_dr,
    )
