"""A simulated CUDA device for the tests, on a CPU-only torch build.

:func:`activate` makes ``torch.cuda.is_available()`` true and gives every tensor created "on
cuda" the class :class:`SimulatedCudaTensor`: a plain (non-wrapper) ``torch.Tensor`` subclass
over CPU storage whose ``device`` says ``cuda:0`` and whose ``__torch_dispatch__`` sees every
ATen operation, including the ones autograd runs in backward passes. An operation that mixes a
simulated-CUDA tensor with a CPU tensor raises ``SimulatedDeviceError`` (a ``RuntimeError``)
naming the operation, as a real GPU would; CPU tensors of zero dimensions (scalars) are allowed
as inputs, as on a GPU, and so are CPU index tensors and cross-device ``copy_``.

The pieces:

* :class:`SimulatedCudaTensor`: the tensor (values on the CPU, ``device`` = ``cuda:0``);
* :class:`_Mode`, a ``TorchFunctionMode``: ``device="cuda"`` in any torch call (factories,
  ``*_like``, ``new_*``), ``.to``/``.cuda``/``.cpu``, ``pin_memory``, ``numpy``;
* patches of ``torch.cuda`` (availability, synchronize, events, streams, ``mem_get_info``, RNG
  states), ``torch.Generator`` (``device="cuda"`` gives a generator that says it is on cuda and
  refuses CPU factories), ``torch.autocast("cuda")`` (runs the CPU autocast), ``torch.save`` and
  ``torch.load`` (``map_location`` and the storage location tags ``cuda:0``).

The simulation finds device-placement bugs (a tensor left on the CPU); it does not model
asynchrony, streams or memory, and it computes exactly the CPU's values.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._mode_utils import no_dispatch
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["SimulatedCudaTensor", "SimulatedDeviceError", "activate", "deactivate", "is_active",
           "simulated", "is_simulated", "ENV_VAR"]

ENV_VAR = "MONDEQ_SIMULATE_CUDA"
CUDA0 = torch.device("cuda", 0)
FREE_BYTES = 16 * 2**30
"""What ``torch.cuda.mem_get_info`` reports free (tests may lower it to force pinned paths)."""
TOTAL_BYTES = 80 * 2**30


class SimulatedDeviceError(RuntimeError):
    """A simulated-CUDA operation met a CPU tensor (or a CPU-only operation met a CUDA tensor)."""


_aten = torch.ops.aten
# operations that legitimately take tensors on two devices
_CROSS_DEVICE_OK = {_aten.copy_.default, _aten._to_copy.default, _aten.copy.default,
                    _aten._copy_from.default, _aten._copy_from_and_resize.default,
                    _aten.lift_fresh.default, _aten.set_.source_Tensor}
# operations whose index arguments may stay on the CPU (advanced indexing moves them)
_INDEX_OPS = {_aten.index.Tensor, _aten.index_put_.default, _aten.index_put.default,
              _aten._index_put_impl_.default, _aten._unsafe_index.Tensor}
# operations that refuse even 0-d CPU tensors among tensor-list inputs
_STRICT_LIST_OPS = {_aten.cat.default, _aten.stack.default}


def _describe(t: torch.Tensor) -> str:
    return f"cpu tensor of shape {tuple(t.shape)} and dtype {t.dtype}"


class SimulatedCudaTensor(torch.Tensor):
    """A CPU tensor that reports itself as ``cuda:0`` and refuses to meet CPU tensors."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA0

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    @property
    def is_cpu(self) -> bool:  # type: ignore[override]
        return False

    def get_device(self) -> int:  # type: ignore[override]
        return 0

    def __format__(self, spec: str) -> str:
        if self.dim() == 0:
            return self.item().__format__(spec)
        return object.__format__(self, spec)

    def __repr__(self, **kwargs: Any) -> str:  # type: ignore[override]
        text = repr(_plain_alias(self))
        return text[:-1] + ", device='cuda:0')" if text.endswith(")") else text

    def __reduce_ex__(self, protocol):
        # pickled (torch.save, deepcopy of containers) as a plain tensor; torch.save tags its
        # storage ``cuda:0`` (see _save) and torch.load maps it back
        _pickled_storages.add(self.untyped_storage().data_ptr())
        return _plain_alias(self).__reduce_ex__(protocol)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        _check_devices(func, args, kwargs)
        with no_dispatch():
            out = func(*args, **kwargs)
        return tree_map(_wrap_new, out)


def _check_devices(func, args, kwargs) -> None:
    if func in _CROSS_DEVICE_OK:
        return
    schema_args = func._schema.arguments
    mutated_first = bool(schema_args) and schema_args[0].alias_info is not None and \
        schema_args[0].alias_info.is_write
    for position, value in enumerate(list(args) + list(kwargs.values())):
        if func in _INDEX_OPS and position == 1:
            continue  # the indices
        strict_list = isinstance(value, (list, tuple)) and func in _STRICT_LIST_OPS
        strict_self = position == 0 and mutated_first
        for t in tree_flatten(value)[0]:
            if not isinstance(t, torch.Tensor) or is_simulated(t):
                continue
            if t.dim() == 0 and not strict_list and not strict_self:
                continue  # a CPU scalar, as a GPU kernel accepts it
            raise SimulatedDeviceError(
                f"simulated CUDA: Expected all tensors to be on the same device, but found at least "
                f"two devices, cuda:0 and cpu! (operation {func}: a {_describe(t)} meets cuda "
                f"tensors{'; it is the output of the in-place operation' if strict_self else ''})")


_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _innermost(t: torch.Tensor) -> torch.Tensor:
    """The tensor inside torch.func's wrappers (whose Python class is plain ``Tensor``)."""
    while _is_wrapped(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def _wrap_new(t):
    if isinstance(t, torch.Tensor) and not isinstance(t, SimulatedCudaTensor) and not _is_wrapped(t):
        return torch.Tensor._make_subclass(SimulatedCudaTensor, t)
    return t


def _plain_alias(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor sharing ``t``'s storage (no autograd history)."""
    with no_dispatch():
        return torch.Tensor._make_subclass(torch.Tensor, t.detach())


def is_simulated(t: Any) -> bool:
    """Whether ``t`` lives on the simulated device (looking inside torch.func's wrappers)."""
    if isinstance(t, SimulatedCudaTensor):
        return True
    return isinstance(t, torch.Tensor) and _is_wrapped(t) and isinstance(_innermost(t), SimulatedCudaTensor)


_base_device = torch._C.TensorBase.device
_base_is_cuda = torch._C.TensorBase.is_cuda
_base_is_cpu = torch._C.TensorBase.is_cpu


def _plain_device(self) -> torch.device:
    """``Tensor.device`` under the simulation: a torch.func wrapper reports its inner tensor's."""
    if _is_wrapped(self):
        return _innermost(self).device
    return _base_device.__get__(self)


def _plain_is_cuda(self) -> bool:
    return _plain_device(self).type == "cuda"


def _plain_is_cpu(self) -> bool:
    return _plain_device(self).type == "cpu"


# ----------------------------------------------------------------- moving between devices

class _ToCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        with no_dispatch():
            copy = x.detach().clone()
        return torch.Tensor._make_subclass(SimulatedCudaTensor, copy)

    @staticmethod
    def backward(ctx, grad):
        return _to_cpu(grad) if is_simulated(grad) else grad


class _ToCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        with no_dispatch():
            return torch.Tensor._make_subclass(torch.Tensor, x.detach().clone())

    @staticmethod
    def backward(ctx, grad):
        return grad if is_simulated(grad) else _to_cuda(grad)


def _to_cuda(t: torch.Tensor) -> torch.Tensor:
    if is_simulated(t):
        return t
    if t.requires_grad and torch.is_grad_enabled():
        return _ToCuda.apply(t)
    return torch.Tensor._make_subclass(SimulatedCudaTensor, t.detach().clone())


def _to_cpu(t: torch.Tensor) -> torch.Tensor:
    if not is_simulated(t):
        return t
    if t.requires_grad and torch.is_grad_enabled():
        return _ToCpu.apply(t)
    with no_dispatch():
        return torch.Tensor._make_subclass(torch.Tensor, t.detach().clone())


def _as_kind(t: torch.Tensor, cuda: bool) -> torch.Tensor:
    """``t`` (freshly made, no history) as a simulated-CUDA or a plain CPU tensor."""
    if cuda == is_simulated(t):
        return t
    if cuda:
        return torch.Tensor._make_subclass(SimulatedCudaTensor, t, t.requires_grad)
    with no_dispatch():
        return torch.Tensor._make_subclass(torch.Tensor, t, t.requires_grad)


def _device_type(device) -> str | None:
    if device is None:
        return None
    if isinstance(device, int):
        return "cuda"
    return torch.device(device).type


def _any_simulated(args, kwargs) -> bool:
    return any(is_simulated(t) for t in tree_flatten((args, kwargs))[0])


# --------------------------------------------------------------------------- the mode

_PINNED = "_simulated_pinned"  # attribute marking a tensor "pinned" (page-locked)
_pickled_storages: set[int] = set()

T = torch.Tensor


def _tensor_to(func, args, kwargs):
    self, rest = args[0], args[1:]
    kwargs = dict(kwargs)
    copy = kwargs.pop("copy", False)
    if rest and isinstance(rest[0], torch.Tensor):
        other = rest[0]
        device, dtype = other.device, other.dtype
        non_blocking = rest[1] if len(rest) > 1 else kwargs.get("non_blocking", False)
        memory_format = None
    else:
        device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **kwargs)
    out = self
    if dtype is not None or memory_format is not None or copy:
        options = {"dtype": dtype} if dtype is not None else {}
        if memory_format is not None:
            options["memory_format"] = memory_format
        out = T.to(self, copy=copy, **options)
    kind = _device_type(device)
    if kind == "cuda":
        return _to_cuda(out)
    if kind == "cpu":
        return _to_cpu(out)
    if device is not None:
        return T.to(out, device)
    return out


def _pin_memory(self, *args, **kwargs):
    if is_simulated(self):
        raise SimulatedDeviceError("simulated CUDA: cannot pin 'torch.cuda.FloatTensor': only dense "
                                   "CPU tensors can be pinned (operation Tensor.pin_memory)")
    if getattr(self, _PINNED, False):
        return self
    out = self.clone()
    setattr(out, _PINNED, True)
    return out


def _numpy(self, *args, **kwargs):
    if is_simulated(self):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy "
                        "the tensor to host memory first. (simulated CUDA, operation Tensor.numpy)")
    return T.numpy(self, *args, **kwargs)


def _array(self, *args, **kwargs):
    if is_simulated(self):
        _numpy(self)
    return T.__array__(self, *args, **kwargs)


_SPECIAL: dict[Callable, Callable] = {
    T.to: _tensor_to,
    T.cuda: lambda func, args, kwargs: _to_cuda(args[0]),
    T.cpu: lambda func, args, kwargs: _to_cpu(args[0]),
    T.pin_memory: lambda func, args, kwargs: _pin_memory(*args, **kwargs),
    T.is_pinned: lambda func, args, kwargs: getattr(args[0], _PINNED, False),
    T.numpy: lambda func, args, kwargs: _numpy(*args, **kwargs),
    T.__array__: lambda func, args, kwargs: _array(*args, **kwargs),
    T.get_device: lambda func, args, kwargs: 0 if is_simulated(args[0]) else -1,
    T.tolist: lambda func, args, kwargs: (_plain_alias(args[0]).tolist()
                                          if isinstance(args[0], SimulatedCudaTensor) else func(*args, **kwargs)),
    # parses a device without making a tensor (Module.to): keep "cuda"
    torch._C._nn._parse_to: lambda func, args, kwargs: func(*args, **kwargs),
}


class _Mode(TorchFunctionMode):
    """Routes ``device="cuda"`` (and moves between devices) to the simulated tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        special = _SPECIAL.get(func)
        if special is not None:
            return special(func, args, kwargs)
        if not kwargs or not ("device" in kwargs or "generator" in kwargs or "pin_memory" in kwargs):
            return func(*args, **kwargs)
        kwargs = dict(kwargs)
        pinned = bool(kwargs.pop("pin_memory", False))
        if "device" in kwargs:
            kind = _device_type(kwargs["device"])
            if kind in ("cuda", "cpu"):
                kwargs["device"] = "cpu"
        else:
            kind = "cuda" if _any_simulated(args, kwargs) else None
        generator = kwargs.get("generator")
        if generator is not None:
            target = kind or ("cuda" if _any_simulated(args, {}) else "cpu")
            if generator.device.type != target:
                raise SimulatedDeviceError(
                    f"simulated CUDA: Expected a '{target}' device type for generator but found "
                    f"'{generator.device.type}' (operation {getattr(func, '__name__', func)})")
        if pinned and kind == "cuda":
            raise SimulatedDeviceError("simulated CUDA: only CPU tensors can be pinned")
        if kind in ("cuda", "cpu") and not any(isinstance(t, torch.Tensor) for t in tree_flatten((args, kwargs))[0]):
            with torch._C._DisableFuncTorch():  # a factory: a plain tensor even inside torch.func
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        if kind in ("cuda", "cpu"):
            out = tree_map(lambda t: _as_kind(t, kind == "cuda") if isinstance(t, torch.Tensor) else t,
                           out)
        if pinned and isinstance(out, torch.Tensor):
            setattr(out, _PINNED, True)
        return out


# ------------------------------------------------------------------------ torch.cuda & co

_Generator = torch.Generator


class SimulatedGenerator(_Generator):
    """``torch.Generator`` that accepts ``device="cuda"`` (a CPU generator that says cuda)."""

    def __new__(cls, device: Any = "cpu"):
        kind = _device_type(device) or "cpu"
        if kind not in ("cpu", "cuda"):
            return _Generator(device=device)
        self = super().__new__(cls, device="cpu")
        self._simulated = kind == "cuda"
        return self

    def __init__(self, device: Any = "cpu") -> None:
        pass

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA0 if self._simulated else torch.device("cpu")

    def set_state(self, new_state: torch.Tensor):  # type: ignore[override]
        _check_rng_state(new_state, "Generator.set_state")
        return super().set_state(new_state)

    def __reduce__(self):
        return (SimulatedGenerator, ("cuda" if self._simulated else "cpu",), self.get_state())

    def __setstate__(self, state):
        self.set_state(state)


def _check_rng_state(state: torch.Tensor, what: str) -> None:
    if is_simulated(state):
        raise SimulatedDeviceError(f"simulated CUDA: RNG state must be a torch.ByteTensor on the CPU, "
                                   f"got a cuda tensor (operation {what})")


class _Event:
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.enable_timing = enable_timing
        self._time: float | None = None

    def record(self, stream=None) -> None:
        import time
        self._time = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait(self, stream=None) -> None:
        pass

    def elapsed_time(self, end: "_Event") -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Events were not created with enable_timing=True (simulated CUDA)")
        if self._time is None or end._time is None:
            raise RuntimeError("elapsed_time needs two recorded events (simulated CUDA)")
        return 1000.0 * (end._time - self._time)


class _Stream:
    def __init__(self, device=None, priority: int = 0, **kwargs):
        self.device = CUDA0

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        event = event or _Event()
        event.record()
        return event

    def query(self) -> bool:
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_default_stream = _Stream()


def _get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: Any = "cuda") -> None:
    _check_rng_state(state, "torch.cuda.set_rng_state")
    torch.set_rng_state(state)


_original_set_rng_state = torch.set_rng_state


def _torch_set_rng_state(new_state: torch.Tensor) -> None:
    _check_rng_state(new_state, "torch.set_rng_state")
    _original_set_rng_state(new_state)


def _mem_get_info(device: Any = None) -> tuple[int, int]:
    return int(FREE_BYTES), int(TOTAL_BYTES)


def _set_device(device: Any) -> None:
    index = device if isinstance(device, int) else torch.device(device).index
    if index not in (None, 0):
        raise RuntimeError(f"simulated CUDA has one device (cuda:0), asked for {device}")


_cuda_patches: dict[str, Any] = {
    "is_available": lambda: True,
    "is_initialized": lambda: True,
    "init": lambda: None,
    "device_count": lambda: 1,
    "current_device": lambda: 0,
    "set_device": _set_device,
    "get_device_name": lambda device=None: "simulated CUDA (CPU values)",
    "get_device_capability": lambda device=None: (9, 0),
    "synchronize": lambda device=None: None,
    "Event": _Event,
    "Stream": _Stream,
    "current_stream": lambda device=None: _default_stream,
    "default_stream": lambda device=None: _default_stream,
    "stream": lambda stream=None: contextlib.nullcontext(stream),
    "mem_get_info": _mem_get_info,
    "memory_allocated": lambda device=None: 0,
    "max_memory_allocated": lambda device=None: 0,
    "memory_reserved": lambda device=None: 0,
    "reset_peak_memory_stats": lambda device=None: None,
    "empty_cache": lambda: None,
    "get_rng_state": _get_rng_state,
    "get_rng_state_all": lambda: [_get_rng_state()],
    "set_rng_state": _set_rng_state,
    "set_rng_state_all": lambda states: [_set_rng_state(s) for s in states[:1]] and None,
    "manual_seed": lambda seed: None,
    "manual_seed_all": lambda seed: None,
    "seed": lambda: None,
    "seed_all": lambda: None,
    "set_sync_debug_mode": lambda mode: None,
    "get_sync_debug_mode": lambda: 0,
}


# ---------------------------------------------------------------------------- autocast

_Autocast = torch.amp.autocast_mode.autocast


class _SimulatedAutocast(_Autocast):
    """``torch.autocast("cuda", ...)`` runs CPU autocast (the values are computed on the CPU)."""

    def __init__(self, device_type: str, *args, **kwargs):
        super().__init__("cpu" if device_type == "cuda" else device_type, *args, **kwargs)


_is_autocast_enabled = torch.is_autocast_enabled
_get_autocast_dtype = torch.get_autocast_dtype


def _simulated_is_autocast_enabled(device_type: str | None = None) -> bool:
    if device_type is None or device_type == "cuda":
        return _is_autocast_enabled("cpu")
    return _is_autocast_enabled(device_type)


def _simulated_get_autocast_dtype(device_type: str) -> torch.dtype:
    return _get_autocast_dtype("cpu" if device_type == "cuda" else device_type)


# ------------------------------------------------------------ user code in backward passes

_backward_apply = torch.autograd.function.BackwardCFunction.apply


def _backward_apply_in_mode(self, *args):
    """A custom ``autograd.Function``'s backward runs under the mode even when the backward pass
    was started from inside a Python-level torch function (``Tensor.backward``,
    ``torch.autograd.grad``), during whose call torch pops the mode."""
    mode = _state["mode"] if _state is not None else None
    if mode is None:
        return _backward_apply(self, *args)
    args = _materialized_on_device(self, args)
    if mode in torch.overrides._get_current_function_mode_stack():
        return _backward_apply(self, *args)
    with mode:
        return _backward_apply(self, *args)


def _materialized_on_device(node, grads: tuple) -> tuple:
    """The engine materialises the gradient of an output that got none as zeros made from the
    output's metadata, which the C++ side records as CPU: on a node whose other gradients or
    saved tensors are on the (simulated) device, those zeros belong there too."""
    plain = [g for g in grads if isinstance(g, torch.Tensor) and not is_simulated(g)]
    if not plain:
        return grads
    on_device = any(is_simulated(g) for g in grads)
    if not on_device:
        try:
            on_device = any(is_simulated(t) for t in node.saved_tensors)
        except RuntimeError:
            on_device = False
    if not on_device:
        return grads
    return tuple(_as_kind(g, True) if isinstance(g, torch.Tensor) and not bool(g.any()) else g
                 for g in grads)


# ------------------------------------------------------------------------ save and load

_save, _load = torch.save, torch.load
_location_tag = torch.serialization.location_tag


def _tagging_location(storage) -> str:
    try:
        pointer = storage.data_ptr()
    except Exception:  # noqa: BLE001
        pointer = None
    if pointer is not None and pointer in _pickled_storages:
        return "cuda:0"
    return _location_tag(storage)


def _simulated_save(obj, f, *args, **kwargs):
    _pickled_storages.clear()
    try:
        return _save(obj, f, *args, **kwargs)
    finally:
        _pickled_storages.clear()


def _simulated_load(f, map_location=None, *args, **kwargs):
    to_cuda: set[int] = set()

    def destination(location: str) -> str:
        if map_location is None:
            return location
        if isinstance(map_location, dict):
            return str(map_location.get(location, location))
        if isinstance(map_location, (str, torch.device)):
            return str(map_location)
        raise NotImplementedError("simulated CUDA: torch.load with a callable map_location")

    def restore(storage, location):
        where = _device_type(destination(location))
        if where not in ("cpu", "cuda"):
            raise NotImplementedError(f"simulated CUDA: map_location to {where}")
        if where == "cuda":
            to_cuda.add(storage.data_ptr())
        return storage

    state = _load(f, *args, map_location=restore, **kwargs)

    def convert(value):
        if isinstance(value, torch.Tensor) and not is_simulated(value) \
                and value.untyped_storage().data_ptr() in to_cuda:
            return torch.Tensor._make_subclass(SimulatedCudaTensor, value, value.requires_grad)
        return value

    return _map_containers(convert, state)


def _map_containers(fn, value):
    if isinstance(value, dict):
        converted = {k: _map_containers(fn, v) for k, v in value.items()}
        if type(value) is dict:
            return converted
        try:
            out = type(value)(converted)
        except TypeError:
            return converted
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata  # state_dict metadata
        return out
    if isinstance(value, list):
        return [_map_containers(fn, v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_map_containers(fn, v) for v in value)
    return fn(value)


# ------------------------------------------------------------------------- on and off

_lock = threading.Lock()
_state: dict[str, Any] | None = None


def is_active() -> bool:
    return _state is not None


def activate() -> None:
    """Turn the simulation on (idempotent): patches torch and pushes the function mode."""
    global _state
    with _lock:
        if _state is not None:
            return
        saved: list[tuple[Any, str, Any]] = []

        def patch(owner, name, value):
            saved.append((owner, name, owner.__dict__.get(name, _MISSING) if isinstance(owner, type)
                          else getattr(owner, name, _MISSING)))
            setattr(owner, name, value)

        for name, value in _cuda_patches.items():
            patch(torch.cuda, name, value)
        patch(torch, "Generator", SimulatedGenerator)
        patch(torch, "set_rng_state", _torch_set_rng_state)
        patch(torch.random, "set_rng_state", _torch_set_rng_state)
        patch(torch, "autocast", _SimulatedAutocast)
        patch(torch.amp, "autocast", _SimulatedAutocast)
        patch(torch, "is_autocast_enabled", _simulated_is_autocast_enabled)
        patch(torch, "get_autocast_dtype", _simulated_get_autocast_dtype)
        patch(torch, "save", _simulated_save)
        patch(torch, "load", _simulated_load)
        patch(torch.serialization, "location_tag", _tagging_location)
        patch(torch.autograd.function.BackwardCFunction, "apply", _backward_apply_in_mode)
        patch(torch.Tensor, "device", property(_plain_device))
        patch(torch.Tensor, "is_cuda", property(_plain_is_cuda))
        patch(torch.Tensor, "is_cpu", property(_plain_is_cpu))
        swap = torch.__future__.get_swap_module_params_on_conversion()
        # Module.to swaps the parameter objects (so they become simulated tensors in place,
        # optimizer references included) instead of assigning ``param.data``
        torch.__future__.set_swap_module_params_on_conversion(True)
        mode = _Mode()
        mode.__enter__()
        _state = {"saved": saved, "mode": mode, "swap": swap}


def deactivate() -> None:
    """Undo :func:`activate` (the mode must be the innermost one)."""
    global _state
    with _lock:
        if _state is None:
            return
        _state["mode"].__exit__(None, None, None)
        torch.__future__.set_swap_module_params_on_conversion(_state["swap"])
        for owner, name, value in reversed(_state["saved"]):
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        _state = None


@contextlib.contextmanager
def simulated():
    """``with simulated(): ...`` runs the block on the simulated device (if not already on)."""
    if is_active():
        yield
        return
    activate()
    try:
        yield
    finally:
        deactivate()


class _Missing:
    pass


_MISSING = _Missing()


def requested() -> bool:
    return os.environ.get(ENV_VAR, "") not in ("", "0")
