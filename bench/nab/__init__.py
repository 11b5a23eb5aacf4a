"""NAB (Numenta Anomaly Benchmark) scoring, reimplemented to reproduce NAB's figures exactly.

* :mod:`vigil.bench.nab.scoring`: the per-file rule (probation, windows, scaled sigmoid, profiles);
* :mod:`vigil.bench.nab.sweep`: the corpus-wide threshold optimisation (NAB's sweeper);
* :mod:`vigil.bench.nab.evaluation`: a detector's normalised score over a set of files;
* :mod:`vigil.bench.nab.corpus`: NAB's files on disk;
* :mod:`vigil.bench.nab.runner`: running detectors;
* :mod:`vigil.bench.nab.windowed_gaussian`: NAB's windowed Gaussian baseline, for a sanity check.
"""
