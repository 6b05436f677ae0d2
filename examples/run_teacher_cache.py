"""``accelerate launch examples/run_teacher_cache.py ...``: the installed script :mod:`seed_hf.scripts.run_teacher_cache`
(also ``seed-hf ...``, see ``seed-hf --help``); its docstring and ``--help`` say the rest."""

from seed_hf.scripts.run_teacher_cache import cli

if __name__ == "__main__":
    cli()
