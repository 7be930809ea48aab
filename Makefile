# Two commands do all set-up on a fresh machine (see README):
#   make run   - install what is missing, then serve ComfyUI with this pack on 127.0.0.1:$(PORT)
#   make test  - install what is missing, then run the whole test suite
#   make mutate - mutation testing of kernels/ and the patching code (long; see README, Development)
# COMFYUI_PATH=/path/to/ComfyUI uses an existing install instead of the pinned host;
# PYTHON=/path/to/python uses an existing environment instead of .venv.
SHELL := /bin/bash
PORT ?= 8188
PYTEST_ARGS ?=
BOOTSTRAP := boot="$$(python3 scripts/bootstrap.py)" && eval "$$boot" && export PYTHON COMFYUI_PATH

.PHONY: run test setup bench mutate

setup:
	@$(BOOTSTRAP) && echo "ComfyUI: $$COMFYUI_PATH  python: $$PYTHON"

run:
	@$(BOOTSTRAP) && exec "$$PYTHON" scripts/serve.py --port $(PORT)

test:
	@$(BOOTSTRAP) && "$$PYTHON" -m pytest tests $(PYTEST_ARGS)

# Not part of `make test`: about an hour on 2 cores the first time, then only what changed.
# MUTATE_BUDGET=<seconds> caps mutmut's run; the report covers what has been run so far.
mutate:
	@$(BOOTSTRAP) && "$$PYTHON" -m pip install -q -r mutation/requirements.txt && "$$PYTHON" scripts/mutate.py
