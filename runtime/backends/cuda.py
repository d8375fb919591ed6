"""pycuda, isolated and typed: a CUDA context, page-locked host + device buffers, one stream
and CUDA-event timing. pycuda has no type stubs, so its objects stay inside these classes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BackendUnavailableError

PYCUDA_HINT = (
    "pycuda is missing: install the TensorRT extra with pip install -e '.[tensorrt]' on a "
    "machine with an NVIDIA GPU and the CUDA toolkit (pycuda builds against it), or use "
    "--backend onnxruntime"
)


def _driver() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise BackendUnavailableError(PYCUDA_HINT) from err
    cuda.init()
    return cuda


def gpu_count() -> int:
    """Number of CUDA devices pycuda sees (0 when pycuda or the driver is missing)."""
    try:
        return int(_driver().Device.count())
    except Exception:  # no pycuda, no driver, or no device: all mean "no GPU" here
        return 0


class CudaContext:
    """The primary context of one GPU, made current for this thread until ``close``."""

    def __init__(self, device: int = 0) -> None:
        cuda = _driver()
        if cuda.Device.count() <= device:
            raise BackendUnavailableError(
                f"no CUDA GPU number {device} on this machine; the TensorRT backend needs an "
                "NVIDIA GPU (use --backend onnxruntime on CPU-only machines)"
            )
        self._device = cuda.Device(device)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._open = True

    @property
    def name(self) -> str:
        return str(self._device.name())

    def close(self) -> None:
        if self._open:
            self._context.pop()
            self._open = False


class Buffer:
    """A page-locked host array and a device allocation of the same size."""

    def __init__(self, size: int, dtype: np.dtype[Any]) -> None:
        cuda = _driver()
        self.host: np.ndarray = cuda.pagelocked_empty(size, dtype)
        self._device = cuda.mem_alloc(max(self.host.nbytes, 1))

    @property
    def address(self) -> int:
        """The device pointer, as TensorRT's ``set_tensor_address`` takes it."""
        return int(self._device)

    def free(self) -> None:
        self._device.free()


class Stream:
    """One CUDA stream with async copies and an event timer."""

    def __init__(self) -> None:
        self._cuda = _driver()
        self._stream = self._cuda.Stream()

    @property
    def handle(self) -> int:
        return int(self._stream.handle)

    def to_device(self, buf: Buffer, count: int) -> None:
        """Copy the first ``count`` items of ``buf.host`` to the device, asynchronously."""
        self._cuda.memcpy_htod_async(buf._device, buf.host[:count], self._stream)

    def to_host(self, buf: Buffer, count: int) -> None:
        self._cuda.memcpy_dtoh_async(buf.host[:count], buf._device, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def event(self) -> Event:
        return Event(self._cuda.Event(), self._stream)


class Event:
    """A CUDA event recorded on a stream."""

    def __init__(self, event: Any, stream: Any) -> None:
        self._event = event
        self._stream = stream

    def record(self) -> None:
        self._event.record(self._stream)

    def seconds_since(self, start: Event) -> float:
        """Time between ``start`` and this event (waits for this event to complete)."""
        self._event.synchronize()
        return float(self._event.time_since(start._event)) / 1000.0
