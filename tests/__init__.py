"""Vigil's tests: a regular package, so `tests.kafka_io` never resolves to another
distribution's top-level `tests` (neurokit2, pulled in by timeeval-gutentag, installs one)."""
