"""``accelerate launch examples/run_seed.py ...``: the installed script :mod:`seed_hf.scripts.run_seed`
(also ``seed-hf ...``); see its docstring and ``--help``."""

from seed_hf.scripts.run_seed import main

if __name__ == "__main__":
    main()
