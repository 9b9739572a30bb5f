"""zoos package."""
