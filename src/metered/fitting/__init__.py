"""Token fit (step 3 of the pipeline): which models may be called, and what fits.

* :mod:`~metered.fitting.policy` — allow/deny lists and per-tier output caps.
* :mod:`~metered.fitting.trimming` — history trimming to the context window.

Nothing is imported here eagerly: import the module you need.
"""
