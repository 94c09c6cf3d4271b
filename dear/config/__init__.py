"""The settings: their vocabulary (types.py), every config section's schema (schema.py) and the selector registry
(methods.py). No torch; the values live in dear/conf/."""
