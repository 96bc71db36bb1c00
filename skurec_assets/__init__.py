"""Thin Dagster layer over the ``skurec`` core: assets, checks, sensors, schedules and ``Definitions``."""
