"""Where everything lives in an output folder: the one place that knows its paths.

  .photoclust-output   marks the folder as ours (finding photos never descends into it)
  features.npy, manifest.csv, features.json (the record that vouches for both), cache_key.json,
  journal/, cache/<key id>/, source.json                      stage 1, see cache.py
  clusters/<loss>/{assignments.csv, centers.npy, summary.json, representatives.csv}  stages 2, 3
  thumbs/, sheets/, index.html                                 stage 4
  site/ (cluster pages, map, duplicates, outliers, assigned), map.csv        the browsable site
  site/map.html, site/map/{points.js, atlas_<i>.jpg, map.json}              the map (render, photomap.py)
  duplicates.csv, clusters/<loss>/outliers.csv                 dupes and outliers
  duplicates.json                                              the features duplicates.csv was made from
  assigned.csv                                                 new photos placed by `assign`
  sweep/<loss>.{csv,png,json}, evaluation.csv, evaluation_agreement.csv, evaluation/
  evaluation_models.csv, models/<model>/ (a whole run per model)   `evaluate --models`

Outside a run's folder: `palette`'s folder (`PaletteLayout`), `patches`' folder (`PatchesLayout`), and the files of `quantize`
and `segment` (`default_quantize_output`, `segment_outputs`), at the end of this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OUTPUT_MARKER = ".photoclust-output"
EXPORT_MARKER = ".photoclust-export"  # written by `export` in the folders it makes
LEGACY_OUTPUT_MARKER = "cache_key.json"  # output folders made before OUTPUT_MARKER existed


@dataclass(frozen=True)
class Layout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # stage 1: the features cache
    @property
    def marker(self) -> Path:
        return self.root / OUTPUT_MARKER

    @property
    def features(self) -> Path:
        return self.root / "features.npy"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def record(self) -> Path:
        return self.root / "features.json"

    @property
    def cache_key(self) -> Path:
        return self.root / LEGACY_OUTPUT_MARKER

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    def stash(self, key_id: str) -> Path:
        return self.root / "cache" / key_id

    @property
    def set_aside(self) -> Path:
        return self.root / "damaged"

    @property
    def source(self) -> Path:
        return self.root / "source.json"

    # stages 2 and 3
    @property
    def clusters(self) -> Path:
        return self.root / "clusters"

    def loss_dir(self, loss: str) -> Path:
        return self.clusters / loss

    def assignments(self, loss: str) -> Path:
        return self.loss_dir(loss) / "assignments.csv"

    def centers(self, loss: str) -> Path:
        return self.loss_dir(loss) / "centers.npy"

    def summary(self, loss: str) -> Path:
        return self.loss_dir(loss) / "summary.json"

    def representatives(self, loss: str) -> Path:
        return self.loss_dir(loss) / "representatives.csv"

    # stage 4
    @property
    def thumbs(self) -> Path:
        return self.root / "thumbs"

    @property
    def sheets(self) -> Path:
        return self.root / "sheets"

    def representatives_sheet(self, loss: str) -> Path:
        return self.sheets / f"representatives_{loss}.png"

    def cluster_sheets(self, loss: str) -> Path:
        return self.sheets / loss

    def cluster_sheet(self, loss: str, cluster: int) -> Path:
        return self.cluster_sheets(loss) / f"cluster_{cluster}.png"

    @property
    def losses_sheet(self) -> Path:
        return self.sheets / "losses.png"

    @property
    def index(self) -> Path:
        return self.root / "index.html"

    # the browsable site (render writes it, index.html links it)
    @property
    def site(self) -> Path:
        return self.root / "site"

    def cluster_pages(self, loss: str) -> Path:
        return self.site / loss

    def cluster_page(self, loss: str, cluster: int) -> Path:
        return self.cluster_pages(loss) / f"cluster_{cluster}.html"

    @property
    def map_page(self) -> Path:
        return self.site / "map.html"

    @property
    def map_points(self) -> Path:
        """path, x, y: each photo's place on the map (a 2-D projection of its embedding)."""
        return self.root / "map.csv"

    @property
    def map_assets(self) -> Path:
        """thumbnail atlases and the point data the map page loads (a <script>, as file:// allows)."""
        return self.site / "map"

    @property
    def map_script(self) -> Path:
        """points.js: every photo's place, atlas cell, clusters, name and link (`const PHOTOCLUST_MAP = {...}`)."""
        return self.map_assets / "points.js"

    def map_atlas(self, index: int) -> Path:
        """A JPEG sprite sheet of small thumbnails, the cells the map page draws."""
        return self.map_assets / f"atlas_{index}.jpg"

    @property
    def map_record(self) -> Path:
        """What map.csv and the atlases were made from (features fingerprint, projection, atlas keys); written last."""
        return self.map_assets / "map.json"

    @property
    def duplicates_page(self) -> Path:
        return self.site / "duplicates.html"

    def outliers_page(self, loss: str) -> Path:
        return self.site / f"outliers_{loss}.html"

    @property
    def assigned_page(self) -> Path:
        return self.site / "assigned.html"

    # duplicates, outliers, new photos
    @property
    def duplicates(self) -> Path:
        """group, path, kind (exact | near), similarity: written by `dupes`."""
        return self.root / "duplicates.csv"

    @property
    def duplicates_record(self) -> Path:
        """The features fingerprint, threshold and SHA-256 of duplicates.csv (written after it)."""
        return self.root / "duplicates.json"

    def outliers(self, loss: str) -> Path:
        """The photos with the largest loss to their own center under `loss`, worst first."""
        return self.loss_dir(loss) / "outliers.csv"

    @property
    def assigned(self) -> Path:
        """New photos placed into the existing clusters by `assign` (no refit)."""
        return self.root / "assigned.csv"

    # around the flow
    @property
    def sweep_dir(self) -> Path:
        return self.root / "sweep"

    def sweep_file(self, loss: str, suffix: str) -> Path:
        return self.sweep_dir / f"{loss}{suffix}"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.csv"

    @property
    def agreement(self) -> Path:
        return self.root / "evaluation_agreement.csv"

    def confusion(self, loss: str) -> Path:
        return self.root / "evaluation" / f"confusion_{loss}.png"

    @property
    def evaluation_models(self) -> Path:
        return self.root / "evaluation_models.csv"

    def model_run(self, model: str) -> Path:
        """The output folder in which `evaluate --models` embeds, clusters and scores the photos with `model`."""
        return self.root / "models" / model

    def relative(self, path: Path) -> str:
        """`path` as a POSIX path relative to the output folder (for links in index.html)."""
        return Path(path).relative_to(self.root).as_posix()


def default_output(photos: str | Path) -> Path:
    """The output folder `extract PHOTOS` makes when given no --out: outputs/<folder name>,
    relative to the working directory (as every stage and `api.load_results` find it)."""
    return Path("outputs") / (Path(photos).resolve().name or "photos")


def is_output_folder(path: str | Path) -> bool:
    """Whether `path` is a photoclust output folder (its marker, or an older folder's cache key)."""
    return (Path(path) / OUTPUT_MARKER).is_file() or (Path(path) / LEGACY_OUTPUT_MARKER).is_file()


# ----------------------------------------------------------------------------- `photoclust palette`

@dataclass(frozen=True)
class PaletteLayout:
    """The folder `photoclust palette` writes (default `outputs/palette/<name>/`, see
    `default_palette_output`); it holds the output marker, so finding photos never enters it.

      palette.png, palette.csv, palette.json        the photo's palette, or the whole folder's
      photos/<path>.palette.{png,csv,json}          each photo's, for a folder (<path> under it)
    """
    root: Path
    SUFFIXES = (".palette.png", ".palette.csv", ".palette.json")

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    def files(self, photo: str | None = None) -> dict[str, Path]:
        """{"png", "csv", "json"}: the whole palette's files, or those of the photo at `photo`
        (a relative POSIX path under the folder)."""
        if photo is None:
            return {kind: self.root / f"palette.{kind}" for kind in ("png", "csv", "json")}
        return {kind: self.photos / f"{photo}.palette.{kind}" for kind in ("png", "csv", "json")}


def default_palette_output(target: str | Path) -> Path:
    """outputs/palette/<name of the photo without its extension, or of the folder>, relative
    to the working directory, like the pipeline's outputs: never next to the photos."""
    target = Path(target)
    name = (target.stem if target.is_file() else target.resolve().name) or "photos"
    return Path("outputs") / "palette" / name


# ----------------------------------------------------------------------------- `photoclust quantize` and `segment`

# Their default folders (relative to the working directory, like the pipeline's outputs; never
# next to the photo). A folder the user gives with -o holds just the files below.
QUANTIZE_FOLDER = Path("outputs") / "quantize"
SEGMENT_FOLDER = Path("outputs") / "segment"


def default_quantize_output(image: str | Path, ks: list[int], loss: str = "square", space: str = "lab",
                            dither: str = "none") -> Path:
    """outputs/quantize/<name>_k16.png (<name>_k2-4-8.png for a strip), the options that
    differ from the defaults added: _<loss>, _rgb, _fs (Floyd-Steinberg)."""
    name = Path(image).stem + "_k" + "-".join(str(k) for k in ks)
    name += "" if loss == "square" else f"_{loss}"
    name += "" if space == "lab" else f"_{space}"
    name += "" if dither == "none" else "_fs"
    return QUANTIZE_FOLDER / f"{name}.png"


def segment_outputs(image: str | Path, folder: str | Path) -> tuple[Path, Path]:
    """<folder>/<name>_labels.png (the label map) and <folder>/<name>_segments.png (the side-by-side)."""
    stem = Path(image).stem
    return Path(folder) / f"{stem}_labels.png", Path(folder) / f"{stem}_segments.png"


# ----------------------------------------------------------------------------- `photoclust patches`

@dataclass(frozen=True)
class PatchesLayout:
    """The folder `photoclust patches` writes (default `outputs/patches/<source name>/`, see
    `default_patches_output`); it holds the output marker.

      dictionaries/k<K>.npy         the K centers (K x size^2 float32), largest cluster first
      dictionaries/k<K>.json        what made it (source fingerprint, size, loss, seed, training
                                    settings, the .npy's SHA-256) and its MSE and cluster sizes;
                                    written after the .npy: a K without it is not finished
      atlas/k<K>.png                every center as a size x size tile, largest cluster first
      mse.csv, mse.png              MSE per K, the knee marked (sweep's rule)
      reconstructions_<split>.png   chosen images (train, test) at every K beside the original
      patches.json                  the run's summary (written last)
    """
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def dictionaries(self) -> Path:
        return self.root / "dictionaries"

    def dictionary(self, k: int) -> Path:
        return self.dictionaries / f"k{k:05d}.npy"

    def record(self, k: int) -> Path:
        return self.dictionaries / f"k{k:05d}.json"

    def atlas(self, k: int) -> Path:
        return self.root / "atlas" / f"k{k:05d}.png"

    @property
    def mse_table(self) -> Path:
        return self.root / "mse.csv"

    @property
    def mse_plot(self) -> Path:
        return self.root / "mse.png"

    def reconstructions(self, split: str) -> Path:
        return self.root / f"reconstructions_{split}.png"

    @property
    def summary(self) -> Path:
        return self.root / "patches.json"


def default_patches_output(source: str | Path) -> Path:
    """outputs/patches/<name>: the folder's name, or for an MNIST-style IDX file
    (train-images-idx3-ubyte.gz, t10k-...) the name of the folder holding it (with -t10k for
    the test file), else the file's name without .gz; relative to the working directory."""
    source = Path(source)
    if source.is_dir():
        name = source.resolve().name
    else:
        stem = source.name.removesuffix(".gz")
        if stem.startswith(("train-", "t10k-")) and "-idx" in stem:
            name = source.resolve().parent.name + ("-t10k" if stem.startswith("t10k-") else "")
        else:
            name = stem
    return Path("outputs") / "patches" / (name or "patches")
