"""Tether's shared library: names, wire format, settings, NATS helpers and the agent SDK.

Every service and every Python agent imports from here. Nothing runs at import time.
"""
