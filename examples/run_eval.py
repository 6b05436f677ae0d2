"""``accelerate launch examples/run_eval.py ...``: the installed script :mod:`seed_hf.scripts.run_eval`
(also ``seed-hf ...``); see its docstring and ``--help``."""

from seed_hf.scripts.run_eval import main

if __name__ == "__main__":
    main()
