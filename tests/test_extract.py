from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cache import load_cache
from pipeline.cli import main
from pipeline.config import ExtractConfig
from pipeline.extract import extract_folder, to_network_pixels
from pipeline.weights import caffe_preprocess, load_random, build_features_model

from conftest import make_photos

CFG = ExtractConfig(weights="random", batch_size=4, workers=0, device="cpu")
REPO = Path(__file__).resolve().parents[1]


def run(root, out, cfg=CFG):
    return extract_folder(root, out, cfg, log=lambda m: None, progress=False)


def manifest_rows(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_embeds_every_image_and_records_a_bad_file(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 5)
    (photos / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    report = run(photos, out)

    assert (report.embedded, report.unreadable, report.decoded) == (5, 1, 6)
    assert report.summary() == "5 embedded, 1 unreadable (see manifest.csv)"
    rows = manifest_rows(out)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    bad = [r for r in rows if r["status"] != "ok"]
    assert [(r["path"], r["status"]) for r in bad] == [("a/broken.jpg", "unreadable")]
    assert bad[0]["reason"]
    features = np.load(out / "features.npy", allow_pickle=False)
    assert features.shape == (6, 512) and features.dtype == np.float32
    ok = np.array([r["status"] == "ok" for r in rows])
    assert np.isnan(features[~ok]).all() and np.isfinite(features[ok]).all()
    assert (features[ok] >= 0).all()  # GAP of ReLU maps
    assert len({tuple(np.round(f, 5)) for f in features[ok]}) == 5  # distinct images, distinct rows


def test_features_are_the_model_output_on_the_preprocessed_image(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    paths = make_photos(photos, 2)
    run(photos, out, ExtractConfig(**{**CFG.__dict__, "precision": "fp32"}))  # the model's own float32 numbers
    weights = load_random(0)
    model = build_features_model(weights)
    from pipeline.images import open_rgb
    pixels = to_network_pixels(open_rgb(paths[1]), weights.preprocess, "crop")
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.uint8
    with torch.inference_mode():
        expected = model(weights.preprocess.normalize(pixels[None])).mean(dim=(2, 3))[0].numpy()
    entries, features = load_cache(out)
    row = [e.path for e in entries].index(paths[1].relative_to(photos).as_posix())
    np.testing.assert_allclose(features[row], expected, rtol=1e-4, atol=1e-5)


def test_caffe_preprocessing_is_bgr_0_255_minus_mean():
    pre = caffe_preprocess()
    batch = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)  # R, G, B
    x = pre.normalize(batch).view(3).tolist()
    assert x == pytest.approx([30 - 103.939, 20 - 116.779, 10 - 123.68], abs=1e-4)


def test_rerun_decodes_only_new_or_changed_files_and_drops_deleted(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    paths = make_photos(photos, 6)
    first = run(photos, out)
    assert first.decoded == 6
    before = np.load(out / "features.npy")

    again = run(photos, out)
    assert (again.decoded, again.reused, again.embedded) == (0, 6, 6)
    np.testing.assert_array_equal(np.load(out / "features.npy"), before)

    make_photos(photos / "new", 1, seed=9)  # one new file
    Image.new("RGB", (50, 60), (200, 10, 10)).save(paths[2])  # one changed file
    paths[4].unlink()
    third = run(photos, out)
    assert third.decoded == 2 and third.dropped == 1 and third.embedded == 6
    assert len(manifest_rows(out)) == 6


def test_a_different_cache_key_never_overwrites_another(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 3)
    run(photos, out)
    crop_features = np.load(out / "features.npy")
    squash = ExtractConfig(**{**CFG.__dict__, "resize": "squash"})
    assert run(photos, out, squash).decoded == 3  # new key: nothing reused
    assert not np.allclose(np.load(out / "features.npy"), crop_features)
    back = run(photos, out)  # the crop cache was kept aside and comes back
    assert back.decoded == 0
    np.testing.assert_array_equal(np.load(out / "features.npy"), crop_features)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from pipeline.config import ExtractConfig
    from pipeline.extract import extract_folder

    def die_after_two_batches(done):
        if done >= 4:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = ExtractConfig(weights="random", batch_size=2, workers=int(sys.argv[3]), device="cpu")
    extract_folder(Path(sys.argv[1]), Path(sys.argv[2]), cfg, log=lambda m: None, progress=False,
                   on_batch=die_after_two_batches)
""")


@pytest.mark.parametrize("workers", [0, 1])
def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, workers):
    photos = tmp_path / "photos"
    make_photos(photos, 9)
    (photos / "b" / "empty.png").write_bytes(b"")
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(photos), str(killed), str(workers)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not (killed / "features.npy").exists()  # nothing final was written...
    assert (killed / "journal" / "entries.jsonl").read_text().count("\n") == 4  # ...but two batches were kept

    cfg = ExtractConfig(weights="random", batch_size=2, workers=0, device="cpu")
    resumed = run(photos, killed, cfg)
    assert (resumed.decoded, resumed.reused) == (6, 4)
    assert not (killed / "journal").exists()

    clean = tmp_path / "clean"
    run(photos, clean, cfg)
    assert manifest_rows(killed) == manifest_rows(clean)
    np.testing.assert_allclose(np.load(killed / "features.npy"), np.load(clean / "features.npy"),
                               rtol=1e-5, atol=1e-6, equal_nan=True)


def test_torn_journal_tail_is_discarded(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 4)
    cfg = ExtractConfig(weights="random", batch_size=2, workers=0, device="cpu")
    run(photos, out, cfg)
    # Simulate a crash mid-append: a half row and a half line after one good batch.
    from pipeline.cache import Journal
    entries, rows = load_cache(out)
    (out / "features.npy").unlink()
    (out / "manifest.csv").unlink()
    journal = Journal(out)
    journal.append(entries[:2], rows[:2])
    with open(journal.rows_path, "ab") as fh:
        fh.write(b"\0" * 100)
    with open(journal.lines_path, "a") as fh:
        fh.write('{"path": "a/img_01.jpg", "si')
    resumed = run(photos, out, cfg)
    assert (resumed.decoded, resumed.reused) == (2, 2)
    np.testing.assert_array_equal(load_cache(out)[1][:2], rows[:2])


def test_cli_reports_user_mistakes_in_one_line(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err and "Traceback" not in err

    (tmp_path / "empty").mkdir()
    assert main(["extract", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err

    make_photos(tmp_path / "p", 1)
    assert main(["extract", str(tmp_path / "p"), "--weights", str(tmp_path / "nope.pth"),
                 "--out", str(tmp_path / "outputs" / "p")]) == 2
    assert "nope.pth" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "p").exists()  # a failed first run leaves no empty output folder


def test_cli_extract_prints_the_summary(tmp_path, capsys):
    make_photos(tmp_path / "p", 2)
    code = main(["extract", str(tmp_path / "p"), "--out", str(tmp_path / "o"), "--weights", "random",
                 "--device", "cpu", "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 0
    assert "2 embedded, 0 unreadable (see manifest.csv)" in captured.out
    assert "not be semantic" in captured.err  # the random-weights warning is loud


def test_phone_and_web_formats_are_embedded_as_the_same_photo(tmp_path):
    """HEIC (phones; pillow-heif, which make install installs), AVIF and .jfif are read like
    the JPEG they were made from: the embeddings agree closely."""
    from pipeline.images import IMAGE_EXTENSIONS

    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    source = REPO / "data" / "sample" / "birds" / "pelican.jpg"
    with Image.open(source) as im:
        rgb = im.convert("RGB")
    (photos / "pelican.jpg").write_bytes(source.read_bytes())
    (photos / "pelican.jfif").write_bytes(source.read_bytes())
    made = ["pelican.jfif", "pelican.jpg"]
    for ext in (".avif", ".heic"):
        if ext in IMAGE_EXTENSIONS:  # .heic: where pillow-heif is installed; .avif: Pillow 11.2 and later
            rgb.save(photos / f"pelican{ext}", quality=90)
            made.append(f"pelican{ext}")
    assert len(made) == 4 or ".heic" not in IMAGE_EXTENSIONS
    report = run(photos, out)
    assert (report.embedded, report.unreadable, report.not_read) == (len(made), 0, 0)
    rows, features = manifest_rows(out), np.load(out / "features.npy")
    by_path = {r["path"]: features[i] for i, r in enumerate(rows)}
    assert sorted(by_path) == sorted(made)
    reference = by_path["pelican.jpg"]
    for name in made:
        cosine = by_path[name] @ reference / np.linalg.norm(by_path[name]) / np.linalg.norm(reference)
        assert cosine > 0.99, (name, cosine)
    assert np.array_equal(by_path["pelican.jfif"], reference)


def test_raw_files_are_named_not_passed_over(tmp_path, capsys):
    make_photos(tmp_path / "shoot", 2)
    for name in ("IMG_0001.CR2", "IMG_0002.NEF"):
        (tmp_path / "shoot" / name).write_bytes(b"II*\x00 raw sensor data")
    args = ["--weights", "random", "--device", "cpu", "--workers", "0"]
    assert main(["extract", str(tmp_path / "shoot"), "--out", str(tmp_path / "o"), *args]) == 0
    captured = capsys.readouterr()
    assert "not read: 2 camera RAW files (IMG_0001.CR2, IMG_0002.NEF): " in captured.err
    assert "2 embedded, 0 unreadable (see manifest.csv), 2 in formats not read" in captured.out
    assert [r["path"] for r in manifest_rows(tmp_path / "o")] == ["a/img_01.jpg", "b/img_00.png"]

    (tmp_path / "raw_only").mkdir()
    (tmp_path / "raw_only" / "DSC_0001.ARW").write_bytes(b"raw")
    assert main(["extract", str(tmp_path / "raw_only"), "--out", str(tmp_path / "o2"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no images found" in err and "1 camera RAW file (DSC_0001.ARW)" in err


def test_default_workers_one_per_core_on_a_cpu_one_fewer_on_a_gpu(monkeypatch):
    from pipeline.extract import default_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for cores, on_cpu, on_gpu in ((1, 1, 1), (2, 2, 1), (4, 4, 3), (12, 8, 11), (64, 8, 16)):
        monkeypatch.setattr("os.cpu_count", lambda: cores)
        assert default_workers(100, 16, cpu) == on_cpu, cores
        assert default_workers(100, 16, cuda) == on_gpu, cores
        assert default_workers(16, 16, cpu) == 0  # one batch: no worker processes to start


def test_the_model_gets_fewer_threads_only_when_decoding_sets_the_pace():
    from pipeline.threads import model_threads

    # 2 cores, as measured on 12 MP JPEGs (40 ms of decoding a photo): EfficientNet-Lite0's
    # 14 ms forward runs on one thread, VGG16's 57 ms on both; small photos never split
    assert model_threads(2, forward_ms=14, decode_ms=40) == 1
    assert model_threads(2, forward_ms=57, decode_ms=40) == 2
    assert model_threads(2, forward_ms=20, decode_ms=40) == 1  # the edge: half of decoding's time
    assert model_threads(2, forward_ms=21, decode_ms=40) == 2
    assert model_threads(2, forward_ms=14, decode_ms=3) == 2
    assert model_threads(8, forward_ms=14, decode_ms=40) == 4  # its share, decoding counted at half, rounded up
    assert model_threads(8, forward_ms=1, decode_ms=400) == 1
    assert model_threads(1, forward_ms=1, decode_ms=400) == 1


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two torch threads to give the model fewer")
def test_a_model_on_fewer_threads_gives_the_same_features_and_threads_come_back(tmp_path, monkeypatch):
    import pipeline.extract as E

    photos = tmp_path / "photos"
    make_photos(photos, 8)
    cfg = ExtractConfig(weights="random", batch_size=2, workers=1, device="cpu")
    threads = torch.get_num_threads()
    seen: list[int] = []
    embed = E.embed_batch

    def embed_counting_threads(*args):
        seen.append(torch.get_num_threads())
        return embed(*args)

    monkeypatch.setattr(E, "embed_batch", embed_counting_threads)
    monkeypatch.setattr(E, "split_cores", lambda *a, **k: torch.get_num_threads())
    run(photos, tmp_path / "every", cfg)
    assert set(seen) == {threads}
    monkeypatch.undo()

    measured = {}
    monkeypatch.setattr(E, "SPLIT_MIN_BATCHES", 1)
    monkeypatch.setattr(E, "SPLIT_DECODE_FLOOR_MS", 0.0)
    monkeypatch.setattr(E, "model_threads", lambda cores, forward_ms, decode_ms: measured.update(
        cores=cores, forward_ms=forward_ms, decode_ms=decode_ms) or 1)
    seen.clear()
    monkeypatch.setattr(E, "embed_batch", embed_counting_threads)
    logged: list[str] = []
    extract_folder(photos, tmp_path / "split", cfg, log=logged.append, progress=False)
    assert measured["cores"] == threads and measured["forward_ms"] > 0 and measured["decode_ms"] > 0
    assert seen[:2] == [threads, threads] and set(seen[2:]) == {1}  # the two timing calls, then the batches
    assert any(f"the model runs on 1 of {threads} threads" in line for line in logged)
    assert torch.get_num_threads() == threads
    # oneDNN computes the same numbers on one thread as on two: the split never changes a feature
    assert np.array_equal(np.load(tmp_path / "split" / "features.npy"), np.load(tmp_path / "every" / "features.npy"))


def test_short_runs_and_runs_without_workers_keep_every_thread(tmp_path, monkeypatch):
    import pipeline.extract as E

    photos = make_photos(tmp_path / "photos", 4)
    w = load_random(0)
    dataset = E.PhotoDataset(photos, w.preprocess, "crop")
    model = E.backbones.build(w)
    monkeypatch.setattr(E, "model_threads", lambda *a: pytest.fail("nothing to measure"))
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    assert E.split_cores(dataset, model, None, cpu, workers=2, batch_size=1) == threads  # 4 photos < 8 batches
    monkeypatch.setattr(E, "SPLIT_MIN_BATCHES", 1)
    assert E.split_cores(dataset, model, None, cpu, workers=0, batch_size=1) == threads
    assert E.split_cores(dataset, model, None, cpu, workers=2, batch_size=1) == threads  # small photos decode fast
