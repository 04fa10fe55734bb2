"""Config presets. Installed as the package data ``vmas.presets`` (see setup.py), read by :mod:`vmas.hub`.

This file only makes the folder a regular package, so that an editable install (``pip install -e .``) maps
``vmas.presets`` here as a wheel install maps it into the package.
"""
