"""JPEG decoding on the model's device (jpeg_device.py, `--jpeg-decoder`): the same code runs
on the CPU here, so every route but nvJPEG itself is checked without a GPU; the CUDA tests
at the end run wherever torch sees one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from pipeline import jpeg_device as J
from pipeline import weights as W
from pipeline.cli import main
from pipeline.config import ExtractConfig
from pipeline.errors import UserError
from pipeline.extract import _Forward, extract_folder, resolve_batch_size, to_network_pixels
from pipeline.images import open_rgb

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
CPU = torch.device("cpu")
FAST = dict(weights="random", workers=0, device="cpu", precision="fp32", batch_size=4)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _jpeg(pixels: np.ndarray, orientation: int = 1, mode: str = "RGB", **save) -> bytes:
    im = Image.fromarray(pixels).convert(mode)
    exif = im.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif, **save)
    return buf.getvalue()


def _encoded(data: bytes) -> J.EncodedJPEG:
    encoded = J.encode(bytearray(data))
    assert encoded is not None
    return encoded


def _cut(data: bytes) -> J.EncodedJPEG:
    """The first half of a JPEG, handed to the decoder as if the probe had let it through."""
    return J.EncodedJPEG(torch.frombuffer(bytearray(data[: len(data) // 2]), dtype=torch.uint8), J.probe(data))


def _photo(h: int = 48, w: int = 80, seed: int = 0) -> np.ndarray:
    """Smooth colour ramps with a corner mark, so every orientation looks different."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * x / w, 255 * y / h, 128 + 60 * np.sin((x + seed) / 7.0)], axis=-1)
    rgb[:8, :8] = (255, 0, 0)
    return rgb.astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_as_pillow_turns_it(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).transpose(
        {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}[orientation])) if orientation != 1 else pixels
    got = J.upright(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_decoded_jpeg_matches_pillows_upright_decode(orientation):
    data = _jpeg(_photo(), orientation)
    [image] = J.decode([_encoded(data)], CPU)
    with Image.open(io.BytesIO(data)) as im:
        pillow = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = image.permute(1, 2, 0).numpy()
    assert got.shape == pillow.shape
    assert np.abs(got.astype(int) - pillow).mean() < 1.0  # the same libjpeg decode, bar upsampling details


def test_probe_leaves_what_the_device_cannot_take_to_pillow(monkeypatch):
    photo = _photo()
    assert J.probe(_jpeg(photo, 6)) == J.JPEGHeader(6, 48 * 80)
    assert J.probe(_jpeg(photo, mode="L")) == J.JPEGHeader(1, 48 * 80)  # greyscale: nvJPEG decodes it to RGB
    assert J.probe(_jpeg(photo, mode="CMYK")) is None
    assert J.probe(_jpeg(photo, progressive=True)) is None  # torchvision would decode it alone, on the host
    png = io.BytesIO()
    Image.fromarray(photo).save(png, "PNG")
    assert J.probe(png.getvalue()) is None
    assert J.probe(b"\xff\xd8\xff" + b"\x00" * 50) is None  # a JPEG signature and nothing after it
    whole = _jpeg(photo)
    assert J.probe(whole[: len(whole) - 100]) is None  # cut short: no end-of-image marker
    assert J.probe(whole + b"\x00" * 10) is not None  # padding after the marker is fine
    assert J.probe(b"") is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over the decompression-bomb limit: Pillow says so
    assert J.probe(_jpeg(photo)) is None


def test_a_file_the_decoder_refuses_costs_only_itself():
    good = [_jpeg(_photo(seed=s)) for s in range(3)]
    batch = [_encoded(good[0]), _cut(good[1]), _encoded(good[2])]
    decoded = J.decode(batch, CPU)
    assert decoded[1] is None
    assert decoded[0] is not None and decoded[2] is not None
    [alone] = J.decode([_encoded(good[2])], CPU)
    assert torch.equal(decoded[2], alone)


def test_network_pixels_match_the_pillow_geometry():
    """Resized and cropped on the device as to_network_pixels does with Pillow (256, crop 224),
    and images of one size resized together give what each gives alone."""
    pre = W.torchvision_preprocess()
    photos = [_photo(300, 420, seed=s) for s in range(3)] + [_photo(420, 300)]
    tensors = [torch.from_numpy(p).permute(2, 0, 1).contiguous() for p in photos]
    for resize in ("crop", "squash"):
        together = J.network_pixels(tensors, pre, resize)
        for tensor, photo, got in zip(tensors, photos, together):
            assert got.shape == (3, 224, 224) and got.dtype == torch.uint8
            assert torch.equal(got, J.network_pixels([tensor], pre, resize)[0])
            pillow = to_network_pixels(Image.fromarray(photo), pre, resize)
            assert (got.int() - pillow.int()).abs().float().mean() < 1.0


def test_many_large_images_of_one_size_are_resized_a_few_at_a_time(monkeypatch):
    pre = W.torchvision_preprocess()
    tensors = [torch.from_numpy(_photo(300, 420, seed=s)).permute(2, 0, 1).contiguous() for s in range(5)]
    whole = J.network_pixels(tensors, pre, "crop")
    monkeypatch.setattr(J, "RESIZE_PIXELS", 2 * 300 * 420)  # two at a time: three calls
    calls = []
    from torchvision.transforms.v2 import functional as TF

    resize = TF.resize
    monkeypatch.setattr(TF, "resize", lambda x, *a, **k: calls.append(len(x)) or resize(x, *a, **k))
    parts = J.network_pixels(tensors, pre, "crop")
    assert calls == [2, 2, 1]
    assert all(torch.equal(a, b) for a, b in zip(whole, parts))


def test_a_batch_of_large_photos_is_decoded_a_part_at_a_time(monkeypatch):
    """Never more than DECODE_PIXELS decoded at once; the same pixels as one call, and a
    refused file still costs only itself."""
    pre = W.torchvision_preprocess()
    encoded = [_encoded(_jpeg(_photo(120, 160, seed=s))) for s in range(5)]
    encoded[2] = _cut(_jpeg(_photo(120, 160, seed=2)))  # truncated: the decoder refuses it
    whole = J.network_pixels_of(encoded, CPU, pre, "crop")
    calls = []
    decode = J.decode
    monkeypatch.setattr(J, "decode", lambda part, device: calls.append(len(part)) or decode(part, device))
    monkeypatch.setattr(J, "DECODE_PIXELS", 2 * 120 * 160)
    parts = J.network_pixels_of(encoded, CPU, pre, "crop")
    assert calls == [2, 2, 1]
    assert parts[2] is None and whole[2] is None
    assert all(torch.equal(a, b) for i, (a, b) in enumerate(zip(whole, parts)) if i != 2)
    assert [len(p) for p in J._parts(encoded, 1)] == [1] * 5  # a photo over the budget still goes alone


def _mixed_folder(folder: Path) -> None:
    """JPEGs (one turned by EXIF, one greyscale, one CMYK), a PNG, a truncated JPEG, a text file."""
    folder.mkdir(parents=True)
    for i in range(4):
        (folder / f"photo_{i}.jpg").write_bytes(_jpeg(_photo(120, 160, seed=9 * i), orientation=6 if i == 1 else 1))
    (folder / "grey.jpg").write_bytes(_jpeg(_photo(100, 90), mode="L"))
    (folder / "cmyk.jpg").write_bytes(_jpeg(_photo(100, 90), mode="CMYK"))
    Image.fromarray(_photo(70, 90)).save(folder / "drawing.png")
    whole = _jpeg(_photo(120, 160, seed=5))
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("not an image")


def test_extract_with_the_device_decoder_reads_a_folder_as_pillow_does(tmp_path):
    """Same manifest (statuses, reasons, hashes), features close to Pillow's; the decoder is
    in the cache key, so the two never share a cache, and each comes back when used again."""
    photos = tmp_path / "photos"
    _mixed_folder(photos)
    pillow, device = tmp_path / "pillow", tmp_path / "device"
    extract_folder(photos, pillow, ExtractConfig(jpeg_decoder="pillow", **FAST), log=lambda m: None, progress=False)
    # two worker processes: the bytes cross from the workers to the main process as tensors
    report = extract_folder(photos, device, ExtractConfig(jpeg_decoder="device", **dict(FAST, workers=2)),
                            log=lambda m: None, progress=False)
    assert report.embedded == 7 and report.unreadable == 2
    a, b = (pd.read_csv(out / "manifest.csv", keep_default_na=False) for out in (pillow, device))
    pd.testing.assert_frame_equal(a, b)
    assert dict(zip(b.path, b.reason))["cut.jpg"] == "truncated image data"
    key = json.loads((device / "cache_key.json").read_text())
    assert "decode_jpeg on cpu" in key["jpeg_decoder"]
    assert "jpeg_decoder" not in json.loads((pillow / "cache_key.json").read_text())
    fa, fb = np.load(pillow / "features.npy"), np.load(device / "features.npy")
    ok = a.status == "ok"
    cosine = (fa[ok] * fb[ok]).sum(1) / np.linalg.norm(fa[ok], axis=1) / np.linalg.norm(fb[ok], axis=1)
    assert cosine.min() > 0.99, cosine
    # Pillow's decode in the device decoder's folder: another key, every photo embedded again ...
    again = extract_folder(photos, device, ExtractConfig(jpeg_decoder="pillow", **FAST), log=lambda m: None,
                           progress=False)
    assert again.decoded == 9 and np.allclose(np.load(device / "features.npy"), fa, equal_nan=True)
    # ... and the device decoder's features come back untouched when it is used again
    back = extract_folder(photos, device, ExtractConfig(jpeg_decoder="device", **FAST), log=lambda m: None,
                          progress=False)
    assert back.decoded == 0 and np.array_equal(np.load(device / "features.npy"), fb, equal_nan=True)


def test_assign_embeds_new_photos_with_the_runs_decoder(tmp_path, capsys, monkeypatch):
    photos, new, out = tmp_path / "photos", tmp_path / "new", tmp_path / "out"
    _mixed_folder(photos)
    new.mkdir()
    (new / "late.jpg").write_bytes((photos / "photo_1.jpg").read_bytes())
    common = ["--weights", "random", "--device", "cpu", "--workers", "0", "--precision", "fp32"]
    assert main(["extract", str(photos), "--out", str(out), "--jpeg-decoder", "device", *common]) == 0
    assert main(["cluster", "--out", str(out), "--k", "2", "--losses", "square"]) == 0
    assert main(["assign", str(new), "--out", str(out), "--device", "cpu", "--workers", "0"]) == 0
    features = np.load(out / "features.npy")
    manifest = pd.read_csv(out / "manifest.csv")
    from pipeline.assign import reproduce_embedding

    embedding = reproduce_embedding(out, ExtractConfig(device="cpu"), log=lambda m: None)
    assert embedding.jpeg_decoder == "device"
    # the same bytes embed to the same row as the run's photo, which only the run's decoder gives
    from pipeline.assign import embed_new

    _, rows, _ = embed_new(new, out, ExtractConfig(device="cpu", workers=0), embedding, log=lambda m: None,
                           progress=False)
    assert np.array_equal(rows[0], features[manifest.index[manifest.path == "photo_1.jpg"][0]])
    capsys.readouterr()

    # where torchvision cannot decode on the device, assign says so instead of embedding with Pillow
    def no_decoder(data, device):
        raise RuntimeError("not compiled with nvJPEG support")

    monkeypatch.setattr(J, "_decode_jpeg", no_decoder)
    assert main(["assign", str(new), "--out", str(out), "--device", "cpu", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("photoclust: error: the run in")
    assert "--jpeg-decoder pillow" in err and "nvJPEG" in err, err


def test_batch_size_auto_and_bad_values(tmp_path, capsys):
    assert resolve_batch_size(None, CPU) == 16 and resolve_batch_size(5, CPU) == 5
    photos = tmp_path / "p"
    _mixed_folder(photos)
    assert main(["extract", str(photos), "--out", str(tmp_path / "o"), "--batch-size", "auto", "--weights", "random",
                 "--device", "cpu", "--workers", "0"]) == 0
    capsys.readouterr()
    for flag, value in (("--batch-size", "lots"), ("--jpeg-decoder", "gpu")):
        assert main(["extract", str(photos), "--out", str(tmp_path / "o"), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err and "auto" in err, err


def test_a_torchvision_that_cannot_decode_on_the_device_is_told_once(tmp_path, capsys, monkeypatch):
    from pipeline.extract import resolve_jpeg_decoder

    assert J.works_on(CPU) == ""
    assert resolve_jpeg_decoder(ExtractConfig(jpeg_decoder="device"), CPU) == "device"
    for device in (CPU, torch.device("cuda")):  # auto is Pillow everywhere until measured on a GPU
        assert resolve_jpeg_decoder(ExtractConfig(), device) == "pillow"

    def no_nvjpeg(data, device):
        raise RuntimeError("torchvision.io.decode_jpeg: not compiled with nvJPEG support")

    monkeypatch.setattr(J, "_decode_jpeg", no_nvjpeg)
    with pytest.raises(UserError, match="not compiled with nvJPEG"):
        resolve_jpeg_decoder(ExtractConfig(jpeg_decoder="device"), torch.device("cuda"))
    photos = tmp_path / "p"
    _mixed_folder(photos)
    assert main(["extract", str(photos), "--out", str(tmp_path / "o"), "--jpeg-decoder", "device",
                 "--weights", "random", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the warning that --weights random gives
    assert "Traceback" not in err and last.startswith("photoclust: error: --jpeg-decoder device")
    assert "--jpeg-decoder pillow" in last and "nvJPEG" in last, err


class _SmallMemory(torch.nn.Module):
    """A model that runs out of memory on more than `fits` images at once."""

    def __init__(self, fits: int):
        super().__init__()
        self.fits, self.calls = fits, []

    def forward(self, x):
        self.calls.append(len(x))
        if len(x) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x * 2.0


def test_a_batch_that_runs_out_of_memory_is_split_and_stays_split():
    said = []
    model = _SmallMemory(fits=3)
    forward = _Forward(model, None, said.append)
    x = torch.arange(10 * 3 * 2 * 2, dtype=torch.float32).reshape(10, 3, 2, 2)
    rows = forward(x)
    assert np.array_equal(rows, (x * 2.0).mean(dim=(2, 3)).numpy())
    assert forward.chunk == 2 and len(said) == 2 and "going on with 2" in said[-1]
    model.calls.clear()
    forward(x)
    assert model.calls == [2] * 5  # later batches start at the size that fitted


def test_a_batch_that_never_fits_is_an_error():
    forward = _Forward(_SmallMemory(fits=0), None, lambda m: None)
    with pytest.raises(torch.OutOfMemoryError):
        forward(torch.zeros(4, 3, 2, 2))


# ----------------------------------------------------------------------------- CUDA (nvJPEG)


@needs_cuda
def test_nvjpeg_decodes_as_the_cpu_decoder_does():
    data = [_jpeg(_photo(300, 400, seed=s), orientation=o) for s, o in ((0, 1), (1, 6), (2, 3))]
    data.append(_jpeg(_photo(200, 150), mode="L"))
    on_gpu = J.decode([_encoded(d) for d in data], torch.device("cuda"))
    on_cpu = J.decode([_encoded(d) for d in data], CPU)
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        assert (gpu.cpu().int() - cpu.int()).abs().float().mean() < 2.0


@needs_cuda
def test_extract_on_cuda_decodes_jpegs_on_the_gpu(tmp_path):
    photos = tmp_path / "photos"
    _mixed_folder(photos)
    cuda = dict(FAST, device="cuda", workers=2)
    report = extract_folder(photos, tmp_path / "gpu", ExtractConfig(jpeg_decoder="device", **cuda), log=lambda m: None,
                            progress=False)
    assert report.embedded == 7 and report.unreadable == 2
    key = json.loads((tmp_path / "gpu" / "cache_key.json").read_text())
    assert "nvJPEG" in key["jpeg_decoder"]
    pillow = extract_folder(photos, tmp_path / "gpu-pillow", ExtractConfig(**cuda), log=lambda m: None, progress=False)
    assert pillow.embedded == 7  # auto: Pillow in the workers, a key without a decoder entry
    assert "jpeg_decoder" not in json.loads((tmp_path / "gpu-pillow" / "cache_key.json").read_text())
    extract_folder(photos, tmp_path / "cpu", ExtractConfig(jpeg_decoder="device", **FAST), log=lambda m: None,
                   progress=False)
    a, b = np.load(tmp_path / "gpu" / "features.npy"), np.load(tmp_path / "cpu" / "features.npy")
    ok = ~np.isnan(a).any(1)
    cosine = (a[ok] * b[ok]).sum(1) / np.linalg.norm(a[ok], axis=1) / np.linalg.norm(b[ok], axis=1)
    assert cosine.min() > 0.99, cosine
    assert resolve_batch_size(None, torch.device("cuda")) >= 16
