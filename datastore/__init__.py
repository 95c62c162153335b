"""spanroute: datastore."""
