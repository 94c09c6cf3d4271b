"""The models: loading presets (load.py), the toy models built in code (toy.py), SmolLM2 from a PyPI package
(packaged.py), the tuned SmolLM2 teacher (tuned.py), device and precision (precision.py), the LR schedule."""
