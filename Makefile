# asl: the two commands of the README.
#   make test   set up .venv (torch, mmcv built once into a cache, mmseg) and run the tests
#   make demo   run the demo workflow on the embedded data
PYTHON_VENV := .venv/bin/python

.PHONY: install test demo benchmark clean

install:
	bash tools/install.sh

test: install
	$(PYTHON_VENV) -m pytest -q tests

demo: install
	$(PYTHON_VENV) tools/make_demo_data.py
	$(PYTHON_VENV) tools/benchmark_loss.py

benchmark: install
	$(PYTHON_VENV) tools/benchmark_loss.py

clean:
	rm -rf build asl/_C*.so work_dirs .pytest_cache
