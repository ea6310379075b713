# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE ?= $(firstword $(SLIDEMILL_SAMPLE_SLIDE) ../shared/data/CMU-1-Small-Region.svs)
DEMO ?= demo-out

.PHONY: install demo test postgres chromium slurm netns lint docs bench bench-service bench-viewer bench-textured bench-families bench-federated gpu-carry bench-gpu clean

# setuptools notes at every editable install that a folder named like the package may shadow
# it: `slidemill/` is that folder on purpose (links to the rooms), so the note is silenced.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The viewer's OpenSeadragon, from the npm registry at the version viewer/package-lock.json pins
# (never copied into the repository).
OSD := viewer/node_modules/openseadragon/build/openseadragon/openseadragon.min.js

$(OSD): viewer/package.json viewer/package-lock.json
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm; \
	  else echo "npm is missing: install Node.js and npm, then run make again"; exit 1; fi; }
	npm ci --prefix viewer --no-audit --no-fund --loglevel=error
	touch $@

install: $(BIN)/.installed $(OSD)

# The main job on the embedded default (a LocalCluster sized to this machine): synth → features
# → train → run on held-out slides and the real sample slide → evaluate.
demo: install
	$(BIN)/slidemill demo --out $(DEMO) --sample $(SAMPLE)

# Two pytest processes, whole files each (module fixtures start once): the suite waits on
# subprocesses and clusters as much as it computes.
TEST_WORKERS ?= 2

test: install postgres chromium slurm netns
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# The ledger's tests start a real PostgreSQL server from Debian's `postgresql` package (its
# binaries live off the PATH, in /usr/lib/postgresql/<major>/bin); installed here when missing.
postgres:
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	  else \
	    echo "PostgreSQL's server is missing, so the ledger's PostgreSQL tests are skipped;" \
	      "install it (Debian: sudo apt-get install postgresql)"; \
	  fi; \
	fi

# The viewer's browser tests drive Debian's chromium with Playwright (whose own browser download
# cannot be reached from here); installed when missing.
chromium:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "chromium is missing, so the viewer's browser tests fail;" \
	      "install it (Debian: sudo apt-get install chromium)"; \
	  fi; \
	fi

# The offline preset test runs slidemill in a network namespace of its own (util-linux's
# `unshare`, iproute2's `ip` to bring its loopback up); iproute2 is installed when missing.
netns:
	@if ! command -v ip >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	      -o DPkg::Lock::Timeout=600 iproute2; \
	  else echo "iproute2 is missing, so the offline preset test fails;" \
	      "install it (Debian: sudo apt-get install iproute2)"; fi; \
	fi

# The SLURM tests start a real single-node SLURM (Debian's `slurm-wlm`, with `munge`) as root;
# installed here when missing. apt waits for a dpkg lock another install holds.
slurm:
	@if ! command -v slurmctld >/dev/null && ! [ -x /usr/sbin/slurmctld ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	      -o DPkg::Lock::Timeout=600 slurm-wlm munge; \
	  else \
	    echo "SLURM is missing, so the SLURM tests are skipped when not root;" \
	      "install it (Debian: sudo apt-get install slurm-wlm munge)"; \
	  fi; \
	fi

# mypy reads the rooms under their installed names through the committed links in slidemill/.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The documentation site from docs/ into site/ (MkDocs Material). --strict turns every warning
# into a failure: a broken link or anchor, a page missing from the nav, a reference that no
# longer builds. The CLI and configuration references are generated from the code by
# docs/_hooks/reference.py, so they cannot drift from it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: install
	$(BIN)/slidemill bench --slide $(SAMPLE)

bench-service: install
	$(BIN)/slidemill bench-service

bench-viewer: install
	$(BIN)/slidemill bench-viewer --slide $(SAMPLE)

# The textured benchmark (docs/learning-studies.md): 32 slides of the sample slide's
# tissue at the size of issue 13's held-out set, tiled at 0.5 um/px, the `handcrafted` features,
# and cross-validation of the default head against mean pooling on cohorts of 16 and 32.
bench-textured: install
	$(BIN)/slidemill bench-learning --out .bench-textured --texture $(SAMPLE) \
	  --generators textured --size 6144x6144 --tile-mpp 0.5 --encoders handcrafted \
	  --heads topk_linear,mean_pool --strategy "fixed 40 epochs + weight averaging"

# Leave-one-family-out over the four lesion families (docs/learning-studies.md): each family's
# 48 slides of the sample slide's tissue, `handcrafted` features at two tilings, every candidate
# setting cross-validated on every family, each family scored with the setting chosen on the
# others. Steps already done are kept: remove the folder to rebuild every figure from nothing.
bench-families: install
	$(BIN)/slidemill bench-families --out .bench-learning-families --texture $(SAMPLE)

# Three sites whose stain and scanner differ: each alone, pooled, and federated on Flower's own
# processes (FedAvg, FedProx, FedAvg with DP), scored on one common held-out set.
bench-federated: install
	$(BIN)/slidemill bench-federated --out .bench-federated --texture $(SAMPLE)

# The GPU benchmark in one command. Here (the venv installed) it runs its CPU path. On a GPU
# machine whose image has torch but not the rest: `make gpu-carry` here first writes build/gpu
# (the wheels that image lacks, for its Python, and the sample slide; GPU_IMAGE_HAS names a
# `pip freeze` of the image, whose packages are left out); carry build/gpu there, where
# `make bench-gpu` installs the wheels into build/gpu/site without an index and runs.
GPU_DIR ?= build/gpu
GPU_PYTHON ?= 3.12
GPU_IMAGE_HAS ?=

gpu-carry: install
	$(BIN)/slidemill bench-gpu --wheelhouse $(GPU_DIR)/wheels --python $(GPU_PYTHON) \
	  $(if $(GPU_IMAGE_HAS),--image-has $(GPU_IMAGE_HAS))
	cp $(SAMPLE) $(GPU_DIR)/

bench-gpu:
	@if [ -x $(BIN)/slidemill ]; then \
	  $(BIN)/slidemill bench-gpu --slide $(SAMPLE); \
	else \
	  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade \
	    --target $(GPU_DIR)/site $(GPU_DIR)/wheels/*.whl && \
	  PYTHONPATH=$(GPU_DIR)/site PYTHONUNBUFFERED=1 python3 -m slidemill.cli bench-gpu \
	    --slide $(GPU_DIR)/$(notdir $(SAMPLE)) --work $(GPU_DIR)/work; \
	fi

clean:
	rm -rf $(DEMO) build site .pytest_cache .mypy_cache .ruff_cache viewer/node_modules

# ---------------------------------------------------------------------------------------------
# Shipping (docs/guides/install.md): the sdist and the wheel, worker images, and their checks.
.PHONY: dist image-tools images test-dist test-images

DIST ?= dist
# pytest's folders for these two, outside the checkout (the wheel's venv must be) and apart from
# the numbered ones another pytest session on the machine may prune while these run
TEST_TMP ?= $(or $(TMPDIR),/tmp)/slidemill-ship-tests
IMAGES ?= cpu cuda
IMAGE_REPO ?= localhost/slidemill
export IMAGE_REPO

# `python -m build`: the sdist, then the wheel from it, in isolation; the version from git
# (setuptools-scm), OpenSeadragon into the wheel by `npm ci` (setup.py).
dist: install
	rm -rf $(DIST)
	$(BIN)/python -m build --outdir $(DIST) .

# Debian's buildah, podman and mmdebstrap, and runc for podman on hosts whose cgroups crun
# refuses (docs/guides/install.md); installed here when missing, as root.
image-tools:
	@missing=; for tool in buildah podman mmdebstrap runc; do \
	  command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	      -o DPkg::Lock::Timeout=600 $$missing; \
	  else echo "missing:$$missing; install them (Debian: sudo apt-get install$$missing)"; \
	    exit 1; fi; \
	fi

# The worker images, from the wheel and a Debian base made here (images/build): IMAGES=cpu for
# the CPU image alone. Needs root (rootful buildah) and the Debian and PyPI mirrors.
# Dask's own packages are pinned to this venv's, so its clients and the images' workers speak
# the same protocol (dask warns of a mismatch and refuses some).
images: dist image-tools
	@mkdir -p build/images
	$(BIN)/python -m pip freeze --all | \
	  grep -iE '^(dask|distributed|cloudpickle|msgpack|tornado|toolz)==' > build/images/dask-pins.txt
	@for flavour in $(IMAGES); do \
	  CONSTRAINTS="$(abspath build/images/dask-pins.txt) $(CONSTRAINTS)" \
	  images/build $$flavour $$(ls $(DIST)/slidemill-*.whl) $(BIN)/python || exit 1; done

# The wheel in a fresh venv outside the checkout: `slidemill run` on the sample slide and
# `slidemill view` serving OpenSeadragon (tests/test_dist.py).
test-dist: dist
	SLIDEMILL_TEST_WHEEL=$$(ls $(abspath $(DIST))/slidemill-*.whl) \
	  $(BIN)/python -m pytest -p no:cacheprovider -m dist --basetemp=$(TEST_TMP)-dist tests/test_dist.py

# The CPU image's `dask worker` under podman runs a batch (tests/test_images.py).
test-images: install
	$(MAKE) images IMAGES=cpu
	SLIDEMILL_TEST_IMAGE=$(IMAGE_REPO):$$($(BIN)/python -c \
	  'import sys; from slidemill.schemas import image_tag; print(image_tag(sys.argv[1]))' \
	  $$(ls $(DIST)/slidemill-*.whl | xargs basename | cut -d- -f2)) \
	  $(BIN)/python -m pytest -p no:cacheprovider -m image --basetemp=$(TEST_TMP)-images tests/test_images.py
