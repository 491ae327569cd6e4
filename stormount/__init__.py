"""stormount: mount cloud object storage as an ordinary directory."""

__version__ = "0.1.0"
