"""Quantiles from a worker's ``/metrics``: histogram buckets scraped before and after a phase.

A Prometheus histogram only keeps cumulative bucket counts, so the quantiles of one phase come
from the difference of two scrapes, interpolated linearly inside the bucket that holds the rank —
the same estimate as PromQL's ``histogram_quantile``. Its resolution is the bucket layout: a
quantile is only known to lie between two bucket bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class BucketCounts:
    """Cumulative counts per upper bound (ascending, the last one +Inf) and the sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float = 0.0

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def minus(self, earlier: BucketCounts) -> BucketCounts:
        """What was observed between the ``earlier`` scrape and this one."""
        if earlier.bounds != self.bounds:
            raise ValueError("bucket layouts differ")
        return BucketCounts(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
            self.total - earlier.total,
        )

    def quantile(self, q: float) -> float:
        """The q-quantile; NaN without observations. In the +Inf bucket: the largest finite
        bound (a lower limit, as PromQL reports it)."""
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank and cumulative > lower_count:
                if math.isinf(bound):
                    return lower_bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    cumulative - lower_count
                )
            lower_bound, lower_count = bound, cumulative
        return lower_bound

    def fraction_at_most(self, bound: float) -> float:
        """Share of observations at or below ``bound`` (exact when it is a bucket bound)."""
        if self.count <= 0:
            return math.nan
        below = [c for b, c in zip(self.bounds, self.cumulative, strict=True) if b <= bound]
        return (below[-1] if below else 0.0) / self.count


def histogram(text: str, name: str, **labels: str) -> BucketCounts:
    """The buckets of histogram ``name`` in exposition text, summed over the label sets that
    include ``labels``."""
    counts: dict[float, float] = {}
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
            elif sample.name == f"{name}_sum":
                total += sample.value
    bounds = tuple(sorted(counts))
    return BucketCounts(bounds, tuple(counts[b] for b in bounds), total)


def sample_total(text: str, sample_name: str, **labels: str) -> float:
    """Sum of the samples called ``sample_name`` whose labels include ``labels`` (0 if none)."""
    value = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                value += sample.value
    return value
