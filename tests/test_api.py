"""pipeline.api, from a notebook's side: the long frame against the CSVs it is read from,
stale clusterings refused as the stages refuse them, clear errors for folders without a
run, nothing written, and the inline HTML of a cluster (escaped names, embedded images).
The README's Python example is run as written."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import api, load_results, show_cluster
from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.layout import Layout
from pipeline.losses import LOSS_NAMES
from pipeline.tables import read_frame, write_csv, write_frame

from conftest import make_photos

REPO = Path(__file__).resolve().parents[1]
FAST = ["--weights", "random", "--device", "cpu", "--workers", "0"]
HOSTILE = "<i onmouseover=\"alert(1)\">&amp;'x.png"  # markup, an entity, both quotes


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(work, photos, out): photos in work/data/sample, one of them with a hostile name,
    run under every loss into work/outputs/sample, as `photoclust run data/sample` in work."""
    work = tmp_path_factory.mktemp("api")
    photos = work / "data" / "sample"
    made = make_photos(photos, 10)
    made[0].rename(made[0].with_name(HOSTILE))
    out = work / "outputs" / "sample"
    assert main(["run", str(photos), "--out", str(out), *FAST, "--k", "3", "--n-init", "1", "--max-iter", "10"]) == 0
    return work, photos, out


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_frame_has_one_row_per_photo_and_loss_as_the_csvs_say(run, tmp_path):
    _, _, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    layout = Layout(out)
    square = read_frame(layout.assignments("square"), ["path"])
    paths = list(square["path"])
    # map.csv for all but the last photo; two duplicate groups, one photo listed in both
    write_csv(layout.map_points, ["path", "x", "y"], [(p, i * 0.5, -i) for i, p in enumerate(paths[:-1])])
    write_csv(layout.duplicates, ["group", "path", "kind", "similarity"],
              [(0, paths[0], "exact", 1.0), (0, paths[3], "exact", 1.0), (1, paths[3], "near", 0.97),
               (1, paths[5], "near", 0.97)])
    seal = json.loads(layout.duplicates_record.read_text())  # the table stands in for one `dupes` made
    seal["csv_sha256"] = hashlib.sha256(layout.duplicates.read_bytes()).hexdigest()
    layout.duplicates_record.write_text(json.dumps(seal))

    frame = load_results(out)
    assert list(frame.columns) == api.COLUMNS
    assert len(frame) == len(paths) * len(LOSS_NAMES)
    assert list(frame["loss"].unique()) == list(LOSS_NAMES)
    for loss in LOSS_NAMES:
        csv = read_frame(layout.assignments(loss), ["path"])
        rows = frame[frame["loss"] == loss].reset_index(drop=True)
        assert list(rows["path"]) == list(csv["path"]) == paths
        assert rows["cluster"].tolist() == csv["cluster"].tolist()
        assert rows["rank"].tolist() == csv["rank"].tolist()
        assert rows["is_representative"].tolist() == (csv["is_representative"] == 1).tolist()
        assert rows["loss_to_center"].tolist() == csv["loss_to_center"].tolist()
        assert rows["map_x"].tolist()[:-1] == [i * 0.5 for i in range(len(paths) - 1)]
        assert rows["map_y"].tolist()[:-1] == [-float(i) for i in range(len(paths) - 1)]
        assert np.isnan(rows["map_x"].iloc[-1]) and np.isnan(rows["map_y"].iloc[-1])
        groups = rows.set_index("path")["duplicate_group"]
        assert (groups[paths[0]], groups[paths[3]], groups[paths[5]]) == (0, 0, 1)
        assert groups.drop([paths[0], paths[3], paths[5]]).isna().all()
    assert frame["is_representative"].dtype == bool and str(frame["duplicate_group"].dtype) == "Int64"
    assert frame.groupby(["loss", "cluster"])["is_representative"].sum().eq(1).all()

    only = load_results(out, losses=["huber", "square"])
    assert list(only["loss"].unique()) == ["huber", "square"] and len(only) == 2 * len(paths)

    # A duplicates table edited since `dupes` wrote it, a map of other features: missing, not used.
    write_csv(layout.duplicates, ["group", "path", "kind", "similarity"], [(0, paths[1], "exact", 1.0)] * 2)
    record = json.loads(layout.map_record.read_text())
    record["key"]["features_fingerprint"] = "0" * 16
    layout.map_record.write_text(json.dumps(record))
    stale = load_results(out)
    assert stale["map_x"].isna().all() and stale["duplicate_group"].isna().all()

    # Without map.csv and duplicates.csv: NaN and <NA>, the same rows otherwise.
    layout.map_points.unlink()
    layout.duplicates.unlink()
    bare = load_results(out)
    assert bare["map_x"].isna().all() and bare["map_y"].isna().all() and bare["duplicate_group"].isna().all()
    assert bare.drop(columns=["map_x", "map_y", "duplicate_group"]).equals(
        frame.drop(columns=["map_x", "map_y", "duplicate_group"]))


def test_the_photo_folder_finds_its_output_folder_as_the_cli_does(run, monkeypatch):
    work, photos, out = run
    monkeypatch.chdir(work)
    assert api.output_folder("data/sample") == Path("outputs/sample")
    assert load_results("data/sample").equals(load_results(out))
    assert load_results(photos).equals(load_results("outputs/sample"))


def test_ranks_are_computed_when_represent_has_not_run(run, tmp_path):
    _, _, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    expected = load_results(out)
    for loss in LOSS_NAMES:  # as `cluster` leaves them: no rank columns yet
        path = Layout(out).assignments(loss)
        write_frame(path, read_frame(path, ["path"])[["path", "cluster", "loss_to_center"]])
    assert load_results(out).equals(expected)


def test_a_stale_clustering_is_refused_with_the_stages_message(run, tmp_path):
    work, photos, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    more = tmp_path / "photos"
    shutil.copytree(photos, more)
    make_photos(tmp_path / "extra", 1, seed=9)[0].rename(more / "new.png")
    assert main(["extract", str(more), "--out", str(out), *FAST]) == 0  # the features change, the clusters do not
    with pytest.raises(UserError) as from_api:
        load_results(out)
    assert main(["render", "--out", str(out)]) == 2  # the stage refuses it too
    from pipeline.render import render_run

    with pytest.raises(UserError) as from_stage:
        render_run(out)
    assert str(from_api.value) == str(from_stage.value)
    assert "other features" in str(from_api.value) and "\n" not in str(from_api.value)
    with pytest.raises(UserError, match="other features"):
        show_cluster(out, "square", 0)


def test_a_folder_without_a_run_says_which_command_to_run(run, tmp_path, monkeypatch):
    _, _, cached = run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "holiday").mkdir()
    with pytest.raises(UserError, match=r"photoclust run holiday"):
        load_results("holiday")
    with pytest.raises(UserError, match="no such folder"):
        load_results("nowhere")
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    (extracted / ".photoclust-output").write_text("")
    with pytest.raises(UserError, match="photoclust extract"):
        load_results(extracted)
    for name in ("features.npy", "manifest.csv", "features.json", "cache_key.json", "source.json"):
        shutil.copy2(cached / name, extracted / name)
    with pytest.raises(UserError, match=r"no clusterings .*photoclust cluster --out"):
        load_results(extracted)
    with pytest.raises(UserError, match=r"no absolute clustering .*--losses absolute"):
        load_results(_only(cached, tmp_path, "square"), losses=["absolute"])


def _only(cached: Path, tmp_path: Path, loss: str) -> Path:
    out = tmp_path / f"only_{loss}"
    shutil.copytree(cached, out)
    for other in LOSS_NAMES:
        if other != loss:
            shutil.rmtree(Layout(out).loss_dir(other))
    return out


def test_reading_writes_nothing_even_where_thumbnails_are_missing(run, tmp_path):
    _, _, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    for thumb in list(Layout(out).thumbs.iterdir())[::2]:
        thumb.unlink()
    before = _files(out)
    load_results(out)
    for cluster in range(3):
        view = show_cluster(out, "square", cluster, limit=None)
        assert view._repr_html_().count("data:image/jpeg;base64,") == view.size
    assert _files(out) == before


def test_reading_waits_for_a_commit_in_progress_and_never_finishes_it(run, tmp_path, monkeypatch):
    _, _, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    pending = out / ".features.npy.next"
    shutil.copy2(out / "features.npy", pending)
    (out / "features.npy").unlink()  # as between a commit's record and its renames
    monkeypatch.setattr(api, "READ_ATTEMPTS", 2)
    with pytest.raises(UserError, match="being committed"):
        load_results(out)
    assert pending.is_file() and not (out / "features.npy").exists()  # left for the run that owns it


def test_a_file_replaced_during_a_read_makes_it_read_again(run, tmp_path, monkeypatch):
    _, _, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    path = Layout(out).assignments("square")
    relabelled = read_frame(path, ["path"])
    relabelled["cluster"] = (relabelled["cluster"] + 1) % 3
    calls = []
    read_map = api._map_points

    def meanwhile(folder, fingerprint):  # another run replaces square's assignments after they were read
        calls.append(folder)
        if len(calls) == 1:
            write_frame(path, relabelled)
        return read_map(folder, fingerprint)

    monkeypatch.setattr(api, "_map_points", meanwhile)
    frame = load_results(out)
    assert len(calls) == 2
    assert frame.loc[frame["loss"] == "square", "cluster"].tolist() == relabelled["cluster"].tolist()


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def test_the_cluster_html_escapes_hostile_names_and_embeds_every_thumbnail(run):
    _, _, out = run
    frame = load_results(out, losses=["huber"])
    row = frame[frame["path"].str.endswith(HOSTILE)].iloc[0]
    view = show_cluster(out, "huber", int(row["cluster"]), limit=None)
    html = view._repr_html_()
    assert HOSTILE not in html and "<i " not in html
    parsed = _Tags()
    parsed.feed(html)
    assert set(parsed.tags) <= {"div", "p", "b", "figure", "img", "figcaption", "br", "span"}
    assert not [name for name, _ in parsed.attributes if name.startswith("on")]
    assert any(HOSTILE in text for text in parsed.text)  # shown as the name it is, once unescaped
    assert any(value.endswith("/" + HOSTILE) for name, value in parsed.attributes if name == "alt")
    sources = [value for name, value in parsed.attributes if name == "src"]
    assert len(sources) == view.size == len(frame[frame["cluster"] == row["cluster"]])
    for source in sources:
        assert source.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as im:
            assert im.format == "JPEG" and max(im.size) <= 160
    assert view.members["rank"].tolist() == sorted(view.members["rank"])  # nearest first
    assert HOSTILE in repr(view)


def test_show_cluster_limits_and_refuses_what_is_not_there(run):
    _, _, out = run
    frame = load_results(out, losses=["square"])
    biggest = int(frame["cluster"].value_counts().idxmax())
    view = show_cluster(out, "square", biggest, limit=2)
    assert len(view.members) == 2 and view.members["rank"].tolist() == [0, 1]
    assert view._repr_html_().count("<figure") == 2 and "showing the nearest 2" in view._repr_html_()
    with pytest.raises(UserError, match="no cluster 7"):
        show_cluster(out, "square", 7)
    with pytest.raises(UserError, match="limit"):
        show_cluster(out, "square", 0, limit=0)


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_example_runs_against_a_real_run(run, monkeypatch):
    work, _, _ = run
    monkeypatch.chdir(work)  # the example names data/sample and outputs/sample, as in the repository
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    frame = namespace["frame"]
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == api.COLUMNS and len(frame) == 10 * 6
    assert namespace["view"]._repr_html_().count("data:image/jpeg;base64,") >= 1
    for name, value in namespace.items():
        if isinstance(value, pd.DataFrame) and name != "frame":
            assert len(value), f"{name} is empty"
