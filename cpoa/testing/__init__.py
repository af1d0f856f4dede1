"""Test support shared by the test suite (tests/) and the benchmarks (bench/).

- :mod:`cpoa.testing.agent`: a scriptable agent, a real HTTP server on loopback that counts
  every submit (``work``, ``duplicates()``), and the environment pointing CPOA at it;
- :mod:`cpoa.testing.databases`: a PostgreSQL server (configured or embedded) and throwaway
  databases on it;
- :mod:`cpoa.testing.cli`: the ``cpoa`` command run as a subprocess, configured by environment;
- :mod:`cpoa.testing.wait`: waiting on a condition with a deadline;
- :mod:`cpoa.testing.kills`: the fault harness's account of its worker kills (how long each
  kill's workflows took to run again).

Nothing here is imported by CPOA itself.
"""
