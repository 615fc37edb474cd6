"""Operations: the ``/healthz``, ``/readyz`` and ``/metrics`` endpoint, the process's metrics
and the JSON log format.

``bot.ops.metrics`` (the ``Metrics`` object the services are given) and ``bot.ops.server``
import neither discord nor torch: the bot, the workers and the services share them. GPU memory
is read from torch only when the process already loaded it (a process with an engine).
"""
