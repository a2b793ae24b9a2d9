"""Containers through the Docker Engine API: image policy, limits, labels, logs, adoption.

Every container this agent starts is labelled with its workload and node, named
``cnet-<node>-<workload>``, runs with ``no-new-privileges`` and under the workload's memory and
CPU request. Output goes, one reader thread per stream, into the same log files the process
executor uses, so the supervisor ships both kinds the same way (``LogTail``).

- ``engine``: the one Docker client, what the node reports about it, images and stale names.
- ``handle``: a started container as the supervisor watches it (its exit, OOM kills, logs).
- ``executor``: start, re-adopt and reap containers for workloads.
"""
