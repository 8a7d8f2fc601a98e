"""Latency: per-operator lookup tables, the profiler that fills them, calibrated device models.

Role: ``LatencyTable`` (measured operator signature -> ms, with device
metadata), the ``profile`` command users run on their Pi or Jetson, device
cost models fitted on public Pi/Jetson measurements (calibration split only),
and ``estimate_latency`` whose every number names its source (table hit,
interpolation, or device model with its validated error). Not implemented
yet: arrives with the latency-models issue.
"""

__all__: list[str] = []
