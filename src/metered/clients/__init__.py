"""Metered SDK clients: wrap one client object, meter its chat calls, touch nothing else.

::

    from openai import OpenAI
    from metered.clients import MeteredOpenAI

    client = MeteredOpenAI(OpenAI())                                # defaults: price + trace
    client = MeteredOpenAI(OpenAI(), meter=meter, account="team-a")  # + policy and budgets

See :mod:`metered.clients.openai` and :mod:`metered.clients.anthropic` for what is metered
and how the paying account is chosen. Importing this package does not import the SDKs.
"""

from metered.clients.adapter import default_meter
from metered.clients.anthropic import MeteredAnthropic, MeteredAsyncAnthropic
from metered.clients.openai import MeteredAsyncOpenAI, MeteredOpenAI

__all__ = [
    "MeteredAnthropic",
    "MeteredAsyncAnthropic",
    "MeteredAsyncOpenAI",
    "MeteredOpenAI",
    "default_meter",
]
