"""fastopt: fused, in-place optimization update rules in C/OpenMP for NumPy (and CuPy) arrays."""
__version__ = "0.1.0"
