"""edgemodel: from a trained PyTorch model to measured inference on a fleet of edge nodes.

This top-level package stays import-light: heavy dependencies (torch, kopf, onnxruntime)
are imported only by the sub-packages that need them.
"""

__version__ = "0.1.0"
