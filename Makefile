# Two commands do all set-up on a fresh machine (see README):
#   make run   - install what is missing, then serve ComfyUI with this pack on 127.0.0.1:$(PORT)
#   make test  - install what is missing, then run the whole test suite
# COMFYUI_PATH=/path/to/ComfyUI uses an existing install instead of the pinned host;
# PYTHON=/path/to/python uses an existing environment instead of .venv.
SHELL := /bin/bash
PORT ?= 8188
PYTEST_ARGS ?=
BOOTSTRAP := eval "$$(python3 scripts/bootstrap.py)" && export PYTHON COMFYUI_PATH

.PHONY: run test setup bench

setup:
	@$(BOOTSTRAP) && echo "ComfyUI: $$COMFYUI_PATH  python: $$PYTHON"

run:
	@$(BOOTSTRAP) && exec "$$PYTHON" scripts/serve.py --port $(PORT)

test:
	@$(BOOTSTRAP) && "$$PYTHON" -m pytest tests $(PYTEST_ARGS)
