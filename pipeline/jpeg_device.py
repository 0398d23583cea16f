"""JPEG decoding on the model's device (nvJPEG on a CUDA GPU) for extraction,
`--jpeg-decoder device`.

With the device decoder, a DataLoader worker only reads a file, hashes it and checks (from
its header) that the device decoder can take it; the main process then decodes the batch
with `torchvision.io.decode_jpeg(..., device=...)`, turns each image upright per its EXIF
orientation and resizes it there. Everything else (PNG, TIFF, CMYK and progressive JPEGs,
JPEGs cut short, a file over the decompression-bomb limit, a JPEG the device decoder
rejects) goes through Pillow exactly as on the CPU path, so what is unreadable and why
stays the same.

It is not the default (`auto` is Pillow in the workers) until it has been measured on a
GPU: torchvision decodes baseline JPEGs in batches on the hardware JPEG decoder of A100- and
H100-class GPUs, but on other GPUs, and for progressive JPEGs anywhere, it decodes one image
at a time with the Huffman decoding on the host, in the main process; and it always decodes
at full size, where Pillow decodes a large JPEG at 1/8 of its size, in as many workers as
there are cores. `benchmarks/gpu_check.sh` measures the two side by side.

The same code runs on the CPU (`--jpeg-decoder device --device cpu`), which is how the
tests check it on machines without a GPU; there it decodes at full size and is slower than
Pillow's reduced-size decoding.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.io import ImageReadMode

from .images import exif_orientation, within_pixel_limit
from .weights import Preprocess

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
RESIZE_PIXELS = 1 << 28  # pixels resized in one call: bounds the float32 copy the resize needs
DECODE_PIXELS = 1 << 30  # pixels decoded at full size at once: 3 GB of RGB, about 90 12-MP photos


@dataclass(frozen=True)
class JPEGHeader:
    """What a JPEG's header says that decoding on the device needs."""

    orientation: int  # EXIF orientation, 1-8
    pixels: int  # width x height: what decoding it at full size costs in memory


@dataclass
class EncodedJPEG:
    """A JPEG's bytes (a CPU uint8 tensor, pinned by the DataLoader on CUDA) and its header,
    as a worker hands it to the main process."""

    data: torch.Tensor
    header: JPEGHeader

    @property
    def orientation(self) -> int:
        return self.header.orientation

    def pin_memory(self) -> "EncodedJPEG":
        """The DataLoader's pin-memory thread calls this (on CUDA): page-locked bytes copy to the GPU faster."""
        return EncodedJPEG(self.data.pin_memory(), self.header)


def uses_device_decoder(decoder: str) -> bool:
    """device: JPEGs decoded where the model runs; auto and pillow: by Pillow in the workers
    (auto may pick the device decoder where a GPU measurement shows it faster; see above)."""
    return decoder == "device"


def works_on(device: torch.device) -> str:
    """An empty string when this torchvision decodes JPEGs on `device`, else why not (a build
    without nvJPEG, say), so a run says so before its first batch instead of failing in each."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buf, "JPEG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            [image] = _decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device)
        return "" if tuple(image.shape) == (3, 16, 16) else f"decoded a 16x16 test JPEG to {tuple(image.shape)}"
    except Exception as exc:  # any failure here means: not on this device
        return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def probe(data: bytes) -> JPEGHeader | None:
    """The header of a JPEG the device decoder can take, else None (the Pillow path then
    decodes the file, or says why it cannot)."""
    # No end-of-image marker: cut short (or with data after the image); Pillow then says which,
    # whatever nvJPEG would have made of the missing part.
    if not data.startswith(_JPEG_MAGIC) or not bytes(data[-64:]).rstrip(b"\x00").endswith(_JPEG_END):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                # Only 3-channel YCbCr and greyscale: nvJPEG has no CMYK/YCCK conversion. Not
                # progressive: torchvision decodes those one at a time, Huffman on the host.
                if im.format != "JPEG" or im.mode not in ("RGB", "L") or not within_pixel_limit(im.size) \
                        or im.info.get("progressive") or im.info.get("progression"):
                    return None
                return JPEGHeader(exif_orientation(im), im.size[0] * im.size[1])
    except Exception:  # anything odd: Pillow's path gives the reason
        return None


def encode(data: bytearray) -> EncodedJPEG | None:
    """A file's bytes as the device decoder takes them, or None when `probe` leaves the file
    to Pillow. `data` must be writable (torch.frombuffer shares it, without a copy)."""
    header = probe(data)
    return None if header is None else EncodedJPEG(torch.frombuffer(data, dtype=torch.uint8), header)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) image turned as `PIL.ImageOps.exif_transpose` turns a stored frame."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, (-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.rot90(1, (-2, -1))
    return image


def network_pixels(images: list[torch.Tensor], pre: Preprocess, resize: str) -> list[torch.Tensor]:
    """Upright uint8 (3, H, W) images -> uint8 (3, crop, crop) in the weights' geometry, as
    `extract.to_network_pixels` does with Pillow; images of one size are resized together."""
    out: list[torch.Tensor | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
    for (h, w), same in by_size.items():
        step = max(1, RESIZE_PIXELS // (h * w))  # 21 12-megapixel photos at a time: 3 GB of float32
        for start in range(0, len(same), step):
            indices = same[start:start + step]
            # float for the antialiased resize on every device, rounded back to uint8 like Pillow's output
            x = pre.fit(torch.stack([images[i] for i in indices]).float(), resize)
            pixels = x.round_().clamp_(0, 255).to(torch.uint8)
            for j, i in enumerate(indices):
                out[i] = pixels[j]
    return out  # type: ignore[return-value]


def network_pixels_of(encoded: list[EncodedJPEG], device: torch.device, pre: Preprocess,
                      resize: str) -> list[torch.Tensor | None]:
    """Each JPEG decoded on `device` and brought to the weights' geometry: uint8 (3, crop,
    crop), or None where the decoder refused it. Decoded a few hundred megapixels at a
    time, each part resized before the next is decoded, so a batch of large photos never
    holds more than DECODE_PIXELS of full-size images."""
    out: list[torch.Tensor | None] = []
    for part in _parts(encoded, DECODE_PIXELS):
        decoded = decode(part, device)
        resized = iter(network_pixels([im for im in decoded if im is not None], pre, resize))
        out += [None if im is None else next(resized) for im in decoded]
    return out


def _parts(encoded: list[EncodedJPEG], budget: int) -> list[list[EncodedJPEG]]:
    """Consecutive runs of `encoded` of at most `budget` pixels each (one image at least)."""
    parts: list[list[EncodedJPEG]] = []
    total = budget + 1
    for e in encoded:
        if total + e.header.pixels > budget:
            parts.append([])
            total = 0
        parts[-1].append(e)
        total += e.header.pixels
    return parts


def decode(encoded: list[EncodedJPEG], device: torch.device) -> list[torch.Tensor | None]:
    """Decode a batch on `device`: uint8 (3, H, W), upright; None where the decoder refused
    the file (the caller decodes those with Pillow). One call for the batch; when it fails,
    one call per image, so one bad file costs only itself."""
    if not encoded:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its image decoders deprecated
        try:
            images: list[torch.Tensor | None] = list(_decode_jpeg([e.data for e in encoded], device))
        except RuntimeError:
            images = []
            for e in encoded:
                try:
                    images.append(_decode_jpeg([e.data], device)[0])
                except RuntimeError:
                    images.append(None)
    return [None if im is None else upright(im, e.orientation) for im, e in zip(images, encoded)]


def _decode_jpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import decode_jpeg

    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def describe(device: torch.device) -> str:
    """What decoded the JPEGs, as the cache key records it."""
    backend = " (nvJPEG)" if device.type == "cuda" else ""
    return f"JPEG: torchvision.io.decode_jpeg on {device.type}{backend}, full size; other formats: Pillow"
