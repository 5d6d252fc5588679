"""A pretend accelerator on the CPU, to catch device-placement bugs without a GPU.

Code written for ``device="cuda"`` breaks in ways a CPU run never shows: a tensor made on the host
(``torch.full((n,), c)``) meets one on the device, an index tensor stays on the host, ``.numpy()``
is called on a device tensor, a helper moves inputs to ``"cpu"`` while the model is elsewhere.

:func:`fake_accelerator` is a ``TorchFunctionMode`` that makes ``"cuda"`` mean "the CPU, but
tagged": tensors moved or created there are CPU tensors of the subclass :class:`OnDevice`,
which reports ``device == cuda``. Inside the mode, as on a real GPU,

* an operation that mixes a device tensor with a host tensor of one or more dimensions raises
  :class:`DeviceMismatch` (0-dimensional host tensors are allowed, as CUDA allows them);
* ``.numpy()`` / ``np.asarray`` on a device tensor raises; ``.cpu()`` / ``.to("cpu")`` return a
  plain host tensor; ``.item()`` and ``.tolist()`` work (they synchronise on a real GPU);
* ``nn.Module.to("cuda")`` moves every parameter and buffer to the device.

Everything is computed on the CPU, so results equal a CPU run's: a test can compare them.
As on CUDA, a device tensor may be indexed with a host index tensor (``t[idx]``, ``t[idx] = v``).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("cuda")
_FACTORIES = {
    torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.linspace,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.eye, torch.zeros_like, torch.ones_like,
    torch.full_like, torch.empty_like, torch.rand_like, torch.randn_like,
}


class DeviceMismatch(RuntimeError):
    """Raised where a real accelerator would fail: host and device tensors mixed, or ``.numpy()``."""


class OnDevice(torch.Tensor):
    """A CPU tensor that stands for a tensor on the pretend accelerator."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return FAKE

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        with torch._C.DisableTorchFunctionSubclass():
            plain = self.as_subclass(torch.Tensor)
        copied = _wrap(copy.deepcopy(plain, memo))
        memo[id(self)] = copied
        return copied


def _is_fake(device) -> bool:
    if device is None:
        return False
    try:
        return torch.device(device).type == FAKE.type
    except (RuntimeError, TypeError):
        return False


def _wrap(t):
    return t.as_subclass(OnDevice) if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice) else t


def _unwrap(t):
    if isinstance(t, OnDevice):
        with torch._C.DisableTorchFunctionSubclass():
            return t.as_subclass(torch.Tensor)
    return t


def _split_to_args(args, kwargs):
    """A ``.to(...)`` call's target device (or None) and its other positional arguments (a tensor
    argument, ``.to(other)``, contributes its device and its dtype)."""
    device, rest = kwargs.get("device"), []
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            device = a
        elif isinstance(a, torch.Tensor):
            device = a.device
            rest.append(a.dtype)
        else:
            rest.append(a)
    return device, tuple(rest)


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        # factories asked for the device
        if func in _FACTORIES and _is_fake(kwargs.get("device")):
            kwargs["device"] = "cpu"
            return _wrap(func(*args, **kwargs))
        # moves
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            if func is torch.Tensor.cuda:
                return _wrap(_unwrap(args[0]))
            if func is torch.Tensor.cpu:
                return _unwrap(args[0])
            target, rest = _split_to_args(args, kwargs)
            if target is not None:
                kwargs.pop("device", None)
                moved = _unwrap(args[0]).to("cpu", *rest, **kwargs)
                return _wrap(moved) if _is_fake(target) else moved
            if isinstance(args[0], OnDevice):  # dtype-only .to keeps the device
                return _wrap(_unwrap(args[0]).to(*args[1:], **kwargs))
        if name in ("numpy", "__array__") and isinstance(args[0], OnDevice):
            raise DeviceMismatch(f".{name}() on a tensor on the accelerator: move it to the CPU first (.cpu())")
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        on_device = [t for t in tensors if isinstance(t, OnDevice)]
        on_host = [t for t in tensors if not isinstance(t, OnDevice) and t.dim() > 0]
        private = (name.startswith("_") and not name.startswith("__")) or name in ("__get__", "__set__", "__setstate__", "__deepcopy__", "__reduce_ex__", "__copy__")
        # CUDA accepts host index tensors in t[idx] and t[idx] = v
        private = private or (name in ("__getitem__", "__setitem__") and isinstance(args[0], OnDevice))
        if on_device and on_host and not private:
            shapes = ", ".join(f"{'device' if isinstance(t, OnDevice) else 'host'} {tuple(t.shape)}" for t in tensors)
            raise DeviceMismatch(f"{name or func} mixes accelerator and host tensors ({shapes})")
        out = func(*args, **kwargs)
        if on_device:
            out = tree_map(_wrap, out)
        return out


@contextlib.contextmanager
def fake_accelerator() -> Iterator[torch.device]:
    """Within this block ``"cuda"`` is a pretend accelerator on the CPU (see the module docstring)."""
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        with _Mode():
            yield FAKE
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
