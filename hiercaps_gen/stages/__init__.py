"""Pipeline stages, one module per stage, on one base (`base.py`)."""
