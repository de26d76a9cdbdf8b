"""Continual learning: triggers, the fine-tune-with-replay round and its gate (docs/continual.md)."""
