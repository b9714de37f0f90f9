"""asv benchmarks for trueconv (``asv run --environment existing`` from ``benchmarks/``).

The cases are the ones ``trueconv bench`` reports (defined once, in
``trueconv.cli.bench``); here they are asv classes with ``params``,
``param_names``, a seeded ``setup`` and ``time_*``/``peakmem_*`` methods, in the
shape of SciPy's ``benchmarks/benchmarks/signal.py``. Each module also runs as a
plain script (``python benchmarks/benchmarks/layers.py``), printing median times.
"""
