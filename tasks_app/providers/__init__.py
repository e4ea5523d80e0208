"""Providers: what brings a machine group's machines up.

``local`` runs them as worker processes on this host (providers/local.py);
``slurm`` as pilot jobs on a Slurm cluster (providers/slurm.py). What a
group may ask of its provider is checked in :mod:`tasks_app.provider_rules`.
"""
