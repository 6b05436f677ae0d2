"""``accelerate launch examples/run_export.py ...``: the installed script :mod:`seed_hf.scripts.run_export`
(also ``seed-hf ...``, see ``seed-hf --help``); its docstring and ``--help`` say the rest."""

from seed_hf.scripts.run_export import cli

if __name__ == "__main__":
    cli()
