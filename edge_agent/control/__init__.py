"""The agent's control-plane side: EdgeAgent registration, heartbeat, watch and model reconcile."""
