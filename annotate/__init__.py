"""spanroute: annotate."""
