"""Deprecated alias: import these from :mod:`temporal_governor.review`."""

from .review import IncidentReport, ReviewError, build_report, fetch_tree, load_histories, review

__all__ = [
    "IncidentReport",
    "ReviewError",
    "build_report",
    "fetch_tree",
    "load_histories",
    "review",
]
