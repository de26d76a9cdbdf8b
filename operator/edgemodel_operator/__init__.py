"""The edgemodel operator (kopf): conversion Jobs, scheduling and canary rollouts."""
