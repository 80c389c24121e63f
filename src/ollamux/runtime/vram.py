"""How much of a model lives in GPU memory: what /api/ps reports as `size_vram`.

The xllamacpp wheel is built for one backend. A CPU build lists only the CPU device, so nothing is ever
offloaded and `size_vram` is 0 whatever `n_gpu_layers` says; a CUDA, Metal or Vulkan build lists a GPU
device (`xllamacpp.get_device_info()`), and then the part offloaded is estimated from the file: llama.cpp
puts `n_gpu_layers` of the model's `block_count` repeating layers on the GPU (the output layer counts as
one more, as llama.cpp's `-ngl` does), and the layers are about the same size, so the offloaded bytes are
the file size in that proportion. The KV cache and compute buffers are not counted (Ollama counts them;
llama.cpp does not report them to us), so this is a lower bound, honest about which model is on the GPU.
"""

from __future__ import annotations

import functools
import logging

__all__ = ["gpu_available", "offloaded_bytes"]

log = logging.getLogger("ollamux.runtime")

# the device types of `ggml_backend_dev_type` that hold offloaded layers (GPU, IGPU); CPU and ACCEL do not
_GPU_TYPES = frozenset({1, 2})


def offloaded_bytes(size: int, n_layers: int | None, n_gpu_layers: int, *, gpu: bool) -> int:
    """The bytes of a `size`-byte model file that `n_gpu_layers` puts on a GPU (< 0: llama.cpp's default, all
    that fit: taken as all). 0 without a GPU, and when the layer count is unknown and some layers are asked."""
    if not gpu or size <= 0 or n_gpu_layers == 0:
        return 0
    if n_gpu_layers < 0:
        return size
    if not n_layers:
        return 0
    total = n_layers + 1  # the repeating blocks and the output layer
    return size * min(n_gpu_layers, total) // total


@functools.cache
def gpu_available() -> bool:
    """Whether the installed xllamacpp build can offload to a GPU (it lists a GPU device); asked once."""
    try:
        import xllamacpp

        devices = xllamacpp.get_device_info()
    except Exception as exc:  # not installed, or a build without the call: no offload to report
        log.debug("no GPU device information from xllamacpp: %s", exc)
        return False
    return any(int(d.get("type", 0)) in _GPU_TYPES for d in devices)
