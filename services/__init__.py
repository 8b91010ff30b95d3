"""Tether's services: the gateway, the presence service and the notifier."""
