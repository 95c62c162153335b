"""spanroute: train."""
