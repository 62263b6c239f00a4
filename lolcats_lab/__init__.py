"""lolcats-lab: learn and do attention linearization (LoLCATs, Hedgehog)."""

__version__ = "0.1.0"
