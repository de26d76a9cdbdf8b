"""`make demo`: the whole loop on one machine on the embedded control plane.

Modules: ``processes`` (managed child processes with log files), ``prometheus`` (a real
Prometheus server scraping the demo), ``traffic`` (Open Inference Protocol load with live
latency and accuracy), ``views`` (rich renderables from API objects), ``runner`` (the story).
"""
