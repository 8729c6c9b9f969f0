# asl: the two commands of the README.
#   make test   set up .venv (torch, mmcv built once into a cache, mmseg) and run the tests
#   make demo   search the mIoU loss on the embedded demo data, re-train with it and with
#               cross-entropy, print both
PYTHON_VENV := .venv/bin/python

.PHONY: install test demo benchmark clean

install:
	bash tools/install.sh

test: install
	$(PYTHON_VENV) -m pytest -q tests

demo: install
	$(PYTHON_VENV) tools/demo.py

benchmark: install
	$(PYTHON_VENV) tools/analysis/benchmark_loss.py

clean:
	rm -rf build asl/engines/cpp/_C*.so work_dirs .pytest_cache
