# cmoscal: `make report CAMPAIGN=demo` and `make test` do everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CAMPAIGN ?= demo
PARAMS ?= params/$(CAMPAIGN).yml
STAGES ?=
# the last folder the demo simulation writes: its absence means the demo data is missing or older
DEMO_DATA := data/demo/held_out
# the demo sensor later, compared with (demo-aged) or updating (demo-flight) the demo campaign's model
LATER_demo-aged := --age 3
LATER_demo-flight := --age 1 --temps 8,10.5 --exptimes 10,60 --frames 3 --bias-frames 5 --tref -10

.PHONY: env report demo-data test bench lab clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lab,bench]'
	$(BIN)/python -m ipykernel install --sys-prefix --name cmoscal --display-name "Python (cmoscal)" >/dev/null
	$(BIN)/python -c "from cmoscal.kernels import compile_kernels; compile_kernels()"  # once, cached on disk
	touch $@

demo-data: env
	@if [ "$(PARAMS)" = params/demo.yml ] && [ ! -d $(DEMO_DATA) ]; then \
	  echo "simulating the demo campaign into data/demo"; \
	  $(BIN)/cmoscal simulate data/demo --shape 256x256 --bad-files --held-out; fi
	@if [ -n "$(LATER_$(CAMPAIGN))" ] && [ "$(PARAMS)" = params/$(CAMPAIGN).yml ]; then \
	  if [ ! -d data/$(CAMPAIGN)/held_out ]; then echo "simulating the demo sensor later into data/$(CAMPAIGN)"; \
	    $(BIN)/cmoscal simulate data/$(CAMPAIGN) --shape 256x256 $(LATER_$(CAMPAIGN)) --held-out; fi; \
	  if [ ! -f products/demo/calibration_model.fits ]; then $(MAKE) --no-print-directory report CAMPAIGN=demo; fi; fi

report: env demo-data
	$(BIN)/cmoscal report $(PARAMS) $(if $(STAGES),--stages $(STAGES))

test: env
	$(BIN)/python -m pytest -q

bench: env
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/calibration.py
	$(BIN)/python bench/inputs.py
	$(BIN)/python bench/forms.py
	$(BIN)/python bench/performance.py
	$(BIN)/python bench/scaling.py

lab: env
	@$(MAKE) --no-print-directory demo-data PARAMS=params/demo.yml
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf products reports/*/ data .pytest_cache
