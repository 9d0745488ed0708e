"""Usage analysis: read usage records, report on them, propose bounded prices.

Pure functions returning data: nothing here parses arguments, prints or writes a config
(the ``metered report`` / ``metered propose`` commands in :mod:`metered.cli` do the
printing).

* :mod:`metered.analysis.records`: reading the JSONL records :class:`~metered.records.JsonlSink`
  writes (:class:`ReadStats`, malformed lines counted and skipped).
* :mod:`metered.analysis.report`: :func:`summarize_usage` → :class:`UsageReport`.
* :mod:`metered.analysis.propose`: :func:`propose_prices` → :class:`PriceProposal`
  (types in :mod:`metered.analysis.proposal`).
"""

from __future__ import annotations

from metered.analysis.proposal import ModelProposal, PriceProposal
from metered.analysis.propose import propose_prices
from metered.analysis.records import ReadStats
from metered.analysis.report import GroupBy, GroupStats, UsageReport, summarize_usage

__all__ = [
    "GroupBy",
    "GroupStats",
    "ModelProposal",
    "PriceProposal",
    "ReadStats",
    "UsageReport",
    "propose_prices",
    "summarize_usage",
]
