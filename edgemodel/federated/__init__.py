"""Federated learning across edge nodes with Flower: the aggregation server and the per-node training client.

``python -m edgemodel.federated.server`` runs in the cloud (one per FederatedTraining), ``python -m
edgemodel.federated.client`` on each selected node. Both need ``edgemodel[convert]`` (torch, flwr); the edge
agent never imports this package.
"""
