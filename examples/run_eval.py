"""``accelerate launch examples/run_eval.py ...``: the installed script :mod:`seed_hf.scripts.run_eval`
(also ``seed-hf ...``, see ``seed-hf --help``); its docstring and ``--help`` say the rest."""

from seed_hf.scripts.run_eval import cli

if __name__ == "__main__":
    cli()
