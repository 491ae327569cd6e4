"""The tier chain: storage tiers in priority order behind one Backend, with circuit
breakers, health probes, timeouts, failover, spill-over and repair."""

from stormount.chain.chain import Chain
from stormount.chain.health import Health
from stormount.chain.tier import Tier

__all__ = ["Chain", "Health", "Tier"]
