"""File formats at the edge of the service: reading uploaded volumes and writing masks."""
