"""``accelerate launch examples/run_seed.py ...``: the installed script :mod:`seed_hf.scripts.run_seed`
(also ``seed-hf ...``, see ``seed-hf --help``); its docstring and ``--help`` say the rest."""

from seed_hf.scripts.run_seed import cli

if __name__ == "__main__":
    cli()
