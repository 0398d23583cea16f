"""`photoclust patches`: IDX reading, patch extraction, the chunked nearest-center search,
reconstruction, the MSE curve and resuming, on small IDX files the tests write."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from pipeline import idx, nearest
from pipeline import patches as P
from pipeline.cli import main
from pipeline.layout import PatchesLayout, default_patches_output


def structured_images(n: int = 40, side: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images tiled with 4 x 4 blocks of a few fixed textures on a black background (blank
    regions included), and a label per image (its main texture)."""
    rng = np.random.default_rng(seed)
    textures = rng.integers(40, 256, size=(6, 4, 4)).astype(np.uint8)
    images = np.zeros((n, side, side), dtype=np.uint8)
    labels = rng.integers(0, 6, size=n)
    for i in range(n):
        for by in range(0, side, 4):
            for bx in range(0, side, 4):
                if rng.random() < 0.6:
                    choice = labels[i] if rng.random() < 0.7 else rng.integers(0, 6)
                    block = images[i, by:by + 4, bx:bx + 4]
                    block[...] = textures[choice][:block.shape[0], :block.shape[1]]
    return images, labels


def write_idx(folder, images, labels=None, prefix="train", gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    data = idx.to_bytes(images)
    path = folder / f"{prefix}-images-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    if labels is not None:
        lab = bytes([0, 0, 8, 1]) + np.asarray([len(labels)], ">u4").tobytes() + np.asarray(labels, np.uint8).tobytes()
        (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(gzip.compress(lab, mtime=0) if gz else lab)
    return path


def direct_patches(images: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    kept, blank = [], 0
    for image in images:
        for y in range(image.shape[0] - size + 1):
            for x in range(image.shape[1] - size + 1):
                patch = image[y:y + size, x:x + size].reshape(-1)
                if patch.any():
                    kept.append(patch)
                else:
                    blank += 1
    return np.array(kept, dtype=np.uint8).reshape(-1, size * size), blank


def test_gz_and_plain_idx_read_the_same(tmp_path):
    images, labels = structured_images(7)
    gz = write_idx(tmp_path / "gz", images, labels, gz=True)
    plain = write_idx(tmp_path / "plain", images, labels, gz=False)
    a, b = idx.read_images(gz), idx.read_images(plain)
    assert a.dtype == np.uint8 and np.array_equal(a, images) and np.array_equal(b, images)
    assert np.array_equal(idx.read_labels(idx.labels_beside(gz), 7), labels)
    assert np.array_equal(idx.read_labels(idx.labels_beside(plain), 7), labels)
    assert P.load_source(gz).fingerprint == P.load_source(plain).fingerprint


@pytest.mark.parametrize("size", [5, 3])
def test_extracted_patches_match_a_direct_loop_and_blank_ones_are_counted(size):
    images, _ = structured_images(9, side=13)
    patches, blank = P.extract_patches(images, size)
    expected, expected_blank = direct_patches(images, size)
    assert np.array_equal(patches, expected)
    assert blank == expected_blank > 0  # the images have blank regions: some were dropped
    assert len(patches) + blank == 9 * (13 - size + 1) ** 2
    folder = [images[0], images[1][:, :9]]  # a folder's images may differ in size
    patches, blank = P.extract_patches(folder, size)
    expected = np.concatenate([direct_patches(im[None], size)[0] for im in folder])
    assert np.array_equal(patches, expected)


def test_reconstruction_from_a_dictionary_of_all_its_patches_is_exact():
    images, _ = structured_images(3)
    image = images[1]
    dictionary = np.unique(P.extract_patches(image[None], 5)[0], axis=0).astype(np.float32)
    assert np.array_equal(P.reconstruct(image, dictionary, 5), image.astype(np.float64))
    coarse = dictionary[:2]  # a poorer dictionary does not rebuild it exactly
    assert not np.array_equal(P.reconstruct(image, coarse, 5), image.astype(np.float64))


def test_nearest_search_matches_float64_brute_force():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 25)).astype(np.float32) * 40 + 100
    C = rng.normal(size=(70, 25)).astype(np.float32) * 40 + 100
    reference = nearest.nearest_reference(X, C)
    d64 = ((X[:, None, :].astype(np.float64) - C[None].astype(np.float64)) ** 2).sum(-1)
    top2 = np.sort(d64, 1)[:, :2]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3 * top2[:, 0]  # rows without a near-tie
    backends = ["torch"] + (["faiss"] if nearest.faiss_available() else [])
    for backend in backends:
        labels, d2 = nearest.Searcher(torch.from_numpy(C), backend).search(torch.from_numpy(X))
        assert np.array_equal(labels.numpy()[clear], reference[clear]), backend
        assert np.allclose(d2.numpy(), top2[:, 0], rtol=1e-4), backend
    # the full pass: uint8 rows, chunked, sums and counts as NumPy computes them
    U = np.clip(X, 0, 255).astype(np.uint8)
    result = nearest.full_pass(U, C, "square", None, with_sums=True, with_labels=True, chunk_rows=700)
    labels = nearest.nearest_reference(U, C)
    d_u = ((U[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1)
    ok = np.diff(np.sort(d_u, 1)[:, :2], axis=1)[:, 0] > 1e-3
    assert np.array_equal(result.labels[ok], labels[ok])
    assert np.array_equal(result.counts, np.bincount(result.labels, minlength=70))
    sums = np.zeros((70, 25))
    np.add.at(sums, result.labels, U.astype(np.float64))
    assert np.allclose(result.sums, sums)
    assert result.sq_error == pytest.approx(((U - C[result.labels].astype(np.float64)) ** 2).sum(), rel=1e-9)


def test_full_pass_in_parallel_chunks_gives_the_serial_result(monkeypatch):
    """On a CPU the chunks run in one thread each (searches on one thread); the totals are
    added in chunk order, so every number equals the one-thread pass's, bit for bit."""
    import threading
    import time

    rng = np.random.default_rng(5)
    U = np.clip(rng.normal(size=(5000, 25)) * 40 + 100, 0, 255).astype(np.uint8)
    C = rng.normal(size=(40, 25)).astype(np.float32) * 40 + 100
    threads_seen, chunk_sizes = set(), []
    search = nearest.Searcher.search

    def traced(self, X, threads=None):
        threads_seen.add(threading.current_thread().name)
        chunk_sizes.append((X.shape[0], threads))
        time.sleep(0.01)  # every worker gets a chunk while another works
        return search(self, X, threads)

    monkeypatch.setattr(nearest.Searcher, "search", traced)
    monkeypatch.setattr(nearest, "MIN_PARALLEL_ROWS", 64)
    backends = ["torch"] + (["faiss"] if nearest.faiss_available() else [])
    before = torch.get_num_threads()
    for backend in backends:
        for loss, param in (("square", None), ("correntropy", 60.0)):
            results = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                threads_seen.clear()
                chunk_sizes.clear()
                try:
                    results.append(nearest.full_pass(U, C, loss, param, backend=backend, with_sums=True,
                                                     with_labels=True, chunk_rows=600))
                finally:
                    torch.set_num_threads(before)
                assert len(threads_seen) == threads, (backend, loss, threads_seen)
            # the 2-thread pass: 5000 rows in chunks of at most 600 make 10 equal chunks (9 would
            # leave a thread idle), each searched on its own thread
            assert chunk_sizes == [(500, 1)] * 10, chunk_sizes
            serial, parallel = results
            assert np.array_equal(serial.labels, parallel.labels)
            assert np.array_equal(serial.counts, parallel.counts)
            assert np.array_equal(serial.sums, parallel.sums)
            assert (serial.sq_error, serial.loss_total) == (parallel.sq_error, parallel.loss_total)
        # data that makes one chunk: its search keeps every core (no thread of its own)
        torch.set_num_threads(2)
        chunk_sizes.clear()
        try:
            nearest.full_pass(U[:50], C, backend=backend)
        finally:
            torch.set_num_threads(before)
        assert chunk_sizes == [(50, None)], chunk_sizes
    assert torch.get_num_threads() == before


def test_parse_ks():
    assert P.parse_ks("100:1000:100,2000:10000:1000")[:3] == [100, 200, 300]
    assert len(P.parse_ks(P.DEFAULT_KS)) == 19 and P.parse_ks("5,2,5,3:4") == [2, 3, 4, 5]
    for bad in ("", "a", "10:5", "0", "3:9:0"):
        with pytest.raises(P.UserError):
            P.parse_ks(bad)


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_mse_falls_as_k_grows_and_a_rerun_reuses_every_k(tmp_path, capsys):
    images, labels = structured_images(40)
    source = write_idx(tmp_path / "data", images, labels)
    write_idx(tmp_path / "data", images[:6], labels[:6], prefix="t10k")
    out = tmp_path / "out"
    argv = ["patches", source, "--out", out, "--k", "2,4,8,16", "--show", "3", "--backend", "torch",
            "--device", "cpu"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    layout = PatchesLayout(out)
    table = np.genfromtxt(layout.mse_table, delimiter=",", names=True)
    assert list(table["k"]) == [2, 4, 8, 16]
    assert np.all(np.diff(table["mse"]) < 0)  # more centers, smaller error
    patches, blank = P.extract_patches(images, 5)
    summary = json.loads(layout.summary.read_text())
    assert summary["patches"] == len(patches) and summary["blank_patches"] == blank
    # the reported MSE is that of every patch on its nearest saved center
    C = np.load(layout.dictionary(8))
    d2 = ((patches[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1).min(1)
    assert table["mse"][2] == pytest.approx(d2.mean() / 25, rel=1e-6)
    record = json.loads(layout.record(8).read_text())
    assert record["counts"] == sorted(record["counts"], reverse=True) and sum(record["counts"]) == len(patches)
    for k in (2, 4, 8, 16):
        assert layout.atlas(k).is_file()
    assert layout.reconstructions("train").is_file() and layout.reconstructions("test").is_file()
    assert layout.mse_plot.is_file()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    code, stdout, err = run_cli(argv, capsys)
    assert code == 0 and "0 dictionaries fitted, 4 reused" in stdout, stdout
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # same bytes

    # a dictionary made otherwise, or damaged, is detected and fitted again, never used
    record["seed"] = 99
    layout.record(4).write_text(json.dumps(record))
    layout.dictionary(16).write_bytes(layout.dictionary(16).read_bytes()[:-8] + b"\0" * 8)
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0 and "2 dictionaries fitted, 2 reused" in stdout, stdout
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # another seed is another dictionary: every K refitted
    code, stdout, err = run_cli([*argv, "--seed", "1"], capsys)
    assert code == 0 and "4 dictionaries fitted, 0 reused" in stdout, stdout


@pytest.mark.parametrize("loss", ["absolute", "huber", "pseudo_huber", "correntropy", "epsilon_insensitive"])
def test_every_loss_learns_a_dictionary(tmp_path, loss):
    images, _ = structured_images(4)
    source = write_idx(tmp_path, images, gz=False)
    report = P.patches_run(source, tmp_path / "out", ks=[4], loss=loss, show=1, backend="torch", device="cpu",
                           log=lambda m: None, progress=False)
    assert report.fitted == [4]
    record = json.loads(PatchesLayout(tmp_path / "out").record(4).read_text())
    assert record["loss"] == loss and record["mse"] > 0 and sum(record["counts"]) == report.patches
    assert (record["param"] is None) == (loss == "absolute")


def test_a_folder_of_images_is_a_source(tmp_path):
    from PIL import Image

    images, _ = structured_images(4)
    folder = tmp_path / "pics"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).convert("RGB").save(folder / f"im{i}.png")
    source = P.load_source(folder)
    assert source.train.name == "images" and all(np.array_equal(a, b) for a, b in zip(source.train.images, images))
    assert default_patches_output(folder).as_posix() == "outputs/patches/pics"


@pytest.mark.parametrize("damage, words", [
    (lambda data: b"\x08\x03\x00\x00" + data[4:], "bad magic number"),
    (lambda data: data[:-10], "truncated"),
    (lambda data: data[:6], "truncated"),
    (lambda data: gzip.compress(data, mtime=0)[:-20], "gzip"),
])
def test_a_malformed_idx_file_gets_one_clear_line(tmp_path, capsys, damage, words):
    images, _ = structured_images(3)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(idx.to_bytes(images)))
    code, stdout, err = run_cli(["patches", path, "--out", tmp_path / "out", "--k", "2"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], err
    assert "Traceback" not in err


def test_bad_options_get_one_line(tmp_path, capsys):
    images, _ = structured_images(3)
    source = write_idx(tmp_path, images)
    for extra, words in ((["--k", "2:1"], "--k"), (["--size", "0"], "--size"), (["--loss", "nope"], "--loss"),
                         (["--k", "100000"], "--k 100000"), (["--show", "x"], "--show")):
        code, _, err = run_cli(["patches", source, "--out", tmp_path / "out", *extra], capsys)
        errors = [line for line in err.splitlines() if line.startswith("photoclust: error:")]
        assert code == 2 and len(errors) == 1 and words in errors[0] and "Traceback" not in err, (extra, err)
