"""vreid: city-scale vehicle re-identification as distributed batch jobs on Ray."""

__version__ = "0.1.0"
