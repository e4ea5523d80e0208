"""Providers: what keeps a started machine group's machines running."""
