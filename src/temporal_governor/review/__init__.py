"""Incident review: replay a run tree's history with the governor and report what it did.

:func:`review` replays histories (fetched with :func:`fetch_tree` or loaded with
:func:`load_histories`) into an :class:`IncidentReport`; :func:`render_html` and
:func:`render_terminal` show it; :func:`write_bundle` / :func:`verify_bundle` /
:func:`replay_bundle` sign and check evidence bundles.
"""

from ._evidence import BundleCheck, EvidenceError, replay_bundle, verify_bundle, write_bundle
from ._render import render_html, render_terminal
from ._replay import ReviewError, build_report, fetch_tree, load_histories, review
from ._report import IncidentReport

__all__ = [
    "BundleCheck",
    "EvidenceError",
    "IncidentReport",
    "ReviewError",
    "build_report",
    "fetch_tree",
    "load_histories",
    "render_html",
    "render_terminal",
    "replay_bundle",
    "review",
    "verify_bundle",
    "write_bundle",
]
