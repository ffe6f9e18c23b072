"""pycuda module loading and context for the CUDA kernels (kernels/<op>.cu; each op's launcher is
``<op>_cuda`` in kernels/<op>.py).

Importing this module needs the standard library only; pycuda is imported on first use. ``probe()``
says whether the CUDA path can run here (pycuda importable, a GPU present, the module loadable) and
why not.

Module: the shipped fatbin (kernels/cuda/lineside_kernels.fatbin, built by ``python -m kernels.build``)
if it was built from the current sources and the driver accepts it; otherwise the sources are
compiled once with the local nvcc for this GPU's arch into the user cache dir (see kernels.build).

Context: the device's primary context, pushed around every launch (``context()``, so worker threads
and torch share it). Work goes to the legacy default stream, which orders itself with torch's default
stream; a caller using other streams must synchronise them first.
"""
from __future__ import annotations

import importlib
import threading
from contextlib import contextmanager

from kernels import build

_lock = threading.Lock()
_state: dict = {}


def _init():
    """-> state dict (driver, context, module, functions, origin); raises with the reason."""
    with _lock:
        if _state:
            return _state
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            raise RuntimeError("no CUDA device")
        dev = cuda.Device(0)
        ctx = dev.retain_primary_context()
        major, minor = dev.compute_capability()
        sms = dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        arch = f"sm_{major}{minor}"
        ctx.push()
        try:
            module, origin = None, ""
            errors = []
            shipped = build.shipped_fatbin()
            if shipped is not None:
                try:
                    module = cuda.module_from_buffer(shipped.read_bytes())
                    origin = str(shipped)
                except cuda.Error as e:  # e.g. driver older than the toolkit that built it
                    errors.append(f"shipped fatbin refused by the driver: {e}")
            else:
                errors.append("no shipped fatbin built from the current sources")
            if module is None:
                path = build.cached_fatbin(arch)
                module = cuda.module_from_buffer(path.read_bytes())
                origin = f"{path} (compiled here: {'; '.join(errors)})"
            names = [n for names in build.KERNEL_NAMES.values() for n in names]
            funcs = {n: module.get_function(n) for n in names}
        finally:
            ctx.pop()
        _state.update(cuda=cuda, ctx=ctx, module=module, funcs=funcs, origin=origin, arch=arch,
                      device=dev.name(), sms=sms)
        return _state


def probe() -> str | None:
    """None when the CUDA kernels can run here, else why not."""
    try:
        importlib.import_module("pycuda.driver")
    except ImportError:
        return "pycuda not installed"
    try:
        _init()
    except Exception as e:  # noqa: BLE001 - any failure means "not available", with its reason
        return f"{type(e).__name__}: {e}"
    return None


def loaded_from() -> str:
    return _init()["origin"]


@contextmanager
def context():
    """The loaded module's state with the primary context current: ``st["cuda"]`` (pycuda.driver),
    ``st["funcs"]`` (kernel name -> function), ``st["sms"]`` (multiprocessors), ``st["origin"]``."""
    st = _init()
    st["ctx"].push()
    try:
        yield st
    finally:
        st["ctx"].pop()
