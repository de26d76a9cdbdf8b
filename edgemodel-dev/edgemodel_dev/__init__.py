"""A local Kubernetes control plane for tests and the demo: API server emulator, garbage
collector, Job controller, a kubelet that runs pods as local processes, and simulated edge nodes.

Entry points: :class:`edgemodel_dev.cluster.LocalCluster`, the pytest fixtures in
:mod:`edgemodel_dev.testing` and ``edgemodel-dev up``. See docs/testing.md.
"""
