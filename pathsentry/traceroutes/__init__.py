"""Traceroutes measured by other tools, as contract-v1 ``traceroute`` events.

- :mod:`.records`: reading a results file into records (a JSON array, an object with
  a ``results`` array, or one JSON object per line), and the per-record error;
- :mod:`.atlas`: one RIPE Atlas traceroute result to one event;
- :mod:`.mtr`: one ``mtr --json`` report to one event;
- :mod:`.check`: the route detector run over converted traceroutes, each with its
  own source's country as the home country and a server at its destination;
- :mod:`.commands`: ``pathsentry traceroutes``.
"""
