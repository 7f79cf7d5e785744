# Set-up is part of each target: the first call creates .venv and installs the project with [dev].
# TORCH can point at another wheel or version, e.g. a CPU-only build installed beforehand.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: demo check-products test test-fast lint clean extras

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The optional tools of the research extras (laplace-torch, BackPACK, curvlinops, kronfluence):
# installed without their dependencies (they list torchvision, which hessfree's use of them never
# imports and whose registry wheels break beside a CPU torch), then their other requirements
# (pyproject's [research]), all pinned to the torch already in the venv; then PyTorch Lightning and
# Accelerate for the training-loop recipes (pyproject's [loops]) and the real transformers package
# ([huggingface]).
NODEPS := laplace-torch==0.3 backpack-for-pytorch==1.7.1 curvlinops-for-pytorch==3.0.1 \
	kronfluence==1.0.1
$(VENV)/.extras: $(VENV)/.installed
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --no-deps $(NODEPS)
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[dev,research,loops,huggingface]"
	touch $@

extras: $(VENV)/.extras

# The main job (about 3 minutes on 2 cores, built-in data): HF, the momentum-like HF and NAG at
# equal cost on curves-small, then CG vs NAG on a quadratic saved from the HF run; a table, one
# figure with two panels, and the three results files under runs/demo-<time>/.
demo: $(VENV)/.installed
	$(PY) -m hessfree demo --out runs

# G@v on a small autoencoder against the dense Jᵀ H_L J from torch.func.
check-products: $(VENV)/.installed
	$(PY) -m hessfree check-products

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.installed $(VENV)/.extras
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
