"""NAB (Numenta Anomaly Benchmark) scoring, reimplemented to reproduce NAB's figures exactly.

* :mod:`bench.nab.scoring`: the per-file rule (probation, windows, scaled sigmoid, profiles);
* :mod:`bench.nab.sweep`: the corpus-wide threshold optimisation (NAB's sweeper);
* :mod:`bench.nab.evaluation`: a detector's normalised score over a set of files;
* :mod:`bench.nab.corpus`: NAB's files on disk; :mod:`bench.nab.runner`: running detectors;
* :mod:`bench.nab.windowed_gaussian`: NAB's windowed Gaussian baseline, for a sanity check.
"""
