"""The command-line scripts behind ``seed-hf`` (as TRL's ``trl/scripts/``): each reads top to bottom and
also runs as ``accelerate launch -m seed_hf.scripts.<name>`` or ``examples/<name>.py``."""
