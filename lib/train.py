"""Training and evaluation loops shared by the chapters (plain torch, CPU-friendly).

``fit`` trains any model on tensors with Adam (optionally weight decay and early stopping on a
validation set), shuffling with its own seeded generator so that a run is reproducible. Use it
through :func:`lib.cache.cached_model` so that a chapter trains each model once.
Used by: CEM chapter (classifier, auto-encoder), CXPlain chapter (ResNet-20, explainers).
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from lib.progress import progress_bar

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _batches(n: int, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str = "cpu") -> torch.Tensor:
    """Model outputs for ``x`` in eval mode, batched; returned on the CPU (inputs are cast to the
    model's floating dtype)."""
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and x.is_floating_point() else x.dtype
    out = torch.cat([model(x[i : i + batch_size].to(device=device, dtype=dtype)).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, device: str = "cpu") -> float:
    """Top-1 accuracy of a logit-returning classifier."""
    return (predict(model, x, batch_size, device).argmax(1) == y).float().mean().item()


def evaluate_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, batch_size: int = 512, device: str = "cpu") -> float:
    """Mean of ``loss_fn`` over ``(x, y)`` in eval mode (loss_fn must average over its batch)."""
    out = predict(model, x, batch_size, device)
    return float(loss_fn(out, y))


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    patience: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    desc: str = "train",
    progress: bool = True,
    dtype: torch.dtype | None = None,
    optimizer: str = "adam",
    momentum: float = 0.0,
    lr_decay: float | None = None,
) -> dict:
    """Train ``model`` in place with Adam; return a history of plain values.

    With a validation set, the validation loss is recorded each epoch; with ``patience``, training
    stops after that many epochs without improvement and the best weights are restored (early
    stopping as in the CXPlain paper's target model). ``y`` is the target for ``loss_fn``; for an
    auto-encoder pass ``y=x``.

    ``dtype``: train in this floating dtype (the model is converted and left in it; floating
    inputs and targets are cast per batch). Small CPU models trained in ``torch.float64`` give
    the same weights on every x86 CPU to many digits, where float32 training amplifies the last-bit
    differences between vector kernels (AVX2 vs AVX-512) into different models.

    ``optimizer``: "adam" (default) or "sgd" (with ``momentum``); ``lr_decay``: multiply the
    learning rate by this factor after every epoch (torch's StepLR with step 1, as in the GCE
    authors' classifier training).
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if patience is not None and x_val is None:
        raise ValueError("early stopping (patience) needs a validation set")
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=lr_decay) if lr_decay is not None else None
    gen = torch.Generator().manual_seed(seed)
    history: dict = {"train_loss": [], "val_loss": [], "epochs_run": 0, "best_epoch": None}
    best_val, best_state, stale = math.inf, None, 0
    n_batches = math.ceil(len(x) / batch_size)
    bar = progress_bar(total=epochs * n_batches, desc=desc, enabled=progress, leave=False, mininterval=1.0)
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for idx in _batches(len(x), batch_size, gen):
            xb, yb = cast(x[idx]), cast(y[idx])
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
            bar.update(1)
        history["train_loss"].append(total / count)
        history["epochs_run"] = epoch + 1
        if sched is not None:
            sched.step()
        if x_val is not None:
            val = evaluate_loss(model, cast(x_val), cast(y_val), loss_fn, device=device)
            history["val_loss"].append(val)
            bar.set_postfix(train=f"{total / count:.4f}", val=f"{val:.4f}")
            if val < best_val:
                best_val, best_state, stale = val, copy.deepcopy(model.state_dict()), 0
                history["best_epoch"] = epoch + 1
            else:
                stale += 1
                if patience is not None and stale >= patience:
                    break
        else:
            bar.set_postfix(train=f"{total / count:.4f}")
    bar.close()
    if patience is not None and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
