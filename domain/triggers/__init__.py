"""Triggers: what starts an agent run (time, price, volume, indicator, news, webhook, manual)."""
