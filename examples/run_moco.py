"""``accelerate launch examples/run_moco.py ...``: the installed script :mod:`seed_hf.scripts.run_moco`
(also ``seed-hf ...``, see ``seed-hf --help``); its docstring and ``--help`` say the rest."""

from seed_hf.scripts.run_moco import cli

if __name__ == "__main__":
    cli()
