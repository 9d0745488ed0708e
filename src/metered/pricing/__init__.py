"""Pricing (steps 4 and 8 of the pipeline): what a call costs and what it is charged.

* :mod:`~metered.pricing.catalog` — upstream list prices (genai-prices + overrides).
* :mod:`~metered.pricing.resolve` — model id normalisation and the resolution chain.
* :mod:`~metered.pricing.route` — :class:`~metered.pricing.route.Quote`, per-route pricing.
* :mod:`~metered.pricing.rules` — resale prices, ``match`` conditions and ``price.fn``.

Nothing is imported here eagerly: :mod:`metered.config` imports ``pricing.resolve``, and
``pricing.route`` imports the config, so an eager import here would be a cycle.
"""
