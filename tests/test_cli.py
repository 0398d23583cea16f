"""The command line itself: one spelling per idea, help everywhere, --version, and which
output folder a stage reads when it is not given --out."""

from __future__ import annotations

import argparse
import shutil
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest

import pipeline
from pipeline import cli
from pipeline.cli import build_parser, main

from conftest import make_photos

FAST = ["--weights", "random", "--device", "cpu", "--workers", "0"]
# The old spellings that still work but are hidden from --help.
DEPRECATED = {("sweep", "--loss"): "--losses", ("sweep", "--k"): "--k-range"}


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(subcommand path, action) for every action of every (sub)parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield path + (name,), argparse.Action([name], name, help=helps.get(name))
                yield from _walk(sub, path + (name,))
        else:
            yield path, action


def test_every_option_of_every_subcommand_has_help():
    seen, hidden = 0, set()
    for path, action in _walk(build_parser()):
        if isinstance(action, argparse._HelpAction):
            continue
        where = " ".join(path + tuple(action.option_strings or [action.dest]))
        if action.help == argparse.SUPPRESS:
            hidden.add((path[-1], action.option_strings[0]))
            continue
        assert isinstance(action.help, str) and action.help.strip(), f"{where} has no help"
        seen += 1
    assert hidden == set(DEPRECATED)  # only the deprecated aliases are hidden
    assert seen > 60


def test_version(capsys, monkeypatch):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("photoclust ") and len(printed.split()) == 2

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr("importlib.metadata.version", not_installed)
    monkeypatch.setattr(pipeline, "__version__", "9.8.7")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == "photoclust 9.8.7"


def test_sweep_spells_losses_and_k_range_like_the_other_stages(capsys):
    args = build_parser().parse_args(["sweep", "--losses", "square,huber", "--k-range", "2:9"])
    assert (args.losses, args.k_range) == ("square,huber", "2:9")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("old, new", [(old, new) for (_, old), new in DEPRECATED.items()])
def test_old_sweep_spellings_still_work_with_a_one_line_notice(old, new, capsys):
    value = {"--loss": "huber", "--k": "2:9"}[old]
    args = build_parser().parse_args(["sweep", old, value])
    assert getattr(args, {"--losses": "losses", "--k-range": "k_range"}[new]) == value
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old} is deprecated; use {new}" in err


def test_export_loss_is_one_name_and_says_so(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--loss NAME" in text and "one loss" in text
    with pytest.raises(SystemExit):
        main(["export", "--losses", "square", "--to", "x"])  # not an export option


# ------------------------------------------------- which output folder a stage reads

@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> tuple[Path, Path]:
    """Photos in .../holiday, extracted (as `extract holiday` would) and clustered under square."""
    root = tmp_path_factory.mktemp("cli")
    photos = root / "photos" / "holiday"
    make_photos(photos, 8)
    out = root / "extracted"
    assert main(["extract", str(photos), "--out", str(out), *FAST]) == 0
    assert main(["cluster", "--out", str(out), "--k", "2", "--losses", "square", "--n-init", "1"]) == 0
    assert main(["represent", "--out", str(out)]) == 0
    return photos, out


def _stage(name: str, tmp_path: Path) -> tuple[list[str], str | None]:
    """The options of one run of a stage, and the file it writes into the output folder."""
    return {
        "cluster": (["--k", "2", "--losses", "huber", "--n-init", "1"], "clusters/huber/summary.json"),
        "represent": (["--losses", "square"], "clusters/square/representatives.csv"),
        "dupes": ([], "duplicates.csv"),
        "render": (["--losses", "square"], "index.html"),
        "sweep": (["--k-range", "2:3", "--n-init", "1"], "sweep/square.json"),
        "evaluate": ([], "evaluation.csv"),
        "export": (["--loss", "square", "--to", str(tmp_path / "exported")], None),
    }[name]


STAGES = ["cluster", "represent", "dupes", "render", "sweep", "evaluate", "export"]


def _copy(extracted: Path, to: Path, product: str | None) -> Path:
    shutil.copytree(extracted, to)
    if product:
        (to / product).unlink(missing_ok=True)
    return to


def _wrote(out: Path, product: str | None, tmp_path: Path) -> bool:
    if product is None:  # export writes to --to
        return (tmp_path / "exported" / "cluster_0").is_dir()
    return (out / product).is_file()


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_given_the_photo_folder_reads_its_output_folder_not_the_sample(stage, extracted, tmp_path,
                                                                              monkeypatch):
    photos, cached = extracted
    options, product = _stage(stage, tmp_path)
    work = tmp_path / "work"
    out = _copy(cached, work / "outputs" / "holiday", product)
    decoy = work / "outputs" / "sample"
    decoy.mkdir()  # the sample's folder exists, but the user extracted `holiday`
    monkeypatch.chdir(work)
    assert main([stage, str(photos), *options]) == 0
    assert _wrote(out, product, tmp_path)
    assert list(decoy.iterdir()) == []


@pytest.mark.parametrize("stage", STAGES)
def test_out_wins_over_the_photo_folder(stage, extracted, tmp_path, monkeypatch):
    photos, cached = extracted
    options, product = _stage(stage, tmp_path)
    work = tmp_path / "work"
    chosen = _copy(cached, tmp_path / "chosen", product)
    derived = work / "outputs" / "holiday"
    derived.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main([stage, str(photos), "--out", str(chosen), *options]) == 0
    assert _wrote(chosen, product, tmp_path)
    assert list(derived.iterdir()) == []


@pytest.mark.parametrize("stage", STAGES)
def test_without_a_folder_or_out_the_sample_is_used_if_it_exists(stage, extracted, tmp_path, monkeypatch):
    _, cached = extracted
    options, product = _stage(stage, tmp_path)
    sample = _copy(cached, tmp_path / "work" / "outputs" / "sample", product)
    monkeypatch.chdir(tmp_path / "work")
    assert main([stage, *options]) == 0
    assert _wrote(sample, product, tmp_path)


@pytest.mark.parametrize("stage", STAGES)
def test_without_a_folder_or_out_or_sample_one_line_says_what_to_pass(stage, tmp_path, monkeypatch, capsys):
    options, _ = _stage(stage, tmp_path)
    (tmp_path / "outputs" / "holiday").mkdir(parents=True)  # another run's folder is not guessed either
    monkeypatch.chdir(tmp_path)
    assert main([stage, *options]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert "pass the photo folder" in captured.err and "--out" in captured.err
    assert not (tmp_path / "outputs" / "sample").exists()


@pytest.mark.parametrize("stage", STAGES)
def test_a_photo_folder_never_extracted_says_to_extract_it(stage, tmp_path, monkeypatch, capsys):
    options, _ = _stage(stage, tmp_path)
    (tmp_path / "outputs" / "sample").mkdir(parents=True)  # not used instead of the folder named
    monkeypatch.chdir(tmp_path)
    assert main([stage, "new_photos", *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "photoclust extract new_photos" in err
    assert not (tmp_path / "outputs" / "new_photos").exists()


def test_the_default_output_folder_is_the_one_extract_chose(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "My Photos").mkdir()
    args = build_parser().parse_args(["cluster", "My Photos/"])
    (tmp_path / "outputs" / "My Photos").mkdir(parents=True)
    assert cli._stage_out(args) == cli._default_out("My Photos") == Path("outputs") / "My Photos"
