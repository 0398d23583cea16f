"""Mistakes in pipeline.toml, on the command line and in loss parameters: one line on
stderr that names where the bad value was set, exit status 2, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pipeline import losses as L
from pipeline.cache import Entry, activate_key, write_cache
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.kmeans import GeneralizedKMeans
from pipeline.losses import LossInputError

from conftest import needs_permission_bits


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("photoclust: error: "), err
    return err


def write_toml(folder: Path, text: str) -> Path:
    path = folder / "cfg.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def features_cache(tmp_path_factory) -> Path:
    """An output folder holding 200 random 512-d features, as `extract` would leave it."""
    out = tmp_path_factory.mktemp("cache") / "out"
    rng = np.random.default_rng(0)
    features = rng.random((200, 512), dtype=np.float32)
    activate_key(out, {"weights": "test"})
    write_cache(out, [Entry(f"p/{i}.jpg", 1, 1, f"{i:040x}", "ok") for i in range(200)], features)
    return out


@pytest.fixture(scope="module")
def unit_rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 64)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- 1. types in the file

@pytest.mark.parametrize("text, names", [
    ("[cluster]\nlosses = 5\n", "cfg.toml: cluster.losses must be a list of loss names or a comma-separated"),
    ("cluster = 5\n", "cfg.toml: cluster must be a table"),
    ('[cluster]\nexact = "yes"\n', "cfg.toml: cluster.exact must be true or false"),
    ('extract = "x"\n', "cfg.toml: extract must be a table"),
    ("[extract]\nweights = 5\n", "cfg.toml: extract.weights must be"),
    ("[cluster.params]\nhuber = true\n", "cfg.toml: cluster.params.huber (delta) must be a positive number"),
    ("[render]\npalette = 1\n", "cfg.toml: render.palette must be true or false; got 1"),
    ("[render]\nstrips = false\n", "cfg.toml: unknown key(s) ['strips'] in [render]"),
])
def test_a_file_value_of_the_wrong_type_names_its_key(tmp_path, capsys, text, names):
    config = write_toml(tmp_path, text)
    with pytest.raises(UserError, match=re.escape(names)):
        load_config(config)
    assert main(["cluster", "--out", str(tmp_path), "--config", str(config)]) == 2
    assert names in one_error_line(capsys)


def test_losses_may_be_a_list_or_a_comma_separated_string(tmp_path):
    as_list = load_config(write_toml(tmp_path, '[cluster]\nlosses = ["square", "huber"]\n'))
    as_text = load_config(write_toml(tmp_path, '[cluster]\nlosses = "square, huber"\n'))
    assert as_list.cluster.losses == as_text.cluster.losses == ("square", "huber")


@needs_permission_bits
def test_an_unreadable_config_file_is_one_line(tmp_path, capsys):
    config = write_toml(tmp_path, "[cluster]\nk = 3\n")
    config.chmod(0)
    try:
        if _readable(config):
            pytest.skip("running as a user who can read any file")
        assert main(["cluster", "--out", str(tmp_path), "--config", str(config)]) == 2
        assert "cfg.toml: cannot read it" in one_error_line(capsys)
    finally:
        config.chmod(0o644)


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- 2. where a value came from

@pytest.mark.parametrize("args, names", [
    (["--k", "0"], "--k must be an integer >= 1 or \"auto\", got 0"),
    (["--k", "abc"], "--k must be an integer >= 1 or \"auto\", got abc"),
    (["--n-init", "0"], "--n-init must be an integer >= 1, got 0"),
    (["--n-init", "abc"], "--n-init must be an integer >= 1, got abc"),
    (["--max-iter", "-1"], "--max-iter must be an integer >= 1, got -1"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--normalize", "cosine"], "--normalize must be one of l2, none; got cosine"),
    (["--losses", "square,hinge"], "--losses: unknown loss 'hinge'"),
    (["--param", "huber=-1"], "--param huber (delta) must be a positive number"),
])
def test_a_bad_flag_is_blamed_on_the_flag_not_the_file(tmp_path, capsys, args, names):
    config = write_toml(tmp_path, "[cluster]\nk = 3\n")
    assert main(["cluster", "--out", str(tmp_path), "--config", str(config), *args]) == 2
    line = one_error_line(capsys)
    assert names in line and "cfg.toml" not in line


@pytest.mark.parametrize("args, names", [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1 or \"auto\", got 0"),
    (["--workers", "many"], "--workers must be an integer >= 0 or \"auto\", got many"),
])
def test_a_bad_extract_flag_is_blamed_on_the_flag(tmp_path, capsys, args, names):
    config = write_toml(tmp_path, "[extract]\nbatch_size = 8\n")
    assert main(["extract", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(config), *args]) == 2
    line = one_error_line(capsys)
    assert names in line and "cfg.toml" not in line


def test_run_names_its_own_cluster_flags(tmp_path, capsys):
    config = write_toml(tmp_path, "")
    assert main(["run", str(tmp_path), "--config", str(config), "--cluster-seed", "x"]) == 2
    assert "--cluster-seed must be an integer >= 0, got x" in one_error_line(capsys)


def test_a_bad_file_value_is_blamed_on_the_file_and_a_flag_overrides_it(tmp_path, capsys):
    config = write_toml(tmp_path, "[cluster]\nk = 0\n[cluster.params]\nhuber = -1\n")
    assert main(["cluster", "--out", str(tmp_path), "--config", str(config)]) == 2
    assert "cfg.toml: cluster.k must be an integer >= 1" in one_error_line(capsys)
    cfg = load_config(config, cluster={"k": "3", "params": {"huber": "0.5"}}).cluster
    assert cfg.k == 3 and cfg.params["huber"] == 0.5
    assert cfg.origin("k") == "--k" and cfg.origin("params.huber") == "--param huber"
    assert cfg.origin("params.correntropy") == "cluster.params.correntropy"  # the default


def test_k_larger_than_the_images_names_the_flag(features_cache, capsys):
    assert main(["cluster", "--out", str(features_cache), "--k", "500", "--losses", "square"]) == 2
    assert "--k: k=500 is larger than the 200 embedded images" in one_error_line(capsys)


# ----------------------------------------------------------------------------- 3. absurd loss parameters

@pytest.mark.parametrize("loss, value", [
    ("huber", 1e300), ("pseudo_huber", 1e-300), ("correntropy", 1e-30), ("epsilon_insensitive", 1e30),
])
def test_the_engine_refuses_a_parameter_far_from_the_data_scale(unit_rows, loss, value):
    stated = re.escape(f"{L.PARAM_NAME[loss]} = {value:g} is outside the usable range ")
    with pytest.raises(LossInputError, match=rf"^{stated}\S+ to \S+ .*or auto$"):
        GeneralizedKMeans(4, loss, param=value, n_init=1, device="cpu").fit(unit_rows)


@pytest.mark.parametrize("loss", list(L.PARAM_NAME))
@pytest.mark.parametrize("factor", [1.01e-4, 0.99e4])
def test_every_accepted_parameter_gives_k_clusters_and_a_finite_objective(unit_rows, loss, factor):
    """The usable range is 1e-4 to 1e4 times the RMS distance to the mean (per coordinate
    for huber and pseudo_huber); its very ends must still cluster."""
    spread = ((unit_rows - unit_rows.mean(0)) ** 2).astype(np.float64)
    scale = np.sqrt(spread.mean() if loss in ("huber", "pseudo_huber") else spread.sum(1).mean())
    value = factor * scale
    model = GeneralizedKMeans(4, loss, param=value, n_init=1, device="cpu").fit(unit_rows)
    assert np.isfinite(model.objective_)
    assert np.bincount(model.labels_, minlength=4).min() > 0


def test_a_large_pseudo_huber_delta_behaves_like_half_the_square_loss(unit_rows):
    """delta = 1000 is 8000 times the spread per coordinate: the loss is r^2/2 to float32
    precision, so it must not round to 0 and drop every point into the first cluster."""
    model = GeneralizedKMeans(4, "pseudo_huber", param=1000.0, n_init=1, device="cpu").fit(unit_rows)
    square = GeneralizedKMeans(4, "square", n_init=1, device="cpu").fit(unit_rows)
    assert np.bincount(model.labels_, minlength=4).min() > 0
    assert model.objective_ == pytest.approx(square.objective_ / 2, rel=1e-3)


def test_empty_clusters_are_reseeded_even_when_every_cost_ties(unit_rows):
    # epsilon = 10 puts every point inside the tube of every center: all costs are 0.
    init = np.repeat(unit_rows[:1], 4, axis=0)
    model = GeneralizedKMeans(4, "epsilon_insensitive", param=10.0, init=init, device="cpu").fit(unit_rows)
    assert np.bincount(model.labels_, minlength=4).min() > 0


def test_a_cluster_that_cannot_be_filled_fails_with_a_clear_message():
    X = np.repeat(np.eye(2, 8, dtype=np.float32), 50, axis=0)  # two distinct rows
    with pytest.raises(LossInputError, match="1 of the k=3 clusters stayed empty"):
        GeneralizedKMeans(3, "huber", param=0.1, init=X[[0, 50, 0]], device="cpu").fit(X)


@pytest.mark.parametrize("param, loss", [
    ("huber=1e300", "huber"), ("pseudo_huber=1e-300", "pseudo_huber"), ("correntropy=1e-30", "correntropy"),
])
def test_cluster_names_the_flag_of_an_absurd_parameter(features_cache, capsys, param, loss):
    assert main(["cluster", "--out", str(features_cache), "--losses", loss, "--param", param]) == 2
    line = one_error_line(capsys)
    assert f"--param {loss}: {L.PARAM_NAME[loss]} = " in line and "usable range" in line and "auto" in line


def test_cluster_and_sweep_name_the_file_key_of_an_absurd_parameter(features_cache, tmp_path, capsys):
    config = write_toml(tmp_path, "[cluster.params]\ncorrentropy = 1e-30\n")
    for args in (["cluster", "--losses", "correntropy"], ["sweep", "--losses", "correntropy", "--k-range", "2:3"]):
        assert main([*args, "--out", str(features_cache), "--config", str(config)]) == 2
        assert "cfg.toml: cluster.params.correntropy: sigma = 1e-30 is outside" in one_error_line(capsys)


def test_executor_settings_name_the_flag_or_key(tmp_path):
    with pytest.raises(UserError, match=r"--executor must be one of local, ray; got spark"):
        load_config(None, extract={"executor": "spark"})
    with pytest.raises(UserError, match=r"--ray-actors must be an integer >= 1 or \"auto\", got 0"):
        load_config(None, extract={"ray_actors": "0"})
    cfg = write_toml(tmp_path, '[extract]\nexecutor = "ray"\nray_address = "10.0.0.1:6379"\nray_actors = 3\n')
    ext = load_config(cfg).extract
    assert (ext.executor, ext.ray_address, ext.ray_actors) == ("ray", "10.0.0.1:6379", 3)
    with pytest.raises(UserError, match=r"cfg.toml: extract.ray_address must be"):
        load_config(write_toml(tmp_path, '[extract]\nray_address = ""\n'))
