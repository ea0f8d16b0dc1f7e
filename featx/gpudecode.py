"""Batched JPEG decoding on the GPU (torchvision's nvJPEG) for ``featx extract --decoder gpu|auto``.

On a GPU machine the CPU decoder is the wall (issue 14: ~1,000 images/s end to end on 16 cores
while the model alone does 13k-62k). nvJPEG decodes a whole batch on the device; the images are
then resized there to the model size with antialiased bilinear and come back as one uint8
(N, H, W, 3) batch, the same form the CPU decoder fills.

What goes to the GPU is decided per file from its header bytes (:func:`gpu_route`): a complete
8-bit baseline/extended/progressive JPEG with three YCbCr components, no EXIF/XMP orientation
other than 1, of a size within the limits. Everything else (PNG, CMYK, greyscale, arithmetic
coded, 12-bit, EXIF-rotated, truncated, not a JPEG at all), and every file nvJPEG fails on, goes
through featx's CPU decoder (:func:`featx.decode.decode_deferred`), so skip kinds and reasons,
EXIF orientation and colour handling are exactly the CPU path's. Files are read and hashed by the
same code as on the CPU path (the store's row key and known-hash reuse do not change).

The pixels differ slightly from the CPU decoder's: that one decodes JPEGs at a reduced DCT scale
and resizes with Pillow, this one decodes at full size and resizes with torch. Features agree to a
cosine similarity measured in tests (CPU stand-in) and in benchmarks/gpu.sh (nvJPEG); a store
records ``"decoder": "gpu-nvjpeg"`` in its fingerprint, so the two never mix in one store.

The batch comes back to the host (one device->host copy of uint8 pixels) rather than staying on
the device: handing a torch CUDA tensor to a JAX or TensorFlow model through DLPack is possible but
ties featx to one backend's device placement; at 224x224x3 bytes an image the copy is ~150 kB,
small beside the decode it replaces. Torch is imported only here and only when asked for.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

DECODERS = ("cpu", "gpu", "auto")
DEFAULT_DECODER = "cpu"  # "auto" becomes the default once measured on a GPU (benchmarks/gpu.sh)
GPU_DECODER_NAME = "gpu-nvjpeg"
#: Largest side routed to nvJPEG; larger (rare) images go to the CPU decoder.
MAX_GPU_SIDE = 16384
_SOF_OK = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive (Huffman, 8-bit)
_SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class GpuDecoderUnavailable(RuntimeError):
    """--decoder gpu was asked for, but torch, torchvision or a CUDA device is missing."""


def check_decoder(decoder: Any) -> None:
    if not isinstance(decoder, BatchJpegDecoder) and decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


def gpu_decoder_problem() -> str | None:
    """Why the GPU decoder cannot run here (what is missing), or None when it can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install torch torchvision, CUDA build)"
    try:
        import torchvision.io  # noqa: F401
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        return f"torchvision is not usable ({type(exc).__name__}: {str(exc)[:200]})"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    return None


def open_decoder(decoder: "str | BatchJpegDecoder") -> tuple["BatchJpegDecoder | None", str]:
    """(the batched decoder to use or None for the CPU decoder, a sentence saying which and why).

    "gpu" without a usable GPU decoder raises GpuDecoderUnavailable (never a silent CPU run);
    "auto" takes the GPU decoder when usable and says which one ran.
    """
    check_decoder(decoder)
    if isinstance(decoder, BatchJpegDecoder):
        return decoder, f"{decoder.name} (given)"
    if decoder == "cpu":
        return None, "cpu"
    problem = gpu_decoder_problem()
    if problem is None:
        return BatchJpegDecoder(), f"{GPU_DECODER_NAME} ({decoder})"
    if decoder == "gpu":
        raise GpuDecoderUnavailable(f"--decoder gpu: the GPU JPEG decoder cannot run here: {problem}; "
                                    "use --decoder cpu (or auto, which says which one ran)")
    return None, f"cpu (auto: GPU decoder unavailable: {problem})"


def gpu_route(data: bytes, max_pixels: int) -> bool:
    """True when nvJPEG decodes `data` to the pixels the CPU decoder would (before resizing):
    a complete 8-bit Huffman JPEG, 3 components not flagged as RGB-coded, upright (orientation 1),
    within `max_pixels` and MAX_GPU_SIDE. Reads only the header; never raises."""
    try:
        return _gpu_route(data, max_pixels)
    except (struct.error, IndexError, ValueError):
        return False


def _gpu_route(data: bytes, max_pixels: int) -> bool:
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff" or not data.endswith(b"\xff\xd9"):
        return False  # not a JPEG, or no end-of-image marker where it belongs (truncated): CPU decides
    i, sof = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        segment = data[i + 4:i + 2 + length]
        if marker in _SOF_ANY:
            if marker not in _SOF_OK or sof is not None:
                return False  # arithmetic coded, lossless, hierarchical, or a second frame
            precision, height, width, components = struct.unpack(">BHHB", segment[:6])
            if precision != 8 or components != 3:
                return False  # 12-bit, greyscale or CMYK/YCCK: the CPU decoder's colour handling
            if not (0 < width <= MAX_GPU_SIDE and 0 < height <= MAX_GPU_SIDE) or width * height > max_pixels:
                return False  # the CPU decoder's too_small / decompression_bomb skips, or too big for nvJPEG
            sof = marker
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            if _exif_orientation(segment) != 1:
                return False
        elif marker == 0xE1 and b"Orientation" in segment:
            return False  # XMP orientation (Pillow honours it too): rotation stays on the CPU
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12 and segment[11] == 0:
            return False  # Adobe transform 0: the 3 channels are RGB, not YCbCr
        i += 2 + length
    return sof is not None


def _exif_orientation(app1: bytes) -> int:
    """EXIF Orientation from an APP1 payload; 0 (= not upright for routing) when unreadable."""
    from PIL import Image

    try:
        exif = Image.Exif()
        exif.load(app1)
        return int(exif.get(0x0112, 1))
    except Exception:  # damaged EXIF: let the CPU decoder deal with it exactly as it always does
        return 0


@dataclass
class DecoderCounts:
    """What the batched decoder did in one run (reported in the summary)."""

    gpu: int = 0  # decoded on the device
    gpu_failed: int = 0  # routed to the device, failed there, decoded (or skipped) by the CPU decoder
    seconds: float = 0.0  # in decode_batch (upload, decode, resize, download)


class BatchJpegDecoder:
    """Decodes lists of JPEG bytes into one uint8 (N, H, W, 3) host batch on a torch device.

    `device` defaults to "cuda" with torchvision's nvJPEG. `decode_batch` (list of 1-D uint8 torch
    tensors -> list of (3, h, w) uint8 tensors on `device`, raising on a bad file) replaces
    torchvision's decoder, e.g. with a CPU one so CI runs the routing, batching and resizing code
    without a GPU; `name` is then what stores and summaries record instead of "gpu-nvjpeg".
    """

    def __init__(self, device: str = "cuda", decode_batch: Callable[[list], list] | None = None,
                 name: str = GPU_DECODER_NAME):
        import torch

        self._torch = torch
        self.device = torch.device(device)
        if decode_batch is None:
            from torchvision.io import ImageReadMode, decode_jpeg

            def decode_batch(tensors: list) -> list:
                return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
        self._decode_batch = decode_batch
        self.name = name
        self.counts = DecoderCounts()
        self._lock = threading.Lock()

    def accepts(self, data: bytes, max_pixels: int) -> bool:
        return gpu_route(data, max_pixels)

    def decode(self, encoded: Sequence[bytes], size: tuple[int, int]) -> list[np.ndarray | None]:
        """uint8 (h, w, 3) host arrays of `size` for each file, None where the device decoder failed."""
        torch = self._torch
        started = time.perf_counter()
        tensors = [torch.from_numpy(np.frombuffer(d, np.uint8).copy()) for d in encoded]
        try:
            images: list = list(self._decode_batch(tensors))
        except Exception:  # one bad file fails the whole batched call: find it file by file
            images = []
            for t in tensors:
                try:
                    images.append(self._decode_batch([t])[0])
                except Exception:
                    images.append(None)
        out: list[np.ndarray | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            if img is not None and img.ndim == 3 and img.shape[0] == 3 and img.dtype == torch.uint8:
                by_shape.setdefault(tuple(img.shape), []).append(i)
        with torch.no_grad():
            for indices in by_shape.values():  # same-size images resize as one batch
                batch = torch.stack([images[i] for i in indices]).to(self.device)
                resized = self.resize(batch, size)
                host = resized.permute(0, 2, 3, 1).contiguous().cpu().numpy()
                for j, i in enumerate(indices):
                    out[i] = host[j]
        with self._lock:
            failed = sum(1 for o in out if o is None)
            self.counts.gpu += len(out) - failed
            self.counts.gpu_failed += failed
            self.counts.seconds += time.perf_counter() - started
        return out

    def resize(self, batch, size: tuple[int, int]):
        """(N, 3, H, W) uint8 -> (N, 3, h, w) uint8: bilinear, antialiased when shrinking (as
        Pillow's BILINEAR, which the CPU decoder uses), the whole image squashed to `size`."""
        torch = self._torch
        if tuple(batch.shape[2:]) == tuple(size):
            return batch
        x = torch.nn.functional.interpolate(batch.float(), size=tuple(size), mode="bilinear", antialias=True,
                                            align_corners=False)
        return x.round_().clamp_(0, 255).to(torch.uint8)
