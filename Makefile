# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean zoo zoo-table docs

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mamlkit reproduce sine --out runs/sine --force

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

# the suite on every core (pytest-xdist): tests are independent, each in its own tmp_path
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n auto --dist worksteal

# the API reference site (mkdocs.yml) in build/site/; any warning fails it
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/meta_iteration.py --workload sine
	$(BIN)/python benchmarks/meta_iteration.py --workload omniglot-5w1s
	$(BIN)/python benchmarks/meta_iteration.py --workload omniglot-20w1s

# The zoo (zoo/, docs/zoo.md): continue the unfinished reference runs for ZOO_TIME, as many at
# once as there are cores, at the lowest priority; then evaluate the finished ones and
# regenerate docs/zoo.md. Omniglot from $(MAMLKIT_DATA)/omniglot.
# ZOO_ONLY="a b" limits it to those runs; ZOO_DIR and ZOO_TABLE move it, ZOO_NICE=0 keeps
# the normal priority (tests do all three). ZOO_DEVICE=cuda trains the pieces on a GPU (a run
# last trained on the CPU moves there, and back on the next CPU zoo); ZOO_JOBS runs at once.
ZOO_TIME  ?= 2h30m
ZOO_DEVICE ?= cpu
ZOO_JOBS  ?=
ZOO_DIR   ?= zoo
ZOO_TABLE ?= docs/zoo.md
ZOO_ONLY  ?=
MAMLKIT_DATA ?= $(abspath ../shared/data)
ZOO_NICE  ?= 19
zoo: $(STAMP)
	MAMLKIT_DATA=$(MAMLKIT_DATA) ZOO_NICE=$(ZOO_NICE) nice -n $(ZOO_NICE) $(BIN)/python scripts/zoo.py run \
		--time $(ZOO_TIME) --zoo $(ZOO_DIR) --device $(ZOO_DEVICE) $(if $(ZOO_JOBS),--jobs $(ZOO_JOBS)) \
		$(if $(ZOO_ONLY),--only $(ZOO_ONLY))
	$(BIN)/python scripts/zoo.py table --zoo $(ZOO_DIR) --out $(ZOO_TABLE)

zoo-table: $(STAMP)
	$(BIN)/python scripts/zoo.py table --zoo $(ZOO_DIR) --out $(ZOO_TABLE)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
